"""The outbox end to end: real SMTP and HTTP servers on loopback, retries, dead letters, hooks.

A notification is written in the change's transaction and delivered by ``tick`` through its
channel; a channel that is down leaves it pending with its attempts counted, and it is
delivered once when the channel is back, or marked dead after the last attempt.
"""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from crmflow import Actor, CrmflowError, Engine, VirtualClock, hookimpl
from crmflow.plugins._storage_api import OutboxRecord
from crmflow.plugins.notifiers import (
    DeliveryError,
    OutgoingMessage,
    RetryPolicy,
    SmtpChannel,
    WebhookChannel,
    verify_signature,
)
from crmflow.plugins.org_directory import Recipient

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
ORG = ROOT / "examples" / "org.yaml"
START = datetime(2026, 1, 5, 1, 0, tzinfo=UTC)
REP = Actor("alice", roles={"sales_rep"})

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")


class Mailbox:
    """aiosmtpd handler keeping every accepted message."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        self.messages.append(parsed)
        return "250 Message accepted"


class _Controller(aiosmtpd_controller.Controller):  # type: ignore[misc,name-defined]
    def _trigger_server(self) -> None:
        # With port 0 the real port is known only once the server is bound.
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpServer:
    """A loopback SMTP server that can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self.mailbox = Mailbox()
        self.port = 0
        self.controller: Any = None

    def start(self) -> None:
        self.controller = _Controller(
            self.mailbox, hostname="127.0.0.1", port=self.port, server_hostname="localhost"
        )
        self.controller.start()
        self.port = int(self.controller.port)

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


def _engine(store_url: str, clock: VirtualClock, **options: Any) -> Engine:
    return Engine.from_path(
        WORKFLOWS, store=store_url, clock=clock, org=ORG, load_entry_points=False, **options
    )


def _remind(engine: Engine, user: str = "alice", channels: Sequence[str] = ("email",)) -> str:
    engine.add_reminder(user, message="Quarterly review at 15:00", at=START, channels=channels)
    engine.tick(deliver=False)
    (row,) = engine.notifications(recipient=user)
    return row.id


# -- E1/E3: SMTP, retries, dead letters -----------------------------------------------------


def test_email_reaches_a_real_smtp_server(store_url: str, smtp: SmtpServer) -> None:
    clock = VirtualClock(START)
    channel = SmtpChannel("127.0.0.1", smtp.port, sender="crm@acme-trading.example")
    with _engine(store_url, clock, channels=[channel]) as engine:
        row_id = _remind(engine)
        report = engine.tick()
        assert report.delivered == 1
        (message,) = smtp.mailbox.messages
        assert message["To"] == "alice.chen@acme-trading.example"
        assert message["Subject"] == "Quarterly review at 15:00"
        row = engine.store.get_outbox(row_id)
        assert row is not None
        assert (row.status, row.attempts, row.delivered_at) == ("delivered", 1, START)


def test_a_down_mail_server_keeps_the_message_pending_then_delivers_it_once(
    store_url: str, smtp: SmtpServer
) -> None:
    clock = VirtualClock(START)
    channel = SmtpChannel("127.0.0.1", smtp.port, sender="crm@acme-trading.example", timeout=2.0)
    retry = RetryPolicy(max_attempts=5, base=timedelta(minutes=1), jitter=False)
    with _engine(store_url, clock, channels=[channel], retry=retry) as engine:
        smtp.stop()
        row_id = _remind(engine)
        assert engine.tick().retrying == 1
        row = engine.store.get_outbox(row_id)
        assert row is not None
        assert (row.status, row.attempts) == ("pending", 1)
        assert row.last_error
        assert row.next_attempt_at == START + timedelta(minutes=1)
        engine.tick()  # not due yet: no second attempt
        assert engine.store.get_outbox(row_id).attempts == 1  # type: ignore[union-attr]
        clock.advance("1m")
        assert engine.tick().retrying == 1
        row = engine.store.get_outbox(row_id)
        assert row is not None
        assert (row.attempts, row.next_attempt_at) == (2, clock.now() + timedelta(minutes=2))
        smtp.start()
        clock.advance("2m")
        assert engine.tick().delivered == 1
        clock.advance("1h")
        engine.tick()
        assert len(smtp.mailbox.messages) == 1
        row = engine.store.get_outbox(row_id)
        assert row is not None
        assert (row.status, row.attempts) == ("delivered", 3)


def test_after_the_last_attempt_a_notification_is_dead_and_listed(
    store_url: str, smtp: SmtpServer
) -> None:
    clock = VirtualClock(START)
    smtp.stop()
    channel = SmtpChannel("127.0.0.1", smtp.port, sender="crm@acme-trading.example")
    retry = RetryPolicy(max_attempts=3, base=timedelta(seconds=30), jitter=False)
    with _engine(store_url, clock, channels=[channel], retry=retry) as engine:
        row_id = _remind(engine)
        outcomes = []
        for _ in range(3):
            report = engine.tick()
            outcomes.append((report.retrying, report.dead))
            clock.advance("10m")
        assert outcomes == [(1, 0), (1, 0), (0, 1)]
        (dead,) = engine.notifications(status="dead")
        assert (dead.id, dead.attempts, dead.recipient) == (row_id, 3, "alice")
        assert dead.last_error
        assert engine.tick().idle  # nothing is retried after that


def test_a_recipient_without_an_address_is_dead_at_once(store_url: str, smtp: SmtpServer) -> None:
    clock = VirtualClock(START)
    channel = SmtpChannel("127.0.0.1", smtp.port, sender="crm@acme-trading.example")
    # Without an org directory nobody has an e-mail address.
    with Engine.from_path(
        WORKFLOWS, store=store_url, clock=clock, channels=[channel], load_entry_points=False
    ) as engine:
        row_id = _remind(engine)
        assert engine.tick().dead == 1
        row = engine.store.get_outbox(row_id)
        assert row is not None and row.status == "dead" and row.attempts == 1


# -- E1: webhook ----------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    requests: list[Received] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.receiver.requests.append(Received(dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, Receiver]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.receiver = Receiver()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host!s}:{port}/crm-events", server.receiver  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_a_webhook_receives_a_signed_post(store_url: str, receiver: tuple[str, Receiver]) -> None:
    url, received = receiver
    clock = VirtualClock(START)
    channel = WebhookChannel(url, secret="s3cret")
    with _engine(store_url, clock, channels=[channel]) as engine:
        row_id = _remind(engine, channels=["webhook"])
        assert engine.tick().delivered == 1
    (request,) = received.requests
    assert verify_signature(
        "s3cret",
        request.body,
        request.headers["X-Crmflow-Timestamp"],
        request.headers["X-Crmflow-Signature"],
    )
    assert not verify_signature(
        "wrong",
        request.body,
        request.headers["X-Crmflow-Timestamp"],
        request.headers["X-Crmflow-Signature"],
    )
    assert request.headers["X-Crmflow-Delivery"] == row_id
    assert b"Quarterly review" in request.body


# -- channels and recipients from plugins ----------------------------------------------------


class Pager:
    """A channel that fails the first time, then records what it delivers."""

    name = "pager"

    def __init__(self) -> None:
        self.delivered: list[OutgoingMessage] = []
        self.calls = 0

    def deliver(self, message: OutgoingMessage) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("pager gateway crashed")
        self.delivered.append(message)

    def close(self) -> None:
        pass


class PagerPlugin:
    def __init__(self, pager: Pager) -> None:
        self.pager = pager

    @hookimpl
    def crmflow_notification_channels(self) -> Sequence[Pager]:
        return [self.pager]


class OnCallDirectory:
    """The host's own directory: 'manager' is whoever is on call."""

    @hookimpl
    def crmflow_resolve_recipients(
        self, spec: str, owner: str | None, at: datetime
    ) -> Sequence[Recipient] | None:
        if spec != "manager":
            return None
        return [
            Recipient(
                user="oncall",
                intended="oncall",
                delegated=False,
                reason="",
                email=None,
                timezone=None,
                spec=spec,
            )
        ]


class WeeklyNumbers:
    @hookimpl
    def crmflow_render_report(
        self, report: str, params: Mapping[str, Any], user: str
    ) -> tuple[str, str] | None:
        if report != "weekly_numbers":
            return None
        return f"Numbers for {user}", f"target {params['target']}"


def test_a_channel_that_raises_never_loses_the_message_or_blocks_others(
    store_url: str,
) -> None:
    clock = VirtualClock(START)
    pager = Pager()
    retry = RetryPolicy(max_attempts=3, base=timedelta(seconds=10), jitter=False)
    with _engine(store_url, clock, plugins=[PagerPlugin(pager)], retry=retry) as engine:
        engine.add_reminder("alice", message="Call back", at=START, channels=["pager", "inbox"])
        report = engine.tick()
        assert (report.delivered, report.retrying) == (1, 1)  # the inbox got through
        clock.advance("10s")
        assert engine.tick().delivered == 1
        (message,) = pager.delivered
        assert (message.recipient, message.attempt) == ("alice", 2)


def test_recipients_can_come_from_the_hosts_directory(store_url: str) -> None:
    clock = VirtualClock(START)
    with Engine.from_path(
        WORKFLOWS,
        store=store_url,
        clock=clock,
        plugins=[OnCallDirectory()],
        load_entry_points=False,
    ) as engine:
        engine.start("deal", "D-1", actor=REP, data={"company": "Hangzhou Tea Co."})
        result = engine.fire("D-1", "qualify", actor=REP)
        assert [n["to"] for n in result.effects["notifications"]] == ["oncall"]


def test_a_subscription_sends_its_report_at_its_time_until_cancelled(store_url: str) -> None:
    clock = VirtualClock(START)
    with _engine(store_url, clock, plugins=[WeeklyNumbers()]) as engine:
        engine.start("deal", "D-1", actor=REP, data={"company": "Hangzhou Tea Co."})
        daily = engine.subscribe(
            "sam",
            "instances_by_state",
            cron="0 17 * * *",
            params={"workflow": "deal"},
            timezone="Asia/Shanghai",
        )
        weekly = engine.subscribe(
            "sam", "weekly_numbers", cron="0 9 * * 1", params={"target": 12}, timezone="UTC"
        )
        clock.set(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))  # 17:00 in Shanghai, 09:00 UTC
        engine.tick()
        subjects = sorted(n.subject for n in engine.inbox("sam"))
        assert subjects[0] == "Numbers for sam"
        assert subjects[1].startswith("deal: 1 instances by state")
        report = next(n for n in engine.inbox("sam") if n.subject.startswith("deal"))
        assert report.body == "lead: 1 (D-1)"
        assert engine.cancel_timer(daily.id)
        clock.advance("1d")
        engine.tick()
        assert len(engine.inbox("sam")) == 2
        assert [t.id for t in engine.timers(owner="sam")] == [weekly.id]


def test_an_unresolvable_recipient_is_kept_as_dead_with_the_reason(store_url: str) -> None:
    clock = VirtualClock(START)
    with Engine.from_path(WORKFLOWS, store=store_url, clock=clock, load_entry_points=False) as e:
        e.start("deal", "D-1", actor=REP, data={"company": "Hangzhou Tea Co."})
        result = e.fire("D-1", "qualify", actor=REP)
        (notice,) = result.effects["notifications"]
        assert notice["status"] == "dead"
        assert "without an org directory" in notice["error"]
        (row,) = e.notifications(status="dead")
        assert row.recipient == "manager"


# -- sending dead notifications again ------------------------------------------------------


def _mail_engine(store_url: str, clock: VirtualClock, smtp: SmtpServer, attempts: int) -> Engine:
    channel = SmtpChannel("127.0.0.1", smtp.port, sender="crm@acme-trading.example", timeout=2.0)
    retry = RetryPolicy(max_attempts=attempts, base=timedelta(seconds=30), jitter=False)
    return _engine(store_url, clock, channels=[channel], retry=retry)


def _dead_email(engine: Engine, clock: VirtualClock, smtp: SmtpServer) -> str:
    """A reminder e-mail that died because the mail server was down for both attempts."""
    smtp.stop()
    row_id = _remind(engine)
    engine.tick()
    clock.advance("10m")
    assert engine.tick().dead == 1
    return row_id


def test_a_dead_notification_is_sent_again_once_the_server_is_back(
    store_url: str, smtp: SmtpServer
) -> None:
    clock = VirtualClock(START)
    with _mail_engine(store_url, clock, smtp, attempts=2) as engine:
        row_id = _dead_email(engine, clock, smtp)
        dead = engine.store.get_outbox(row_id)
        assert dead is not None and dead.last_error
        smtp.start()
        clock.advance("1h")
        row = engine.requeue_notification(row_id)
        # Pending and due now, with a fresh set of attempts; the last error stays for context.
        assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 0, clock.now())
        assert row.last_error == dead.last_error
        assert engine.tick().delivered == 1
        engine.tick()
        assert len(smtp.mailbox.messages) == 1
        row = engine.store.get_outbox(row_id)
        assert row is not None
        assert (row.status, row.attempts, row.delivered_at) == ("delivered", 1, clock.now())


def test_requeue_refuses_what_is_not_dead_and_what_would_reach_nobody(
    store_url: str, smtp: SmtpServer
) -> None:
    clock = VirtualClock(START)
    with _mail_engine(store_url, clock, smtp, attempts=2) as engine:
        with pytest.raises(CrmflowError, match="no notification with id 'nope'"):
            engine.requeue_notification("nope")
        inbox_row = _remind(engine, channels=("inbox",))
        engine.tick()
        with pytest.raises(CrmflowError, match="is delivered, not dead"):
            engine.requeue_notification(inbox_row)
    # A recipient spec nobody holds: sending it again would reach nobody either.
    with Engine.from_path(WORKFLOWS, store=store_url, clock=clock, load_entry_points=False) as e:
        e.start("deal", "D-1", actor=REP, data={"company": "Hangzhou Tea Co."})
        e.fire("D-1", "qualify", actor=REP)
        (unresolved,) = e.notifications(status="dead")
        with pytest.raises(CrmflowError, match="has no recipient"):
            e.requeue_notification(unresolved.id)
        assert e.requeue_dead() == []
        assert e.notifications(status="dead") == [unresolved]


def test_requeue_dead_sends_every_dead_one_of_a_channel_again(
    store_url: str, smtp: SmtpServer
) -> None:
    clock = VirtualClock(START)
    with _mail_engine(store_url, clock, smtp, attempts=1) as engine:
        smtp.stop()
        for user in ("alice", "bob"):
            engine.add_reminder(user, message="Review", at=START, channels=("email", "inbox"))
        report = engine.tick()
        assert (report.dead, report.delivered) == (2, 2)
        smtp.start()
        assert {r.recipient for r in engine.requeue_dead(channel="inbox")} == set()
        requeued = engine.requeue_dead(channel="email")
        assert sorted(r.recipient for r in requeued) == ["alice", "bob"]
        assert engine.tick().delivered == 2
        assert len(smtp.mailbox.messages) == 2
        assert engine.notifications(status="dead") == []


def test_a_default_channel_that_is_not_configured_is_refused_with_a_hint() -> None:
    channel = SmtpChannel("127.0.0.1", 25, sender="crm@acme-trading.example")
    with pytest.raises(CrmflowError) as refused:
        Engine.from_path(
            WORKFLOWS, channels=[channel], default_channels=["emial"], load_entry_points=False
        )
    assert str(refused.value) == (
        "default channel 'emial' is not configured (did you mean 'email'?); "
        "configured channels: email, inbox, log"
    )
    with pytest.raises(CrmflowError, match=r"configured channels: inbox, log$"):
        Engine.from_path(WORKFLOWS, default_channels=["sms"], load_entry_points=False)
    with Engine.from_path(
        WORKFLOWS, channels=[channel], default_channels=["email"], load_entry_points=False
    ) as engine:
        assert engine.channels["email"] is channel


# -- the command line: worker options and crmflow outbox ----------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crmflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_worker_retry_options_then_outbox_requeue_from_the_command_line(
    sqlite_url: str, smtp: SmtpServer
) -> None:
    port = smtp.port
    smtp.stop()  # the worker finds the mail server down
    with _engine(sqlite_url, VirtualClock(datetime.now(UTC))) as engine:
        engine.add_reminder("alice", message="Call Shenzhen Lamps", at=datetime.now(UTC))
    worker_args = [
        "worker",
        "--store",
        sqlite_url,
        "--workflows",
        str(WORKFLOWS),
        "--org",
        str(ORG),
        "--smtp",
        f"smtp://127.0.0.1:{port}?sender=crm@acme-trading.example&timeout=2",
        "--default-channel",
        "email",
        "--max-attempts",
        "1",
        "--until-idle",
        "--interval",
        "0.1",
    ]
    first = _cli(*worker_args)
    assert first.returncode == 0, first.stderr
    assert "0 delivered, 0 to retry, 1 dead" in first.stdout  # one attempt allowed, not eight

    listed = _cli("outbox", "--store", sqlite_url, "--status", "dead")
    assert listed.returncode == 0, listed.stderr
    (row_id,) = [line.split()[0] for line in listed.stdout.splitlines() if " dead " in line]
    assert "1 attempt " in listed.stdout and "last error:" in listed.stdout
    assert listed.stdout.rstrip().endswith("1 notification(s) (1 dead)")

    smtp.start()  # the same port: the mail server is back
    requeued = _cli("outbox", "--store", sqlite_url, "--requeue", row_id)
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.startswith(f"requeued {row_id}  pending")
    again = _cli("outbox", "--store", sqlite_url, "--requeue", row_id)
    assert again.returncode == 1
    assert "is pending, not dead" in again.stderr

    second = _cli(*worker_args)
    assert second.returncode == 0, second.stderr
    assert "1 delivered" in second.stdout
    (message,) = smtp.mailbox.messages
    assert message["To"] == "alice.chen@acme-trading.example"
    assert message["Subject"] == "Call Shenzhen Lamps"


def test_worker_option_mistakes_are_explained(sqlite_url: str) -> None:
    bad_duration = _cli("worker", "--store", sqlite_url, "--retry-base", "5x", "--until-idle")
    assert bad_duration.returncode == 2
    assert "retry policy base" in bad_duration.stderr
    typo = _cli(
        "worker",
        "--store",
        sqlite_url,
        "--smtp",
        "smtp://127.0.0.1:2525?sender=crm@acme-trading.example",
        "--default-channel",
        "emial",
        "--until-idle",
    )
    assert typo.returncode == 1
    assert "default channel 'emial' is not configured (did you mean 'email'?)" in typo.stderr
    stray = _cli("outbox", "--store", sqlite_url, "some-id")
    assert stray.returncode == 2
    assert "IDs are for --requeue" in stray.stderr


def test_rows_queued_for_a_spec_nobody_held_are_never_sent_again(store_url: str) -> None:
    # Also rows written before the 'unresolved' flag existed: the recipient is still the spec.
    clock = VirtualClock(START)
    with _engine(store_url, clock) as engine:
        legacy = OutboxRecord(
            id="legacy-1",
            channel="inbox",
            recipient="role:sales_director",
            intended="role:sales_director",
            subject="Order SO-9 approved",
            created_at=START,
            status="dead",
            last_error="nobody receives 'role:sales_director' (no active user holds it)",
            metadata={"spec": "role:sales_director"},
        )
        with engine.store.transaction() as tx:
            tx.insert_outbox([legacy])
        with pytest.raises(CrmflowError, match="has no recipient"):
            engine.requeue_notification("legacy-1")
        assert engine.requeue_dead() == []
        assert engine.store.get_outbox("legacy-1") == engine.notifications(status="dead")[0]


def test_requeue_dead_can_select_one_recipient(store_url: str, smtp: SmtpServer) -> None:
    clock = VirtualClock(START)
    with _mail_engine(store_url, clock, smtp, attempts=1) as engine:
        smtp.stop()
        for user in ("alice", "bob"):
            engine.add_reminder(user, message="Review", at=START, channels=("email",))
        assert engine.tick().dead == 2
        (requeued,) = engine.requeue_dead(recipient="bob")
        assert requeued.recipient == "bob"
        assert [r.recipient for r in engine.notifications(status="dead")] == ["alice"]


def test_outbox_requeue_refuses_options_it_would_not_honour(sqlite_url: str) -> None:
    with Engine.from_path(WORKFLOWS, store=sqlite_url, load_entry_points=False):
        pass  # the tables
    pending = _cli("outbox", "--store", sqlite_url, "--requeue", "--status", "pending")
    assert pending.returncode == 2
    assert "dead notifications only" in pending.stderr
    mixed = _cli("outbox", "--store", sqlite_url, "--requeue", "some-id", "--recipient", "bob")
    assert mixed.returncode == 2
    assert "not both" in mixed.stderr
    nothing = _cli("outbox", "--store", sqlite_url, "--requeue", "--recipient", "bob")
    assert nothing.returncode == 0
    assert "0 dead notification(s) requeued" in nothing.stdout


def test_a_long_first_retry_wait_raises_the_default_cap(sqlite_url: str) -> None:
    with Engine.from_path(WORKFLOWS, store=sqlite_url, load_entry_points=False):
        pass
    worker = _cli("worker", "--store", sqlite_url, "--retry-base", "2h", "--until-idle")
    assert worker.returncode == 0, worker.stderr
    assert "worker stopped: 0 timers fired" in worker.stdout
    # And a cap shorter than the default first wait lowers that wait.
    short = _cli("worker", "--store", sqlite_url, "--retry-cap", "10s", "--until-idle")
    assert short.returncode == 0, short.stderr
    clash = _cli(
        "worker", "--store", sqlite_url, "--retry-base", "1m", "--retry-cap", "10s", "--until-idle"
    )
    assert clash.returncode == 2
    assert "cap" in clash.stderr


class _ClosingChannel:
    """A channel that notes when it is closed (and can fail to close)."""

    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.closed = 0

    def deliver(self, message: OutgoingMessage) -> None:
        return None

    def close(self) -> None:
        self.closed += 1
        if self.fail:
            raise OSError("connection already gone")


def test_closing_an_engine_closes_its_channels_even_when_one_fails(sqlite_url: str) -> None:
    failing, fine = _ClosingChannel("sms", fail=True), _ClosingChannel("chat")
    engine = Engine.from_path(
        WORKFLOWS, store=sqlite_url, channels=[failing, fine], load_entry_points=False
    )
    engine.close()
    assert (failing.closed, fine.closed) == (1, 1)
    with pytest.raises(CrmflowError):
        engine.get("SO-1")  # the store was closed too


class _RacingChannel:
    """An e-mail channel whose two deliveries overlap: the first fails late, the second works.

    The first hangs until the second has started, then fails; the second waits until the
    first one's tick is over before it succeeds.
    """

    name = "email"

    def __init__(self) -> None:
        self.first_started = threading.Event()
        self.second_started = threading.Event()
        self.first_tick_over = threading.Event()
        self.calls = 0

    def deliver(self, message: OutgoingMessage) -> None:
        self.calls += 1
        if self.calls == 1:
            self.first_started.set()
            self.second_started.wait(30)
            raise DeliveryError("server went away", retryable=True)
        self.second_started.set()
        self.first_tick_over.wait(30)

    def close(self) -> None:
        return None


def test_a_delivery_whose_lease_ran_out_cannot_undo_a_later_one(sqlite_url: str) -> None:
    # Two threads tick one engine. The first hangs on a delivery past its lease; the second
    # claims the row again. The first then fails while the second is still delivering: that
    # failure must not be recorded over the second's claim, or the row would end pending and
    # the message be sent again although the second delivery went through.
    clock = VirtualClock(START)
    channel = _RacingChannel()
    with _engine(sqlite_url, clock, channels=[channel]) as engine:
        row_id = _remind(engine)

        def first_tick() -> None:
            engine.tick()
            channel.first_tick_over.set()

        first = threading.Thread(target=first_tick)
        first.start()
        assert channel.first_started.wait(30)
        clock.advance("6m")  # past the five-minute lease
        assert engine.tick().delivered == 1
        first.join(30)
        row = engine.store.get_outbox(row_id)
        assert row is not None
        assert (row.status, row.attempts) == ("delivered", 1)
        assert channel.calls == 2


class _SlowChannel:
    """A channel that takes a while per message and notes every message id it is handed."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ids: list[str] = []
        self._lock = threading.Lock()

    def deliver(self, message: OutgoingMessage) -> None:
        time.sleep(self.seconds)
        with self._lock:
            self.ids.append(message.id)

    def close(self) -> None:
        return None


def test_a_batch_longer_than_its_lease_is_not_delivered_twice(sqlite_url: str) -> None:
    # 150 messages at 20 ms each take 3 s, the lease is 2 s. A worker hands back what is left
    # of a batch once half its lease is gone (and claims it again), so a second worker starting
    # after the first lease would have run out (2.3 s) takes over only rows nobody is
    # delivering: every message goes out once.
    channel = _SlowChannel(0.02)
    engines = [
        Engine.from_path(
            WORKFLOWS,
            store=sqlite_url,
            channels=[channel],
            lease="2s",
            load_entry_points=False,
        )
        for _ in range(2)
    ]
    try:
        now = datetime.now(UTC)
        for n in range(150):
            engines[0].add_reminder(f"user{n}", message=f"note {n}", at=now, channels=("slow",))
        engines[0].tick(deliver=False)
        reports: list[Any] = []

        def deliver(engine: Engine, delay: float) -> None:
            time.sleep(delay)
            reports.append(engine.deliver_outbox())

        threads = [
            threading.Thread(target=deliver, args=(engine, delay))
            for engine, delay in zip(engines, (0.0, 2.3), strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(channel.ids) == 150
        assert len(set(channel.ids)) == 150
        assert sum(r.delivered for r in reports) == 150
        assert {r.status for r in engines[0].notifications(channel="slow")} == {"delivered"}
    finally:
        for engine in engines:
            engine.close()


def test_lease_values_are_checked() -> None:
    for bad, message in (("0s", "longer than zero"), ("2d", "at most a day"), ("5x", "bad")):
        with pytest.raises(CrmflowError, match=message):
            Engine.from_path(WORKFLOWS, lease=bad, load_entry_points=False)
    with pytest.raises(CrmflowError, match="too long"):
        Engine.from_path(WORKFLOWS, lease="99999999999w", load_entry_points=False)
    with Engine.from_path(WORKFLOWS, lease=timedelta(seconds=90), load_entry_points=False) as e:
        assert e.lease == timedelta(seconds=90)


def test_bulk_requeue_says_what_it_left_dead(sqlite_url: str) -> None:
    with Engine.from_path(WORKFLOWS, store=sqlite_url, load_entry_points=False) as engine:
        engine.start("deal", "D-1", actor=REP, data={"company": "Hangzhou Tea Co."})
        engine.fire("D-1", "qualify", actor=REP)  # 'manager' resolves to nobody: dead
        assert len(engine.notifications(status="dead")) == 1
    result = _cli("outbox", "--store", sqlite_url, "--requeue")
    assert result.returncode == 0, result.stderr
    assert "0 dead notification(s) requeued" in result.stdout
    assert "1 still dead: no recipient was found" in result.stdout
