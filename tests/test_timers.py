"""Timers, reminders, SLAs in working time, automations and delegation, on a virtual clock.

Runs on memory, a SQLite file and PostgreSQL. Times are Shanghai wall-clock times (the shipped
complaint workflow's service desk calendar): 2026-01-05 is a Monday.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crmflow import Actor, Engine, InvalidData, VirtualClock
from crmflow.engine._calendar import load_calendar_text
from crmflow.plugins._storage_api import OutboxRecord

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
ORG = ROOT / "examples" / "org.yaml"
SHANGHAI = ZoneInfo("Asia/Shanghai")

CORA = Actor("cora", roles={"customer_service"})
QUINN = Actor("quinn", roles={"quality", "customer_service", "service_manager"})
FAY = Actor("fay", roles={"finance"})
ALICE = Actor("alice", roles={"sales_rep"})

OFFICE = load_calendar_text(
    "calendar: office\ntimezone: Asia/Shanghai\nhours: {mon-fri: '09:00-18:00'}\n"
)


def at(day: int, hour: int, minute: int = 0, month: int = 1) -> datetime:
    """A Shanghai wall-clock moment in 2026."""
    return datetime(2026, month, day, hour, minute, tzinfo=SHANGHAI)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(at(5, 9))


@pytest.fixture
def engine(store_url: str, clock: VirtualClock) -> Iterator[Engine]:
    with Engine.from_path(
        WORKFLOWS,
        store=store_url,
        clock=clock,
        org=ORG,
        calendar=OFFICE,
        load_entry_points=False,
    ) as eng:
        yield eng


def _sent(engine: Engine, event: str, **filters: str) -> list[OutboxRecord]:
    return [n for n in engine.notifications(**filters) if n.event == event]


def _complaint(engine: Engine, key: str, promised: datetime, category: str = "quality") -> None:
    engine.start(
        "complaint",
        key,
        actor=CORA,
        data={
            "customer_name": "Hangzhou Tea Co.",
            "category": category,
            "promised_reply_date": promised,
        },
    )


# -- D2: a reminder relative to a date on the record ----------------------------------------


def test_promised_reply_gets_exactly_one_reminder_two_days_before(
    engine: Engine, clock: VirtualClock
) -> None:
    _complaint(engine, "CP-1", promised=at(8, 17))  # Thursday 17:00
    (reminder,) = [t for t in engine.timers(key="CP-1") if t.name == "reply_reminder"]
    assert reminder.due_at == at(6, 17)  # Tuesday 17:00
    for moment in (at(5, 12), at(6, 16, 59)):
        clock.set(moment)
        engine.tick()
    assert _sent(engine, "timer:reply_reminder") == []
    clock.set(at(6, 17))
    engine.tick()
    clock.set(at(8, 18))
    engine.tick()
    (sent,) = _sent(engine, "timer:reply_reminder")
    assert (sent.recipient, sent.channel, sent.status) == ("cora", "inbox", "delivered")
    # Shown in the service desk calendar's zone, with its offset.
    assert sent.subject == "Reply to Hangzhou Tea Co. is due at 2026-01-08 17:00 +08:00"
    entry = next(h for h in engine.history("CP-1") if h.kind == "timer")
    assert entry.actor == "timer:reply_reminder"
    assert entry.details["notifications"][0]["to"] == "cora"
    assert engine.verify("CP-1").ok


def test_no_reminder_when_the_complaint_is_closed_first(
    engine: Engine, clock: VirtualClock
) -> None:
    _complaint(engine, "CP-2", promised=at(8, 17), category="billing")
    for trigger, data in (
        ("accept", {}),
        ("start_handling", {}),
        ("reply", {"resolution": "refunded"}),
        ("close", {"customer_feedback": "thanks"}),
    ):
        assert engine.fire("CP-2", trigger, actor=QUINN, data=data).ok
    assert engine.timers(key="CP-2") == []
    clock.set(at(9, 12))
    engine.tick()
    assert _sent(engine, "timer:reply_reminder") == []


def test_a_new_promise_moves_the_reminder(engine: Engine, clock: VirtualClock) -> None:
    _complaint(engine, "CP-3", promised=at(8, 17))
    result = engine.fire(
        "CP-3", "promise_reply", actor=CORA, data={"promised_reply_date": at(12, 12)}
    )
    assert result.effects["timers_cancelled"] == ["reply_reminder"]
    assert [
        (t["name"], datetime.fromisoformat(t["due_at"])) for t in result.effects["timers_set"]
    ] == [("reply_reminder", at(10, 12))]
    clock.set(at(6, 18))
    engine.tick()
    assert _sent(engine, "timer:reply_reminder") == []
    clock.set(at(10, 12))
    engine.tick()
    assert len(_sent(engine, "timer:reply_reminder")) == 1


# -- D3 / D8: deadlines by category in working hours, with escalation ------------------------


def test_a_24_working_hour_deadline_from_friday_afternoon_falls_on_wednesday_noon(
    engine: Engine, clock: VirtualClock
) -> None:
    clock.set(at(9, 15))  # Friday 15:00
    _complaint(engine, "CP-4", promised=at(20, 17))
    (deadline,) = [t for t in engine.timers(key="CP-4") if t.name == "reply_deadline"]
    assert deadline.due_at == at(14, 12)  # Wednesday 12:00
    clock.set(at(14, 11, 59))
    engine.tick()
    assert not engine.get("CP-4").data["escalated"]
    clock.set(at(14, 12))
    report = engine.tick()
    assert report.fired >= 1
    instance = engine.get("CP-4")
    assert instance.state == "received"  # escalation keeps the complaint where it is
    assert instance.data["escalated"] is True
    (overdue,) = _sent(engine, "timer:reply_deadline")
    assert overdue.recipient == "quinn"  # cora's manager, the head of service
    assert "overdue (quality)" in overdue.subject
    escalation = next(h for h in engine.history("CP-4") if h.trigger == "escalate")
    assert escalation.actor == "timer:reply_deadline"
    assert escalation.changes["escalated"] == [False, True]
    # The deadline fired once: later ticks do nothing more.
    clock.advance("3d")
    engine.tick()
    assert len(_sent(engine, "timer:reply_deadline")) == 1


def test_categories_without_a_deadline_use_the_default(engine: Engine) -> None:
    _complaint(engine, "CP-5", promised=at(20, 17), category="billing")
    (deadline,) = [t for t in engine.timers(key="CP-5") if t.name == "reply_deadline"]
    # 72 working hours from Monday 09:00: eight working days (9 h each) later.
    assert deadline.due_at == at(14, 18)


# -- D4: tracking ---------------------------------------------------------------------------


def test_every_step_of_a_complaint_is_reported_to_the_manager(engine: Engine) -> None:
    _complaint(engine, "CP-6", promised=at(20, 17))
    result = engine.fire("CP-6", "accept", actor=CORA)
    assert result.effects["automations"] == ["report_every_step_to_the_manager"]
    assert [(n["to"], n["channel"]) for n in result.effects["notifications"]] == [
        ("quinn", "inbox")
    ]
    engine.fire("CP-6", "start_handling", actor=CORA)
    engine.fire("CP-6", "promise_reply", actor=QUINN, data={"promised_reply_date": at(21, 17)})
    # The manager's own action is not reported back to the manager.
    subjects = [n.subject for n in engine.inbox("quinn")]
    assert subjects == [
        "Complaint CP-6 (Hangzhou Tea Co.): now accepted",
        "Complaint CP-6 (Hangzhou Tea Co.): now handling",
    ]


# -- D1: recurring personal reminders -------------------------------------------------------


def test_a_weekly_reminder_repeats_every_30_minutes_until_acknowledged(
    engine: Engine, clock: VirtualClock
) -> None:
    clock.set(at(11, 12))  # Sunday
    reminder = engine.add_reminder(
        "alice",
        message="Weekly sales meeting",
        cron="0 10 * * 1",
        repeat_every="30m",
        timezone="Asia/Shanghai",
    )
    assert reminder.due_at == at(12, 10)
    fired: list[datetime] = []
    for minute in range(0, 91, 5):
        clock.set(at(12, 10) + timedelta(minutes=minute))
        before = len(engine.inbox("alice"))
        engine.tick()
        if len(engine.inbox("alice")) > before:
            fired.append(clock.now())
        if clock.now() == at(12, 11, 5):
            latest = engine.inbox("alice")[-1]
            acknowledged = engine.acknowledge(latest.id, user="alice")
            assert acknowledged.acknowledged_at == clock.now()
    assert fired == [at(12, 10), at(12, 10, 30), at(12, 11)]
    # The next Monday it starts again.
    clock.set(at(19, 10))
    engine.tick()
    assert len(engine.inbox("alice")) == 4
    # Two weeks with nobody ticking: one reminder, not one per missed slot.
    clock.set(at(2, 10, 1, month=2))
    engine.tick()
    assert len(engine.inbox("alice")) == 5
    occurrence = engine.inbox("alice")[-1].metadata["occurrence"]
    assert datetime.fromisoformat(occurrence) == at(2, 10, month=2)


def test_a_reminder_due_on_saturday_waits_for_monday_morning(
    engine: Engine, clock: VirtualClock
) -> None:
    clock.set(at(9, 17))  # Friday
    engine.add_reminder(
        "alice", message="Call the bank", at=at(10, 10), working_time=True
    )  # Saturday 10:00
    for moment in (at(10, 10), at(11, 23), at(12, 8, 59)):
        clock.set(moment)
        engine.tick()
        assert engine.inbox("alice") == []
    clock.set(at(12, 9))
    engine.tick()
    clock.set(at(13, 9))
    engine.tick()
    (sent,) = engine.inbox("alice")
    assert sent.created_at == at(12, 9)
    assert sent.subject == "Call the bank"


def test_reminders_are_validated_and_can_be_cancelled(engine: Engine, clock: VirtualClock) -> None:
    with pytest.raises(InvalidData, match="cron"):
        engine.add_reminder("alice", message="x", cron="every monday")
    with pytest.raises(InvalidData):
        engine.add_reminder("alice", message="x", cron="0 10 * * 1", at=at(6, 10))
    reminder = engine.add_reminder("alice", message="x", at=at(6, 10))
    assert engine.cancel_timer(reminder.id)
    assert not engine.cancel_timer(reminder.id)
    clock.set(at(7, 10))
    engine.tick()
    assert engine.inbox("alice") == []


# -- E2: delegation -------------------------------------------------------------------------


def test_while_alice_delegates_to_bob_her_reminder_goes_to_bob(
    engine: Engine, clock: VirtualClock
) -> None:
    # examples/org.yaml: alice delegates to bob from 2 March 09:00 to 6 March 18:00.
    clock.set(at(2, 8, month=3))
    engine.start(
        "complaint",
        "CP-7",
        actor=CORA,
        owner="alice",
        data={
            "customer_name": "Ningbo Paper",
            "category": "delivery",
            "promised_reply_date": at(6, 10, month=3),
        },
    )
    clock.set(at(4, 10, month=3))
    engine.tick()
    (sent,) = _sent(engine, "timer:reply_reminder")
    assert (sent.recipient, sent.intended) == ("bob", "alice")
    assert "alice delegates to bob" in sent.metadata["delegation"]
    entry = next(h for h in engine.history("CP-7") if h.kind == "timer")
    (notice,) = entry.details["notifications"]
    assert (notice["to"], notice["intended"]) == ("bob", "alice")
    assert "alice delegates to bob" in notice["delegation"]
    # After the delegation ends, alice gets her own reminders again.
    clock.set(at(9, 10, month=3))
    engine.fire(
        "CP-7", "promise_reply", actor=CORA, data={"promised_reply_date": at(12, 10, month=3)}
    )
    assert engine.notifications(key="CP-7")[-1].recipient == "erin"  # alice's manager
    clock.set(at(10, 10, month=3))
    engine.tick()
    latest = _sent(engine, "timer:reply_reminder")[-1]
    assert (latest.recipient, latest.intended) == ("alice", "alice")
    assert "delegation" not in latest.metadata


# -- D5, E5: receivables --------------------------------------------------------------------


def test_a_receivable_reminds_its_owner_when_due_and_escalates_after_a_week(
    engine: Engine, clock: VirtualClock
) -> None:
    engine.start(
        "receivable",
        "AR-1",
        actor=FAY,
        owner="alice",
        data={
            "customer_name": "Hangzhou Tea Co.",
            "invoice_no": "INV-7",
            "amount": Decimal("12000"),
            "due_date": "2026-01-10",
        },
    )
    clock.set(at(9, 23))
    engine.tick()
    assert engine.get("AR-1").state == "open"
    clock.set(at(10, 0, 1))
    engine.tick()
    assert engine.get("AR-1").state == "due"
    (due,) = [n for n in engine.notifications(key="AR-1") if n.subject.endswith("is due")]
    assert due.recipient == "alice"
    clock.set(at(17, 0))
    engine.tick()
    assert _sent(engine, "timer:overdue_escalation") == []
    clock.set(at(17, 0, 2))
    engine.tick()
    (escalation,) = _sent(engine, "timer:overdue_escalation")
    assert escalation.recipient == "erin"  # alice's manager
    assert "7 days overdue" in escalation.subject


def test_a_payment_is_announced_to_the_owner_sales_managers_and_the_general_manager(
    engine: Engine,
) -> None:
    engine.start(
        "receivable",
        "AR-2",
        actor=FAY,
        owner="alice",
        data={
            "customer_name": "Ningbo Paper",
            "invoice_no": "INV-8",
            "amount": Decimal("800"),
            "due_date": "2026-02-01",
        },
    )
    result = engine.fire("AR-2", "record_payment", actor=FAY, data={"paid_amount": "800"})
    assert result.state == "paid"
    recipients = {n["to"] for n in result.effects["notifications"]}
    assert {"alice", "grace", "sam", "erin", "wes"} <= recipients
    # E4: the result says what happens next: the due-date timer is cancelled.
    assert result.effects["timers_cancelled"] == ["falls_due"]
    assert engine.timers(key="AR-2") == []


# -- the inbox --------------------------------------------------------------------------------


def test_the_inbox_lists_marks_read_and_checks_the_reader(engine: Engine) -> None:
    _complaint(engine, "CP-8", promised=at(20, 17))
    engine.fire("CP-8", "accept", actor=CORA)
    (message,) = engine.inbox("quinn", unread=True)
    read = engine.mark_read(message.id, user="quinn")
    assert read.read_at is not None
    assert engine.inbox("quinn", unread=True) == []
    with pytest.raises(Exception, match="not addressed"):
        engine.mark_read(message.id, user="cora")


def test_tasks_for_someone_away_go_to_their_proxy(engine: Engine, clock: VirtualClock) -> None:
    clock.set(at(3, 10, month=3))  # alice delegates to bob until 6 March 18:00
    engine.start("onboarding", "C-9", actor=ALICE, data={"company": "Wuxi Steel"})
    engine.fire("C-9", "start_confirmation", actor=ALICE)
    terms = engine.task("C-9", "payment_terms")
    assert terms.assignee == "bob"
    assert terms.note.startswith("delegated: alice delegates to bob")
    assert engine.task("C-9", "invoice_details").assignee is None  # held by finance
    # Bob may work on it; after the delegation new tasks are alice's again.
    assert engine.complete_task("C-9", "payment_terms", actor=Actor("bob", "sales_rep")).ok


def test_a_reminder_follows_the_users_own_time_zone(engine: Engine, clock: VirtualClock) -> None:
    clock.set(at(11, 12))
    # wes works in Hamburg (examples/org.yaml): Monday 10:00 there is 17:00 in Shanghai.
    reminder = engine.add_reminder("wes", message="Export meeting", cron="0 10 * * 1")
    assert reminder.due_at == at(12, 17)


def test_escalating_by_hand_ends_the_deadline(engine: Engine, clock: VirtualClock) -> None:
    _complaint(engine, "CP-10", promised=at(20, 17))
    result = engine.fire("CP-10", "escalate", actor=QUINN)
    assert "reply_deadline" in result.effects["timers_cancelled"]
    clock.set(at(14, 12))
    engine.tick()
    assert _sent(engine, "timer:reply_deadline") == []
    assert [h.trigger for h in engine.history("CP-10")].count("escalate") == 1
