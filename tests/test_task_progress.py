"""Progress figures against a hand count, and task invariants under random operations."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmflow import Actor, Engine, PermissionDenied, Progress, VirtualClock

AUDIT = Path(__file__).resolve().parent / "fixtures" / "tasks" / "audit.yaml"
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

ALICE = Actor("alice", roles={"auditor"})
BOB = Actor("bob", roles={"auditor"})
QUINN = Actor("quinn", roles={"quality"})
LEO = Actor("leo", roles={"lead_auditor"})


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(START)


@pytest.fixture
def engine(store_url: str, clock: VirtualClock) -> Iterator[Engine]:
    with Engine.from_path(AUDIT, store=store_url, clock=clock, load_entry_points=False) as eng:
        yield eng


def _begin(engine: Engine, key: str, owner: Actor) -> None:
    engine.start("audit", key, actor=owner, data={"supplier": key})
    assert engine.fire(key, "begin", actor=owner).ok


def _complete(engine: Engine, key: str, actor: Actor, *items: str) -> None:
    for item in items:
        outcome = engine.complete_task(key, item, actor=actor)
        assert outcome.ok, outcome.explain()


def _defer(engine: Engine, key: str, actor: Actor, *items: str) -> None:
    for item in items:
        assert engine.defer_task(key, item, actor=actor, reason="next visit").ok


def test_progress_matches_a_hand_count_of_three_instances_and_thirty_tasks(
    engine: Engine, clock: VirtualClock
) -> None:
    _begin(engine, "A1", ALICE)
    _begin(engine, "A2", ALICE)
    _begin(engine, "A3", BOB)
    # A1: 6 done, 2 deferred, 2 open.
    _complete(engine, "A1", ALICE, "a1", "a2", "a3", "a4")
    _complete(engine, "A1", QUINN, "a5")
    _complete(engine, "A1", ALICE, "a10")
    _defer(engine, "A1", ALICE, "a7")
    _defer(engine, "A1", QUINN, "a6")
    # A2: 2 done, 1 deferred, 7 open.
    _complete(engine, "A2", ALICE, "a1", "a2")
    _defer(engine, "A2", ALICE, "a8")
    # A3: 3 done, 7 open, a9 handed to carol.
    _complete(engine, "A3", BOB, "a1", "a2", "a3")
    assert engine.reassign_task("A3", "a9", to="carol", actor=LEO).ok
    # Items a1-a5 fell due a day after the start; two days on, the unfinished ones are late.
    clock.advance("2d")

    assert engine.progress("A1") == Progress(done=6, open=2, deferred=2, overdue=0)
    assert engine.progress("A2") == Progress(done=2, open=7, deferred=1, overdue=3)
    assert engine.progress("A3") == Progress(done=3, open=7, deferred=0, overdue=2)
    assert [engine.progress(k).percent for k in ("A1", "A2", "A3")] == [60.0, 20.0, 30.0]
    assert engine.progress("A1").total == 10

    by_owner = engine.progress_report(by="owner")
    assert by_owner == {
        "alice": Progress(done=8, open=9, deferred=3, overdue=3),
        "bob": Progress(done=3, open=7, deferred=0, overdue=2),
    }
    assert by_owner["alice"].percent == 40.0

    by_assignee = engine.progress_report(by="assignee")
    assert by_assignee == {
        "alice": Progress(done=7, open=7, deferred=2, overdue=2),
        "bob": Progress(done=3, open=4, deferred=0, overdue=1),
        "carol": Progress(done=0, open=1, deferred=0, overdue=0),
        "role:quality": Progress(done=1, open=4, deferred=1, overdue=2),
    }
    assert by_assignee["alice"].percent == 43.8
    assert by_assignee["carol"].as_dict() == {
        "done": 0,
        "open": 1,
        "deferred": 0,
        "overdue": 0,
        "cancelled": 0,
        "total": 1,
        "percent": 0.0,
    }
    assert sum(p.total for p in by_assignee.values()) == 30
    assert engine.progress_by_checklist("A2") == {"audit": engine.progress("A2")}


def test_cancelled_tasks_are_counted_apart_from_the_work_left(
    engine: Engine, clock: VirtualClock
) -> None:
    _begin(engine, "A1", ALICE)
    _complete(engine, "A1", ALICE, "a1")
    assert engine.fire("A1", "fail", actor=ALICE).ok
    progress = engine.progress("A1")
    assert progress == Progress(done=1, cancelled=9)
    assert (progress.total, progress.percent) == (1, 100.0)
    clock.advance("10d")
    assert engine.progress("A1").overdue == 0  # cancelled work is never late


def test_a_gate_without_allow_deferred_refuses_deferred_items(engine: Engine) -> None:
    _begin(engine, "A1", ALICE)
    _complete(engine, "A1", ALICE, "a1", "a2", "a3", "a4", "a9")
    _complete(engine, "A1", QUINN, "a5")
    _complete(engine, "A1", ALICE, "a10")
    _defer(engine, "A1", ALICE, "a7", "a8")
    _defer(engine, "A1", QUINN, "a6")
    result = engine.fire("A1", "pass", actor=ALICE)
    assert not result.ok
    assert set(result.refusals[0].items) == {"a6", "a7", "a8"}
    assert "does not accept deferred items" in result.refusals[0].hint
    for item, actor in (("a6", QUINN), ("a7", ALICE), ("a8", ALICE)):
        assert engine.complete_task("A1", item, actor=actor).ok
    assert engine.fire("A1", "pass", actor=ALICE).ok


# -- invariants under random operations ----------------------------------------------------

ITEMS = [f"a{i}" for i in range(1, 11)]
ACTORS = [ALICE, QUINN, LEO, BOB]
OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["complete", "defer", "reopen", "reassign", "pass", "advance"]),
        st.sampled_from(ITEMS),
        st.sampled_from(ACTORS),
    ),
    max_size=25,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(operations=OPERATIONS)
def test_task_invariants_hold_after_any_sequence_of_operations(
    operations: list[tuple[str, str, Actor]],
) -> None:
    clock = VirtualClock(START)
    with Engine.from_path(AUDIT, clock=clock, load_entry_points=False) as engine:
        _begin(engine, "A1", ALICE)
        for operation, item, actor in operations:
            before = engine.get("A1").version
            try:
                if operation == "complete":
                    ok = engine.complete_task("A1", item, actor=actor).ok
                elif operation == "defer":
                    ok = engine.defer_task("A1", item, actor=actor, reason="later").ok
                elif operation == "reopen":
                    ok = engine.reopen_task("A1", item, actor=actor).ok
                elif operation == "reassign":
                    ok = engine.reassign_task("A1", item, to=actor.id, actor=LEO).ok
                elif operation == "pass":
                    ok = engine.fire("A1", "pass", actor=actor).ok
                else:
                    clock.advance("1d")
                    continue
            except PermissionDenied:
                ok = False
            # A refused or denied operation changes nothing; a done one adds one version.
            assert engine.get("A1").version == before + (1 if ok else 0)
            tasks = {t.id: t for t in engine.tasks("A1")}
            for task in tasks.values():
                if task.status == "done":
                    # Nothing is done before what it depends on.
                    assert all(tasks[d].status == "done" for d in task.depends_on)
                    assert task.closed_by is not None
            if engine.get("A1").state == "passed":
                assert all(t.status == "done" for t in tasks.values() if t.required)
            progress = engine.progress("A1")
            assert progress.total + progress.cancelled == len(tasks) == 10
        assert engine.verify("A1").ok
