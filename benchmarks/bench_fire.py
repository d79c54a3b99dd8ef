"""Guarded fires per second, against baselines measured in the same run.

1. In memory: crmflow (memory store) firing a guarded toggle against raw ``transitions``
   firing the same machine with the same guard as a Python condition.
2. Persisted: crmflow on an SQLite file against raw ``sqlite3`` doing the same reads and
   writes per fire (read the row, compare-and-set update, history row with a hash), with the
   same durability settings (WAL, synchronous FULL, BEGIN IMMEDIATE).

Run: ``python benchmarks/bench_fire.py [--seconds 3] [--rounds 6]``. Ratios matter, not
absolute numbers: these machines are noisy, so both sides of each ratio run in the same process,
interleaved in rounds (each side runs ``seconds / rounds`` per round, the side that goes first
alternating), and the ratio printed is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from transitions import Machine

from crmflow import Actor, Engine, load_workflow_text
from crmflow.rules import available_backends

WORKFLOW = """
workflow: toggle
version: 1
fields: {amount: decimal}
facts: {customer: {credit_limit: decimal, open_balance: decimal}}
states:
  - {name: a, initial: true}
  - b
transitions:
  - {trigger: go, from: a, to: b, rules: [credit_limit]}
  - {trigger: back, from: b, to: a, rules: [credit_limit]}
rules:
  credit_limit:
    when: amount + customer.open_balance > customer.credit_limit
    effect: block
    message: "over by {amount + customer.open_balance - customer.credit_limit}"
"""
FACTS = {"customer": {"credit_limit": Decimal("10000"), "open_balance": Decimal("5000")}}
ACTOR = Actor("bench", roles={"any"})


def rate(fn: Callable[[], None], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    fn()  # warm up
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(50):
            fn()
        count += 50
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def compare(
    baseline: Callable[[], None], ours: Callable[[], None], seconds: float, rounds: int
) -> tuple[float, float, float]:
    """(baseline rate, our rate, median ratio) over ``rounds`` interleaved rounds."""
    ratios: list[float] = []
    base_rates: list[float] = []
    our_rates: list[float] = []
    for n in range(rounds):
        if n % 2:
            ours_rate, base_rate = rate(ours, seconds / rounds), rate(baseline, seconds / rounds)
        else:
            base_rate, ours_rate = rate(baseline, seconds / rounds), rate(ours, seconds / rounds)
        base_rates.append(base_rate)
        our_rates.append(ours_rate)
        ratios.append(ours_rate / base_rate)
    return statistics.median(base_rates), statistics.median(our_rates), statistics.median(ratios)


def raw_transitions() -> Callable[[], None]:
    """The same machine and guard on raw ``transitions``."""
    amount = Decimal("100")
    customer = FACTS["customer"]

    class Model:
        def within_limit(self) -> bool:
            return amount + customer["open_balance"] <= customer["credit_limit"]

    model = Model()
    machine = Machine(model=model, states=["a", "b"], initial="a", auto_transitions=False)
    machine.add_transition("go", "a", "b", conditions="within_limit")
    machine.add_transition("back", "b", "a", conditions="within_limit")
    triggers = [model.go, model.back]  # type: ignore[attr-defined]
    turn = [0]

    def fire() -> None:
        ok = triggers[turn[0] % 2]()
        assert ok
        turn[0] += 1

    return fire


def crmflow_fire(store: str, backend: str) -> tuple[Callable[[], None], Engine]:
    """Fire the toggle on a crmflow engine."""
    engine = Engine(
        [load_workflow_text(WORKFLOW)], store=store, rules_backend=backend, load_entry_points=False
    )
    engine.start("toggle", "T-1", actor=ACTOR, data={"amount": Decimal("100")})
    names = ["go", "back"]
    turn = [0]

    def fire() -> None:
        result = engine.fire("T-1", names[turn[0] % 2], actor=ACTOR, facts=FACTS)
        assert result.ok
        turn[0] += 1

    return fire, engine


def raw_sqlite(path: Path) -> tuple[Callable[[], None], sqlite3.Connection]:
    """The reads and writes of one persisted fire, on raw sqlite3."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE inst (key TEXT PRIMARY KEY, state TEXT, data TEXT, version INT)")
    conn.execute(
        "CREATE TABLE hist (id INTEGER PRIMARY KEY, key TEXT, seq INT, kind TEXT, trig TEXT, "
        "src TEXT, dst TEXT, details TEXT, prev TEXT, hash TEXT, UNIQUE(key, seq))"
    )
    conn.execute("INSERT INTO inst VALUES ('T-1', 'a', '{}', 1)")
    states = ["a", "b"]

    def fire() -> None:
        state, version = conn.execute(
            "SELECT state, version FROM inst WHERE key = ?", ("T-1",)
        ).fetchone()
        dest = states[(states.index(state) + 1) % 2]
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.execute(
            "UPDATE inst SET state = ?, version = ? WHERE key = ? AND version = ?",
            (dest, version + 1, "T-1", version),
        )
        assert cur.rowcount == 1
        row = conn.execute(
            "SELECT seq, hash FROM hist WHERE key = ? ORDER BY seq DESC LIMIT 1", ("T-1",)
        ).fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else (1, "0" * 64)
        details = json.dumps({"warnings": [], "overrides": []}, sort_keys=True)
        digest = hashlib.sha256(f"{prev}{seq}{state}{dest}{details}".encode()).hexdigest()
        conn.execute(
            "INSERT INTO hist (key, seq, kind, trig, src, dst, details, prev, hash) "
            "VALUES (?, ?, 'transition', 'go', ?, ?, ?, ?, ?)",
            ("T-1", seq, state, dest, details, prev, digest),
        )
        conn.execute("COMMIT")

    return fire, conn


def main() -> None:
    """Run every measurement and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds per ratio")
    args = parser.parse_args()
    secs, rounds = args.seconds, max(1, args.rounds)

    print(f"rules back ends available: {', '.join(available_backends())}")
    print(f"(medians of {rounds} interleaved rounds, {secs:g} s per side)")
    print("\n[in memory] guarded fires per second")
    raw_fire = raw_transitions()
    for backend in available_backends():
        fire, engine = crmflow_fire("memory://", backend)
        raw, ours, ratio = compare(raw_fire, fire, secs, rounds)
        engine.close()
        print(f"  raw transitions                     {raw:>10,.0f}/s")
        print(
            f"  crmflow memory, {backend:<8} rules      {ours:>10,.0f}/s   ratio {ratio:.3f}"
            f"   (target >= 0.200)"
        )

    print("\n[persisted] fires per second on an SQLite file (WAL, synchronous FULL)")
    with tempfile.TemporaryDirectory() as tmp:
        raw_fire, conn = raw_sqlite(Path(tmp) / "raw.db")
        for backend in available_backends():
            fire, engine = crmflow_fire(f"sqlite:///{tmp}/crm-{backend}.db", backend)
            raw, ours, ratio = compare(raw_fire, fire, secs, rounds)
            engine.close()
            print(f"  raw sqlite3, same reads and writes  {raw:>10,.0f}/s")
            print(
                f"  crmflow sqlite, {backend:<8} rules      {ours:>10,.0f}/s   ratio "
                f"{ratio:.3f}   (target >= 0.333)"
            )
        conn.close()


if __name__ == "__main__":
    main()
