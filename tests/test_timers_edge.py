"""Timer and notification edge cases: nothing stalls a tick, nothing addressed is dropped."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from crmflow import Actor, Engine, InvalidData, VirtualClock, load_workflow_text

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
REP = Actor("rep", roles={"rep"})

VISITS = """\
workflow: visits
roles: [rep, auditor]
fields:
  company: {type: str, required: true}
facts:
  customer:
    blocked: bool
states:
  - {name: open, initial: true}
  - {name: released, final: true}
transitions:
  - {trigger: log_visit, from: open, roles: [rep]}
  - {trigger: release, from: open, to: released, roles: [rep], rules: [not_blocked]}
rules:
  not_blocked:
    when: customer.blocked
    message: "{company} is blocked"
timers:
  - {name: no_visit, in_state: open, after: 10d, fire: release, reset_on: [log_visit]}
automations:
  - name: chase
    on: {transition: log_visit}
    do:
      - start_timer: {name: chase_up, after: 2d, notify: {to: [owner], subject: "Chase {key}"}}
      - notify: {to: ["role:auditor"], subject: "visit on {key}"}
"""


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(START)


@pytest.fixture
def engine(store_url: str, clock: VirtualClock) -> Iterator[Engine]:
    defn = load_workflow_text(VISITS, "visits.yaml")
    with Engine([defn], store=store_url, clock=clock, load_entry_points=False) as eng:
        yield eng


def test_a_timer_whose_rules_lack_host_facts_is_refused_not_retried_forever(
    engine: Engine, clock: VirtualClock
) -> None:
    engine.start("visits", "V-1", actor=REP, data={"company": "ACME"})
    engine.add_reminder("rep", message="still works", at=START)
    clock.advance("10d")
    report = engine.tick()
    # No fact provider can say whether the customer is blocked: the release is refused and
    # recorded, the timer is done, and the rest of the tick (the reminder) still happens.
    assert (report.refused, report.fired) == (1, 1)
    assert engine.get("V-1").state == "open"
    entry = engine.history("V-1")[-1]
    assert entry.kind == "refused"
    assert "could not fire release" in entry.reason
    assert engine.timers(key="V-1") == []
    assert [n.subject for n in engine.inbox("rep")] == ["still works"]
    assert engine.tick().idle


def test_a_started_timer_restarts_instead_of_doubling(engine: Engine, clock: VirtualClock) -> None:
    engine.start("visits", "V-2", actor=REP, data={"company": "ACME"})
    engine.fire("V-2", "log_visit", actor=REP)
    clock.advance("1d")
    result = engine.fire("V-2", "log_visit", actor=REP)
    assert "chase_up@open" in result.effects["timers_cancelled"]
    chases = [t for t in engine.timers(key="V-2") if t.name == "chase_up@open"]
    assert len(chases) == 1
    assert chases[0].due_at == clock.now() + timedelta(days=2)
    clock.advance("2d")
    engine.tick()
    assert [n.subject for n in engine.inbox("rep") if n.subject.startswith("Chase")] == [
        "Chase V-2"
    ]


def test_a_notification_nobody_can_receive_is_kept_as_dead(store_url: str) -> None:
    from pathlib import Path

    org = Path(__file__).resolve().parent.parent / "examples" / "org.yaml"
    defn = load_workflow_text(VISITS, "visits.yaml")
    with Engine([defn], store=store_url, org=org, load_entry_points=False) as engine:
        engine.start("visits", "V-3", actor=REP, data={"company": "ACME"})
        result = engine.fire("V-3", "log_visit", actor=REP)
        (notice,) = [n for n in result.effects["notifications"] if n["status"] == "dead"]
        assert "auditor" in notice["error"]  # nobody in the org holds that role
        assert engine.notifications(status="dead")


def test_reminder_and_subscription_arguments_are_checked(engine: Engine) -> None:
    with pytest.raises(InvalidData, match="timezone") as info:
        engine.add_reminder("rep", message="x", cron="0 10 * * 1", timezone="Asia/Shanghia")
    assert "Asia/Shanghai" in str(info.value)
    with pytest.raises(InvalidData, match="repeat_every"):
        engine.add_reminder("rep", message="x", cron="0 10 * * 1", repeat_every="often")
    with pytest.raises(InvalidData, match="no plugin renders"):
        engine.subscribe("rep", "weekly_magic", cron="0 9 * * 1")
    assert engine.timers(owner="rep") == []


def test_a_broken_timer_is_retried_after_its_lease_and_never_stalls_a_tick(
    engine: Engine, clock: VirtualClock
) -> None:
    from crmflow.plugins._storage_api import TimerRecord

    broken = TimerRecord(
        id="broken-1",
        kind="reminder",
        name="broken",
        due_at=START,
        created_at=START,
        owner="rep",
        payload={},  # no message, no zone: running it raises
    )
    with engine.store.transaction() as tx:
        tx.insert_timers([broken])
    engine.add_reminder("rep", message="still works", at=START)
    # A cap, so that a timer claimed again and again in one tick shows as a count, not a hang.
    report = engine.tick(limit=500)
    assert (report.failed, report.fired) == (1, 1)
    assert [row.subject for row in engine.inbox("rep")] == ["still works"]
    assert engine.tick(limit=500).idle  # still claimed: not tried again at once
    clock.advance("4m")
    assert engine.tick(limit=500).idle
    clock.advance("2m")  # the five-minute lease has run out
    assert engine.tick(limit=500).failed == 1
    timer = engine.store.get_timer("broken-1")
    assert timer is not None and timer.status == "pending"


CALLS = """\
workflow: calls
roles: [rep]
fields:
  company: {type: str, required: true}
states:
  - {name: open, initial: true}
  - {name: closed, final: true}
transitions:
  - {trigger: log_call, from: open, roles: [rep]}
  - {trigger: close, from: open, to: closed, roles: [rep]}
automations:
  - name: follow_up
    on: {transition: log_call}
    do:
      - create_task: {id: call_back, title: Call the customer back, due: 1d, result: int}
"""


def test_an_automation_task_keeps_the_item_keys_it_was_written_with(
    store_url: str, clock: VirtualClock
) -> None:
    defn = load_workflow_text(CALLS, "calls.yaml")
    with Engine([defn], store=store_url, clock=clock, load_entry_points=False) as engine:
        engine.start("calls", "K-1", actor=REP, data={"company": "ACME"})
        engine.fire("K-1", "log_call", actor=REP)
        (task,) = engine.tasks("K-1")
        assert (task.id, task.checklist, task.assignee) == (
            "call_back",
            "automation:follow_up",
            "rep",
        )
        assert task.due_at == START + timedelta(days=1)
        assert not task.deferrable  # not declared deferrable: the default, as for checklist items
        refused = engine.defer_task("K-1", "call_back", actor=REP, reason="busy")
        assert not refused.ok
        with pytest.raises(InvalidData, match="needs a result"):
            engine.complete_task("K-1", "call_back", actor=REP)
        done = engine.complete_task("K-1", "call_back", actor=REP, result="3")
        assert done.ok and done.task.result == 3  # the declared type, coerced


def test_only_timers_that_were_pending_are_reported_cancelled(engine: Engine) -> None:
    # No visit was logged, so the automation's chase_up timer never started: leaving the
    # state cancels the workflow's no_visit timer and reports nothing else.
    engine.start("visits", "V-9", actor=REP, data={"company": "ACME"})
    result = engine.fire("V-9", "release", actor=REP, facts={"customer": {"blocked": False}})
    assert result.ok
    assert result.effects["timers_cancelled"] == ["no_visit"]
    assert engine.history("V-9")[-1].details["timers_cancelled"] == ["no_visit"]
