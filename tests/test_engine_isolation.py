"""Concurrency, atomicity and isolation: one winner, no trace of a failed fire, no shared state."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crmflow import Actor, ConcurrencyConflict, Engine, VirtualClock, hookimpl
from crmflow.rules import available_backends

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
ALICE = Actor("alice", roles={"sales_rep"})
ACME = {
    "name": "ACME",
    "credit_limit": Decimal("10000"),
    "open_balance": Decimal("0"),
    "payment_terms": "net30",
}


class BarrierFacts:
    """A fact provider that makes every caller wait until all have read the instance."""

    def __init__(self, barrier: Any) -> None:
        self.barrier = barrier

    @hookimpl
    def crmflow_provide_facts(
        self,
        namespace: str,
        instance_key: str,
        workflow: str,
        data: Mapping[str, Any],
        needed: Sequence[str],
    ) -> Mapping[str, Any] | None:
        self.barrier.wait(timeout=30)
        return ACME


def _outcome(engine: Engine, results: list[str]) -> None:
    try:
        result = engine.fire("SO-1", "approve", actor=ALICE)
        results.append("ok" if result.ok else "refused")
    except ConcurrencyConflict:
        results.append("conflict")


def test_two_threads_one_winner(store_url: str) -> None:
    barrier = threading.Barrier(2)
    with Engine.from_path(
        WORKFLOWS, store=store_url, plugins=[BarrierFacts(barrier)], load_entry_points=False
    ) as engine:
        engine.start("sales_order", "SO-1", actor=ALICE, data={"customer_id": "C1", "amount": 100})
        results: list[str] = []
        threads = [threading.Thread(target=_outcome, args=(engine, results)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(results) == ["conflict", "ok"]
        history = engine.history("SO-1")
        assert [h.seq for h in history] == [1, 2]
        assert [h.kind for h in history] == ["start", "transition"]
        assert engine.get("SO-1").version == 2
        assert engine.verify("SO-1").ok


def _process_fire(store_url: str, barrier: Any, queue: Any) -> None:
    with Engine.from_path(
        WORKFLOWS, store=store_url, plugins=[BarrierFacts(barrier)], load_entry_points=False
    ) as engine:
        results: list[str] = []
        _outcome(engine, results)
        queue.put(results[0])


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
def test_two_processes_one_winner(store_url: str) -> None:
    with Engine.from_path(WORKFLOWS, store=store_url, load_entry_points=False) as engine:
        engine.start("sales_order", "SO-1", actor=ALICE, data={"customer_id": "C1", "amount": 100})
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_process_fire, args=(store_url, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert outcomes == ["conflict", "ok"]
    with Engine.from_path(WORKFLOWS, store=store_url, load_entry_points=False) as engine:
        history = engine.history("SO-1")
        assert [h.seq for h in history] == [1, 2]
        assert engine.get("SO-1").state == "approved"
        assert engine.verify("SO-1").ok


class ExplodingObserver:
    @hookimpl
    def crmflow_before_commit(self, context: Any, tx: Any) -> None:
        raise RuntimeError("observer failed mid-fire")


def test_observer_failure_leaves_no_trace(store_url: str) -> None:
    with Engine.from_path(
        WORKFLOWS, store=store_url, plugins=[ExplodingObserver()], load_entry_points=False
    ) as engine:
        engine.start("sales_order", "SO-1", actor=ALICE, data={"customer_id": "C1", "amount": 100})
        before = engine.get("SO-1")
        with pytest.raises(RuntimeError, match="observer failed"):
            engine.fire(
                "SO-1", "approve", actor=ALICE, facts={"customer": ACME}, idempotency_key="cmd-1"
            )
        with pytest.raises(RuntimeError, match="observer failed"):
            engine.fire("SO-1", "revise", actor=ALICE, data={"amount": 200})
        after = engine.get("SO-1")
        assert (after.state, after.version, after.data) == (
            before.state,
            before.version,
            before.data,
        )
        assert [h.kind for h in engine.history("SO-1")] == ["start"]
        assert engine.store.get_idempotency("cmd-1") is None


RULE_TEMPLATE = """
workflow: sales_order
version: 1
fields: {{amount: decimal, customer_id: str}}
facts: {{customer: {{credit_limit: decimal}}}}
states:
  - {{name: draft, initial: true}}
  - {{name: approved, final: true}}
transitions:
  - {{trigger: approve, from: draft, to: approved, rules: [credit_limit]}}
rules:
  credit_limit:
    when: {condition}
    effect: block
    message: "over the limit"
"""


@pytest.mark.parametrize("backend", available_backends())
def test_two_engines_apply_their_own_rules(tmp_path: Path, backend: str) -> None:
    strict_dir, lenient_dir = tmp_path / "strict", tmp_path / "lenient"
    strict_dir.mkdir()
    lenient_dir.mkdir()
    (strict_dir / "so.yaml").write_text(
        RULE_TEMPLATE.format(condition="amount > customer.credit_limit")
    )
    (lenient_dir / "so.yaml").write_text(
        RULE_TEMPLATE.format(condition="amount > customer.credit_limit * 2")
    )
    facts = {"customer": {"credit_limit": Decimal("1000")}}
    clock = VirtualClock()
    with (
        Engine.from_path(
            strict_dir, rules_backend=backend, clock=clock, load_entry_points=False
        ) as strict,
        Engine.from_path(
            lenient_dir, rules_backend=backend, clock=clock, load_entry_points=False
        ) as lenient,
    ):
        for engine in (strict, lenient):
            engine.start("sales_order", "SO-1", actor=ALICE, data={"amount": Decimal("1500")})
        assert not strict.fire("SO-1", "approve", actor=ALICE, facts=facts).ok
        assert lenient.fire("SO-1", "approve", actor=ALICE, facts=facts).ok
        assert strict.get("SO-1").state == "draft"
        assert lenient.get("SO-1").state == "approved"
