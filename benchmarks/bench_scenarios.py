"""Scenario steps per second: ``simulate()`` against the same engine calls made directly.

The shipped scenarios (``workflows/scenarios/*.yaml``) are run three ways, interleaved round
by round in one process:

1. **Direct** (the baseline): for each scenario, a fresh engine with a ``VirtualClock`` and the
   memory store, and each step's action called on it through the Python API (``start``,
   ``fire``, ``tick``, ``complete_task`` ...), after moving the clock to the step's time and
   handing the step's host facts to a ``crmflow_provide_facts`` plugin. No expectation is
   checked, no timeline is written. The scenario files are loaded once, beforehand.
2. **Run only**: ``run_scenario()`` on the same loaded files: the same engine calls, plus what
   the scenario layer adds (reading the outbox and history around every step, checking the
   expectations, the timeline, coverage).
3. **Load + run**: ``simulate()`` on the directory, which also finds, reads and checks the
   scenario files and the workflows they name, as ``crmflow simulate`` does.

A pass is every scenario of every file; steps per second count every step of a pass. Before
timing, every scenario must pass, and the direct run must leave the same instances, history,
tasks, notifications and pending timers as ``run_scenario()``. All three ways build their
engines with the same arguments and ``load_entry_points=False``, through a subclass that times
its construction and ``close()``: the second table is the same passes less that time (the
steps alone, and what the way does around them).

Run: ``python benchmarks/bench_scenarios.py [--seconds 2] [--rounds 5]`` (about 45 s with the
defaults; ``--scenarios DIR`` for other scenario files). Ratios matter,
not absolute numbers: these machines are noisy, so every side of each ratio runs in the same
process, interleaved.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crmflow.engine._simulate as simulate_module
from crmflow import CrmflowError, Engine, VirtualClock, hookimpl
from crmflow.engine._scenario import Scenario, ScenarioFile, Step
from crmflow.engine._simulate import load_scenarios, run_scenario, simulate

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
SCENARIOS = WORKFLOWS / "scenarios"


# ---------------------------------------------------------------------------------------------
# The direct baseline
# ---------------------------------------------------------------------------------------------


class HostFacts:
    """The host's facts, as a host application supplies them: one ``provide_facts`` plugin."""

    def __init__(self) -> None:
        self.current: Mapping[str, Mapping[str, Any]] = {}

    @hookimpl
    def crmflow_provide_facts(
        self,
        namespace: str,
        instance_key: str,
        workflow: str,
        data: Mapping[str, Any],
        needed: Sequence[str],
    ) -> Mapping[str, Any] | None:
        """The current facts of ``namespace`` (``None`` when there are none)."""
        found = self.current.get(namespace)
        return dict(found) if found is not None else None


def _start(engine: Engine, step: Step, workflow: str) -> None:
    a = step.args
    assert step.actor is not None and step.key is not None
    engine.start(
        workflow, step.key, actor=step.actor, data=a.get("data") or {}, owner=a.get("owner")
    )


def _fire(engine: Engine, step: Step, workflow: str) -> None:
    a = step.args
    assert step.actor is not None
    engine.fire(
        step.key or "",
        a["trigger"],
        actor=step.actor,
        data=a.get("data") or None,
        facts=a.get("facts") or None,
        override=a.get("override"),
        idempotency_key=a.get("idempotency_key"),
    )


def _reassign(engine: Engine, step: Step, workflow: str) -> None:
    a = step.args
    assert step.actor is not None
    engine.reassign(
        step.key or "",
        a["to"],
        actor=step.actor,
        keep=set(a.get("keep") or ()),
        reason=a.get("reason", ""),
        facts=a.get("facts") or None,
    )


def _tick(engine: Engine, step: Step, workflow: str) -> None:
    engine.tick()


def _record_cost(engine: Engine, step: Step, workflow: str) -> None:
    a = step.args
    assert step.actor is not None
    engine.record_cost(
        step.key or "", a["category"], a["amount"], actor=step.actor, note=a.get("note", "")
    )


def _complete_task(engine: Engine, step: Step, workflow: str) -> None:
    a = step.args
    assert step.actor is not None
    engine.complete_task(
        step.key or "", a["task"], actor=step.actor, result=a.get("result"), note=a.get("note", "")
    )


def _defer_task(engine: Engine, step: Step, workflow: str) -> None:
    a = step.args
    assert step.actor is not None
    engine.defer_task(
        step.key or "", a["task"], actor=step.actor, reason=a.get("reason", ""), due=a.get("due")
    )


def _reopen_task(engine: Engine, step: Step, workflow: str) -> None:
    a = step.args
    assert step.actor is not None
    engine.reopen_task(step.key or "", a["task"], actor=step.actor, note=a.get("note", ""))


def _reassign_task(engine: Engine, step: Step, workflow: str) -> None:
    a = step.args
    assert step.actor is not None
    engine.reassign_task(
        step.key or "", a["task"], to=a["to"], actor=step.actor, note=a.get("note", "")
    )


def _nothing(engine: Engine, step: Step, workflow: str) -> None:
    """``facts``, ``wait`` and ``check`` steps: the clock and the facts are all they change."""


#: The engine call of each step action.
CALLS: dict[str, Callable[[Engine, Step, str], None]] = {
    "start": _start,
    "fire": _fire,
    "reassign": _reassign,
    "tick": _tick,
    "record_cost": _record_cost,
    "complete_task": _complete_task,
    "defer_task": _defer_task,
    "reopen_task": _reopen_task,
    "reassign_task": _reassign_task,
    "facts": _nothing,
    "wait": _nothing,
    "check": _nothing,
}


class TimedEngine(Engine):
    """An engine that adds the seconds its construction and ``close()`` take to ``setup``.

    Both ways build their engines with it (``run_scenario()`` through :func:`runner_engine`),
    so the time of the steps alone is a pass's time less its ``setup``.
    """

    setup = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().__init__(*args, **kwargs)
        TimedEngine.setup += time.perf_counter() - start

    def close(self) -> None:
        """Close, and count the time."""
        start = time.perf_counter()
        super().close()
        TimedEngine.setup += time.perf_counter() - start


def direct_engine(file: ScenarioFile, scenario: Scenario) -> tuple[Engine, VirtualClock, HostFacts]:
    """A fresh engine as ``run_scenario()`` builds one: memory store, virtual clock, org."""
    clock = VirtualClock(scenario.start)
    facts = HostFacts()
    engine = TimedEngine(
        file.definitions,
        store="memory://",
        clock=clock,
        org=file.org,
        calendar=file.calendar_path,
        plugins=[facts],
        load_entry_points=False,
    )
    return engine, clock, facts


def play_direct(engine: Engine, clock: VirtualClock, facts: HostFacts, scenario: Scenario) -> int:
    """Make each step's engine call; return the number of steps.

    Refusals come back as results; a step that expects an error raises one, which is caught.
    """
    for step in scenario.steps:
        if step.at > clock.now():
            clock.set(step.at)
        facts.current = step.facts
        try:
            CALLS[step.action](engine, step, scenario.workflow)
        except CrmflowError:
            if not step.expects_error:
                raise
    return len(scenario.steps)


def run_direct(files: Sequence[ScenarioFile]) -> int:
    """One pass of every scenario through the API; return the number of steps."""
    steps = 0
    for file in files:
        for scenario in file.scenarios:
            engine, clock, facts = direct_engine(file, scenario)
            try:
                steps += play_direct(engine, clock, facts, scenario)
            finally:
                engine.close()
    return steps


# ---------------------------------------------------------------------------------------------
# The scenario layer
# ---------------------------------------------------------------------------------------------


def run_loaded(files: Sequence[ScenarioFile]) -> int:
    """One pass of every scenario through ``run_scenario()``; return the number of steps."""
    steps = 0
    for file in files:
        for scenario in file.scenarios:
            result = run_scenario(file, scenario, load_entry_points=False)
            assert result.passed, result.failure_message()
            steps += len(result.steps)
    return steps


def load_and_run(path: Path = SCENARIOS) -> int:
    """One pass of ``simulate()`` on ``path``: load and run; return the number of steps."""
    report = simulate([path], load_entry_points=False)
    assert report.ok, [r.failure_message() for r in report.results if not r.passed]
    return sum(len(r.steps) for r in report.results)


def load_files(path: Path = SCENARIOS) -> list[ScenarioFile]:
    """Every scenario file under ``path``, loaded and checked."""
    files, errors = load_scenarios([path])
    assert not errors, [e.render() for e in errors]
    assert files, f"no scenario files under {path}"
    return files


# ---------------------------------------------------------------------------------------------
# Same calls, same outcome
# ---------------------------------------------------------------------------------------------

#: What a scenario leaves behind: per instance its state, owner, history and tasks; the
#: notifications; the pending timers (record ids are left out: they differ between runs).
Snapshot = dict[str, Any]


def snapshot(engine: Engine) -> Snapshot:
    """The instances, history, tasks, notifications and pending timers ``engine`` holds."""
    out: Snapshot = {}
    for instance in sorted(engine.instances(), key=lambda i: i.key):
        history = [
            (h.kind, h.trigger, h.actor, h.from_state, h.to_state)
            for h in engine.history(instance.key)
        ]
        tasks = sorted((t.id, t.status) for t in engine.tasks(instance.key))
        out[instance.key] = (instance.state, instance.owner, history, tasks)
    out["notifications"] = sorted(
        (n.recipient, n.channel, n.subject, n.status) for n in engine.notifications()
    )
    out["timers"] = sorted((t.instance_key or "", t.name, t.due_at) for t in engine.timers())
    return out


@contextmanager
def runner_engine(cls: type[Engine]) -> Iterator[None]:
    """Make ``run_scenario()`` build its engines with ``cls`` (an :class:`Engine` subclass)."""
    names = vars(simulate_module)
    original = names["Engine"]
    names["Engine"] = cls
    try:
        yield
    finally:
        names["Engine"] = original


def recording_runner(into: list[Snapshot]) -> AbstractContextManager[None]:
    """Make ``run_scenario()`` build engines that snapshot themselves into ``into`` on close."""

    class Recording(Engine):
        def close(self) -> None:
            into.append(snapshot(self))
            super().close()

    return runner_engine(Recording)


def verify(files: Sequence[ScenarioFile]) -> int:
    """Check that every scenario passes and the direct run matches it; return steps a pass.

    Raises:
        AssertionError: a scenario failed, or the direct calls left a different outcome.

    """
    via_scenarios: list[Snapshot] = []
    with recording_runner(via_scenarios):
        steps = run_loaded(files)
    direct: list[Snapshot] = []
    for file in files:
        for scenario in file.scenarios:
            engine, clock, facts = direct_engine(file, scenario)
            try:
                play_direct(engine, clock, facts, scenario)
                direct.append(snapshot(engine))
            finally:
                engine.close()
    names = [s.name for f in files for s in f.scenarios]
    assert len(via_scenarios) == len(direct) == len(names)
    for name, ours, theirs in zip(names, direct, via_scenarios, strict=True):
        assert ours == theirs, f"scenario {name!r}: the direct calls left a different outcome"
    assert steps == sum(len(s.steps) for f in files for s in f.scenarios)
    return steps


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


@dataclass
class Way:
    """One way of running the pass, and its timings: one median per round.

    ``total`` is seconds a pass, ``setup`` the part of it spent building and closing engines,
    ``alone`` the rest (the steps and what the way does around them).
    """

    label: str
    run: Callable[[], Any]
    total: list[float] = field(default_factory=list)
    setup: list[float] = field(default_factory=list)
    alone: list[float] = field(default_factory=list)

    def time(self, seconds: float) -> None:
        """Time passes for about ``seconds`` (at least 3); keep the medians of this round."""
        totals: list[float] = []
        setups: list[float] = []
        clock = time.perf_counter
        deadline = clock() + seconds
        while len(totals) < 3 or clock() < deadline:
            TimedEngine.setup = 0.0
            start = clock()
            self.run()
            totals.append(clock() - start)
            setups.append(TimedEngine.setup)
        self.total.append(statistics.median(totals))
        self.setup.append(statistics.median(setups))
        self.alone.append(statistics.median(t - s for t, s in zip(totals, setups, strict=True)))


@dataclass
class Timings:
    """What :func:`measure` found: the ways, and seconds per load of the files alone."""

    steps: int
    scenarios: int
    direct: Way
    run_only: Way
    load_and_run: Way
    load: Way


def measure(files: Sequence[ScenarioFile], seconds: float, rounds: int) -> Timings:
    """Verify, warm up, then time the ways interleaved, ``rounds`` times, ``seconds`` each."""
    steps = verify(files)
    path = Path(files[0].source).parent
    timings = Timings(
        steps,
        sum(len(f.scenarios) for f in files),
        direct=Way("direct engine calls (baseline)", lambda: run_direct(files)),
        run_only=Way("run_scenario(), files loaded: run only", lambda: run_loaded(files)),
        load_and_run=Way("simulate(): load + run", lambda: load_and_run(path)),
        load=Way("loading the files alone", lambda: load_files(path)),
    )
    ways = [timings.direct, timings.run_only, timings.load_and_run, timings.load]
    with runner_engine(TimedEngine):
        for way in ways:
            way.run()  # warm up
        for _ in range(rounds):
            for way in ways:
                way.time(seconds)
    return timings


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> str:
    """Median and range of per-round rates."""
    span = f"({min(values):,.0f}-{max(values):,.0f})"
    return f"{statistics.median(values):>8,.0f}/s {span:<15}"


def table(steps: int, rows: Sequence[tuple[str, Sequence[float]]]) -> list[str]:
    """Steps per second (median, range), µs a step and the ratio to the first row."""
    lines = [f"  {'':<42} {'steps/s':>10} {'(min-max)':<15} {'µs/step':>8}  ratio"]
    base = 0.0
    for label, seconds in rows:
        rates = [steps / s for s in seconds]
        median = statistics.median(rates)
        base = base or median
        lines.append(f"  {label:<42} {spread(rates)} {1e6 / median:>8,.0f}  {median / base:.3f}")
    return lines


def report(t: Timings) -> list[str]:
    """The tables: with the engines' setup (a whole pass) and without it (the steps alone)."""
    setup_ms = statistics.median(t.direct.setup) * 1e3
    load_ms = statistics.median(t.load.total) * 1e3
    return [
        f"{t.scenarios} scenarios, {t.steps} steps a pass, memory store; "
        f"median of {len(t.direct.total)} rounds (min-max)",
        "",
        f"[whole pass] a fresh engine per scenario ({setup_ms:,.1f} ms of a direct pass)",
        *table(t.steps, [(w.label, w.total) for w in (t.direct, t.run_only, t.load_and_run)]),
        "",
        "[steps alone] the same passes less building and closing the engines",
        *table(t.steps, [(w.label, w.alone) for w in (t.direct, t.run_only)]),
        "",
        f"  {t.load.label}: {load_ms:,.1f} ms a pass ({load_ms * 1e3 / t.steps:,.0f} µs a step)",
    ]


def main() -> None:
    """Verify, measure and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="time per way and round (default 2)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument(
        "--scenarios", type=Path, default=SCENARIOS, help="directory of scenario files"
    )
    args = parser.parse_args()
    print(f"Python {platform.python_version()}, {platform.machine()}; scenarios: {args.scenarios}")
    files = load_files(args.scenarios)
    print("\n".join(report(measure(files, args.seconds, args.rounds))))


if __name__ == "__main__":
    main()
