"""The shipped example programs run and do what their docstrings say."""

from __future__ import annotations

import os
import re
import runpy
import sqlite3
import subprocess
import sys
import uuid
from contextlib import closing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crmflow import Actor, Engine, PluginError, UnknownInstance, VirtualClock
from crmflow.engine._timer_ops import TickReport
from crmflow.plugins._storage_api import TimerRecord

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WORKFLOWS = EXAMPLES.parent / "workflows"


def _example(name: str) -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES / name))


@pytest.fixture(autouse=True)
def _loopback_without_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The chat tests talk to a server on 127.0.0.1; a proxy configured on the machine must not
    # take those requests.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1"])))


def test_embed_host_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(EXAMPLES / "embed_host.py"))
    events = module["main"](tmp_path / "erp.db")
    out = capsys.readouterr().out
    assert events == [
        "SO-1: draft -> approved by li",
        "SO-2: draft -> approved by zhao",
        "SO-1: approved -> shipped by wu",
    ]
    assert "credit_limit (confirm)" in out
    assert "(ship: Contoso pays in advance" in out


def test_weekly_reminder_example() -> None:
    root = EXAMPLES.parent
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "weekly_reminder.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "reminder weekly-figures: first due Mon 01-12 10:00" in lines[0]
    arrivals = [line.split("  inbox:")[0] for line in lines if "  inbox: " in line]
    # 10:00, then every 30 minutes until acknowledged at 11:10; then the next Monday.
    assert arrivals == ["Mon 01-12 10:00", "Mon 01-12 10:30", "Mon 01-12 11:00", "Mon 01-19 10:00"]
    assert "Mon 01-12 11:10  alice acknowledges" in lines
    assert "Mon 01-12 18:00  no more repeats today; next due Mon 01-19 10:00" in lines
    assert "  Mon 01-12 11:00  delivered, read, acknowledged" in lines


# ---------------------------------------------------------------------------------------------
# examples/chat_channel.py
# ---------------------------------------------------------------------------------------------

# What the chat service receives for alice's shipped order (the example maps alice to her
# chat user id, so the group robot @-mentions her).
SHIPPED = {
    "msgtype": "text",
    "text": {"content": "Order SO-1 has shipped", "mentioned_list": ["AliceChen"]},
}


def test_chat_channel_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "chat.db"
    received = _example("chat_channel.py")["main"](db)
    assert received == [SHIPPED]  # the loopback chat service got the one message
    out = capsys.readouterr().out
    assert "tick: 2 delivered, 0 to retry, 0 dead" in out
    assert 'chat service received: {"msgtype": "text"' in out
    with Engine.from_path(WORKFLOWS, store=f"sqlite:///{db}", load_entry_points=False) as engine:
        rows = {row.channel: row for row in engine.notifications(key="SO-1")}
    assert set(rows) == {"inbox", "chat"}
    chat = rows["chat"]
    assert (chat.recipient, chat.event, chat.subject) == (
        "alice",
        "transition:ship",
        "Order SO-1 has shipped",
    )
    assert (chat.status, chat.attempts, chat.last_error) == ("delivered", 1, "")
    assert chat.delivered_at is not None
    assert rows["inbox"].status == "delivered"


def _ship_and_tick(
    tmp_path: Path, service: Any, module: dict[str, Any], clock: VirtualClock
) -> tuple[Any, TickReport]:
    with module["build_engine"](tmp_path / "chat.db", service.url, clock, timeout=0.3) as engine:
        module["ship_order"](engine, "SO-1")
        report = engine.tick()
        (row,) = engine.notifications(key="SO-1", channel="chat")
    return row, report


@pytest.mark.parametrize(
    ("service_options", "status", "error"),
    [
        pytest.param({"status": 503}, "pending", "answered 503", id="503-retryable"),
        pytest.param({"status": 500}, "pending", "answered 500", id="500-retryable"),
        pytest.param({"status": 429}, "pending", "answered 429", id="429-retryable"),
        pytest.param({"delay": 1.5}, "pending", "no answer within 0.3 s", id="timeout-retryable"),
        pytest.param(
            {"answer": {"errcode": 45009, "errmsg": "api freq out of limit"}},
            "pending",
            "errcode 45009: api freq out of limit",
            id="rate-limit-errcode-retryable",
        ),
        pytest.param({"status": 400}, "dead", "answered 400", id="400-dead"),
        pytest.param({"status": 404}, "dead", "answered 404", id="404-dead"),
        pytest.param({"status": 302}, "dead", "answered 302", id="redirect-dead"),
        pytest.param(
            {"answer": {"errcode": 93000, "errmsg": "invalid webhook url"}},
            "dead",
            "errcode 93000: invalid webhook url",
            id="bad-token-errcode-dead",
        ),
    ],
)
def test_chat_channel_failures_are_retried_or_dead(
    tmp_path: Path, service_options: dict[str, Any], status: str, error: str
) -> None:
    module = _example("chat_channel.py")
    now = datetime(2026, 1, 12, 1, 0, tzinfo=UTC)
    clock = VirtualClock(now)
    with module["ChatService"](**service_options) as service:
        row, report = _ship_and_tick(tmp_path, service, module, clock)
        assert service.received == [SHIPPED]  # one attempt, and it did reach the service
        assert service.paths == ["/cgi-bin/webhook/send?key=demo-robot-key"]
    assert row.status == status
    assert row.attempts == 1
    assert error in row.last_error
    assert "demo-robot-key" not in row.last_error  # the URL's token is never shown
    if status == "pending":
        assert "(retryable)" in row.last_error
        assert row.next_attempt_at is not None and row.next_attempt_at > now
        assert (report.delivered, report.retrying, report.dead) == (1, 1, 0)  # 1: the inbox row
    else:
        assert "(not retryable)" in row.last_error
        assert row.next_attempt_at is None
        assert (report.delivered, report.retrying, report.dead) == (1, 0, 1)


def test_chat_channel_honours_retry_after_and_delivers_once_the_service_recovers(
    tmp_path: Path,
) -> None:
    module = _example("chat_channel.py")
    now = datetime(2026, 1, 12, 1, 0, tzinfo=UTC)
    clock = VirtualClock(now)
    with module["ChatService"](status=503, headers={"Retry-After": "600"}) as service:
        row, _ = _ship_and_tick(tmp_path, service, module, clock)
        assert row.status == "pending"
        assert row.next_attempt_at >= now + timedelta(seconds=600)
        service.status = 200
        build = module["build_engine"]
        with build(tmp_path / "chat.db", service.url, clock) as engine:
            clock.set(now + timedelta(seconds=599))
            assert engine.tick().idle  # not before the service said
            clock.set(row.next_attempt_at)
            assert engine.tick().delivered == 1
            (row,) = engine.notifications(key="SO-1", channel="chat")
        assert len(service.received) == 2  # the failed attempt and the delivered one
    assert (row.status, row.attempts) == ("delivered", 2)


def test_chat_channel_connection_refused_is_retryable(tmp_path: Path) -> None:
    module = _example("chat_channel.py")
    with module["ChatService"]() as gone:
        pass  # started and stopped: nothing listens on its port any more
    row, _ = _ship_and_tick(tmp_path, gone, module, VirtualClock(datetime(2026, 1, 12, tzinfo=UTC)))
    assert (row.status, row.attempts) == ("pending", 1)
    assert "cannot connect" in row.last_error and "(retryable)" in row.last_error


# ---------------------------------------------------------------------------------------------
# examples/tenant_storage.py
# ---------------------------------------------------------------------------------------------


def _instance_keys(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as conn:
        return [key for (key,) in conn.execute("SELECT key FROM crmflow_instances ORDER BY key")]


def test_tenant_storage_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "tenants"
    books = _example("tenant_storage.py")["main"](root)
    assert books == {
        "acme": ["SO-1 C-ACME-7 8000 [draft]", "SO-2 C-ACME-9 120 [draft]"],
        "globex": ["SO-1 C-GX-1 45000 [draft]"],
    }
    assert sorted(p.name for p in root.iterdir() if p.suffix == ".db") == ["acme.db", "globex.db"]
    assert _instance_keys(root / "acme.db") == ["SO-1", "SO-2"]
    assert _instance_keys(root / "globex.db") == ["SO-1"]
    out = capsys.readouterr().out
    assert "tenant globex" in out and "has no SO-2" in out
    assert "refused: store URL 'tenant://../acme'" in out


def test_tenants_do_not_see_each_others_instances(tmp_path: Path) -> None:
    module = _example("tenant_storage.py")
    plugin = module["TenantStorage"](tmp_path / "default")
    other = tmp_path / "other root"  # a space survives the SQLite URL
    rep = Actor("li", roles={"sales_rep"})
    data = {"customer_id": "C-1", "amount": Decimal("10")}
    with (
        Engine.from_path(WORKFLOWS, store="tenant://north", plugins=[plugin]) as north,
        Engine.from_path(
            WORKFLOWS, store=f"tenant://South?root={other}", plugins=[plugin]
        ) as south,
    ):
        north.start("sales_order", "SO-1", actor=rep, data=data)
        south.start("sales_order", "SO-2", actor=rep, data=data)
        assert [i.key for i in north.instances()] == ["SO-1"]
        assert [i.key for i in south.instances()] == ["SO-2"]
        with pytest.raises(UnknownInstance):
            south.get("SO-1")
        with pytest.raises(UnknownInstance):
            north.get("SO-2")
    # One file per tenant, where the URL said (names are case-insensitive).
    assert sorted(p.name for p in (tmp_path / "default").glob("*.db")) == ["north.db"]
    assert sorted(p.name for p in other.glob("*.db")) == ["south.db"]
    assert _instance_keys(tmp_path / "default" / "north.db") == ["SO-1"]
    assert _instance_keys(other / "south.db") == ["SO-2"]
    # Reopened, a tenant finds its own data again.
    with Engine.from_path(WORKFLOWS, store="tenant://NORTH", plugins=[plugin]) as again:
        assert again.get("SO-1").data["amount"] == Decimal("10")
    # Other schemes are left to the built-in storage.
    with Engine.from_path(WORKFLOWS, store="memory://", plugins=[plugin]) as memory:
        assert memory.instances() == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("tenant://", "names no tenant"),
        ("tenant://../acme", "is not a tenant name"),
        ("tenant://..", "is not a tenant name"),
        ("tenant://acme/../../etc", "is not a tenant name"),
        ("tenant://acme/x", "is not a tenant name"),
        ("tenant://.hidden", "is not a tenant name"),
        ("tenant://-acme", "is not a tenant name"),
        ("tenant://a%2F..%2Fb", "is not a tenant name"),
        ("tenant://acme:8080", "is not a tenant name"),
        ("tenant://me@acme", "is not a tenant name"),
        ("tenant://" + "a" * 64, "is not a tenant name"),
        ("tenant://acme?owner=x", "unknown option 'owner'"),
        ("tenant://acme?root=", "give root= once, with a value"),
        ("tenant://acme?root=/a&root=/b", "give root= once, with a value"),
    ],
)
def test_tenant_storage_refuses_bad_urls(tmp_path: Path, url: str, message: str) -> None:
    plugin = _example("tenant_storage.py")["TenantStorage"](tmp_path / "root")
    with pytest.raises(PluginError, match=re.escape(message)):
        Engine.from_path(WORKFLOWS, store=url, plugins=[plugin])
    assert list(tmp_path.iterdir()) == []  # nothing was created anywhere


def test_tenant_storage_without_a_root_is_refused(tmp_path: Path) -> None:
    plugin = _example("tenant_storage.py")["TenantStorage"]()
    with pytest.raises(PluginError, match=r"names no root directory: add \?root=DIR"):
        Engine.from_path(WORKFLOWS, store="tenant://acme", plugins=[plugin])


# ---------------------------------------------------------------------------------------------
# examples/postgres_worker.py
# ---------------------------------------------------------------------------------------------


@pytest.mark.postgresql
def test_postgres_worker_example(
    postgres_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    count = 25
    past = datetime.now(UTC) - timedelta(hours=1)
    reminders = [
        TimerRecord(
            id=f"t{n:03d}-{uuid.uuid4().hex[:6]}",
            kind="reminder",
            name=f"r{n}",
            due_at=past,
            created_at=past,
            owner=f"user{n}",
            payload={"message": f"reminder {n}", "timezone": "UTC"},
        )
        for n in range(count)
    ]
    with (
        Engine.from_path(WORKFLOWS, store=postgres_url, load_entry_points=False) as engine,
        engine.store.transaction() as tx,
    ):
        tx.insert_timers(reminders)

    main = _example("postgres_worker.py")["main"]
    total = main([postgres_url, "--interval", "0.1"])
    assert (total.fired, total.delivered, total.retrying, total.dead, total.failed) == (
        count,
        2 * count,  # the inbox and the host's console channel
        0,
        0,
        0,
    )
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.split(" [")[0] for line in out) == sorted(
        f"to user{n}: 'reminder {n}'" for n in range(count)
    )

    # A second worker, with the URL from CRMFLOW_STORE, finds nothing left to do.
    monkeypatch.setenv("CRMFLOW_STORE", postgres_url)
    again = main([])
    assert again.idle

    with Engine.from_path(WORKFLOWS, store=postgres_url, load_entry_points=False) as engine:
        for reminder in reminders:
            stored = engine.store.get_timer(reminder.id)
            assert stored is not None
            assert (stored.status, stored.fire_count) == ("fired", 1)
            rows = engine.store.outbox(timer_id=reminder.id)
            assert sorted(row.channel for row in rows) == ["console", "inbox"]
            assert {row.status for row in rows} == {"delivered"}
            assert reminder.owner is not None
            (inbox,) = engine.inbox(reminder.owner)
            assert (inbox.timer_id, inbox.subject, inbox.event) == (
                reminder.id,
                reminder.payload["message"],
                "reminder",
            )


def test_postgres_worker_needs_a_store(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CRMFLOW_STORE", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        _example("postgres_worker.py")["main"]([])
    assert exit_info.value.code == 2
    assert "give the database URL, or set CRMFLOW_STORE" in capsys.readouterr().err
