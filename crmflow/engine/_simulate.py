"""Running scenarios: each on a fresh engine and a virtual clock, checked step by step.

:func:`run_scenario` plays one :class:`~crmflow.engine._scenario.Scenario` and returns a
:class:`ScenarioResult`: the timeline (time, actor, action, result, notifications), every
expectation that did not hold (expected against actual, with the line it was written on) and
which transitions and rule refusals it exercised. :func:`simulate` loads and runs many files
and adds up a :class:`Coverage` per workflow. ``crmflow simulate`` and the pytest plugin
(:mod:`crmflow.testing`) are thin layers over these two functions.

A step is expected to succeed unless its ``expect`` says otherwise (``ok: false``,
``refused: true``, ``refused_by``, ``error``): a refusal or an error nobody expected fails the
scenario at that step. The scenario stops at its first failing step, because later steps
would only report the consequences.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import Any

import crmflow._errors as errors_module
from crmflow._clock import VirtualClock
from crmflow._errors import CrmflowError, DefinitionError
from crmflow._junit import JUnitCase, JUnitSuite
from crmflow._task_types import TaskOutcome
from crmflow._types import FireResult, Refusal
from crmflow.engine._model import SourcePos, WorkflowDef
from crmflow.engine._runtime import Engine
from crmflow.engine._scenario import (
    Expectation,
    Scenario,
    ScenarioFile,
    Step,
    collect_scenario_errors,
    load_scenario_file,
    scenario_files,
)
from crmflow.plugins import HistoryRecord
from crmflow.plugins._storage_api import OutboxRecord
from crmflow.plugins.hookspecs import hookimpl

__all__ = [
    "Coverage",
    "Mismatch",
    "ScenarioResult",
    "SimulationReport",
    "StepReport",
    "TimelineEntry",
    "WorkflowCoverage",
    "exercised",
    "junit_suites",
    "load_scenarios",
    "run_scenario",
    "simulate",
    "transition_groups",
]


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    """An expectation that did not hold: what was expected, what happened, where it was written.

    ``what`` is the expectation's key path under ``expect`` (``state``,
    ``history.last.actor``), or ``ok`` for a step that was refused or raised unexpectedly.
    """

    what: str
    expected: str
    actual: str
    pos: SourcePos

    def render(self) -> str:
        """``file:line:column: expect.state: expected 'approved', got 'draft'``."""
        where = self.pos.source
        if self.pos.line:
            where += f":{self.pos.line}:{self.pos.column}"
        label = "step" if self.what == "ok" else f"expect.{self.what}"
        return f"{where}: {label}: expected {self.expected}, got {self.actual}"


@dataclass
class TimelineEntry:
    """One line of a scenario's timeline, with indented details (notifications, reasons)."""

    at: datetime
    actor: str
    text: str
    details: list[str] = field(default_factory=list)


@dataclass
class StepReport:
    """What one step did and which of its expectations failed."""

    step: Step
    entries: list[TimelineEntry] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every expectation of the step held."""
        return not self.mismatches


@dataclass
class ScenarioResult:
    """The outcome of one scenario.

    Attributes:
        file: the scenario file it came from.
        scenario: the scenario.
        steps: the reports of the steps that ran (it stops after the first failing one).
        duration: seconds taken.
        error: a problem that kept it from running at all (building the engine).
        transitions: exercised transition ids by workflow source (see :class:`Coverage`).
        refusals: rules that refused (or warned) by workflow source.

    """

    file: ScenarioFile
    scenario: Scenario
    steps: list[StepReport] = field(default_factory=list)
    duration: float = 0.0
    error: str = ""
    transitions: dict[str, set[str]] = field(default_factory=dict)
    refusals: dict[str, set[str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether every step ran and every expectation held."""
        return not self.error and all(s.passed for s in self.steps)

    @property
    def failed_step(self) -> StepReport | None:
        """The step that failed, if any."""
        return next((s for s in self.steps if not s.passed), None)

    @property
    def location(self) -> str:
        """``file:line`` of the scenario."""
        return f"{self.scenario.source}:{self.scenario.pos.line}"

    def failure_message(self) -> str:
        """Why it failed: each unmet expectation as expected against actual, with its line."""
        if self.error:
            return f"{self.location}: scenario {self.scenario.name!r} could not run: {self.error}"
        failed = self.failed_step
        if failed is None:
            return ""
        step = failed.step
        head = (
            f"scenario {self.scenario.name!r} failed at step {step.number} "
            f"({step.label()}, line {step.pos.line})"
        )
        return "\n".join([head, *(m.render() for m in failed.mismatches)])

    def timeline(self) -> str:
        """The readable account: a line per action, indented details, then the verdict."""
        tz = self.scenario.timezone
        lines = [f"{self.scenario.workflow}: {self.scenario.name}  [{self.location}]"]
        for report in self.steps:
            for entry in report.entries:
                stamp = entry.at.astimezone(tz).strftime("%a %Y-%m-%d %H:%M")
                lines.append(f"  {stamp}  {entry.actor:<8} {entry.text}")
                lines.extend(f"  {'':<20}  {'':<8}   {d}" for d in entry.details)
            for mismatch in report.mismatches:
                lines.append(f"  FAILED {mismatch.render()}")
        if self.error:
            lines.append(f"  ERROR {self.error}")
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"  {verdict} ({len(self.steps)} steps, {self.duration:.2f} s)")
        return "\n".join(lines)


# -- coverage ---------------------------------------------------------------------------------


def transition_groups(defn: WorkflowDef) -> dict[str, str]:
    """Each transition as written (one ``transitions:`` entry), by id, with a label.

    The loader splits an entry without ``to`` into one copy per source state; the copies
    share the entry's position, which is its id here.
    """
    groups: dict[str, list[Any]] = {}
    for t in defn.transitions:
        groups.setdefault(f"{t.pos.line}:{t.pos.column}", []).append(t)
    labels = {}
    for tid, copies in groups.items():
        first = copies[0]
        sources = [t.origin or s for t in copies for s in t.sources]
        dest = "(stays)" if first.internal else first.dest
        labels[tid] = f"{first.trigger} ({', '.join(dict.fromkeys(sources))} -> {dest})"
    return labels


def _transition_id(defn: WorkflowDef, trigger: str, from_state: str) -> str | None:
    if from_state not in defn.states:
        return None
    for t in defn.transitions_from(from_state):
        if t.trigger == trigger:
            return f"{t.pos.line}:{t.pos.column}"
    return None


def exercised(defn: WorkflowDef, history: Iterable[HistoryRecord]) -> tuple[set[str], set[str]]:
    """Transition ids taken and rules that refused (or warned) in ``history``."""
    transitions: set[str] = set()
    rules: set[str] = set()
    for entry in history:
        if entry.kind in ("transition", "override") and entry.trigger:
            tid = _transition_id(defn, entry.trigger, entry.from_state)
            if tid is not None:
                transitions.add(tid)
        details = entry.details or {}
        if entry.kind == "refused":
            rules.update(r.get("rule", "") for r in details.get("refusals", ()))
        rules.update(w.get("rule", "") for w in details.get("warnings", ()) or ())
    return transitions, rules & set(defn.rules)


@dataclass
class WorkflowCoverage:
    """What the scenarios exercised of one workflow."""

    workflow: WorkflowDef
    transitions: dict[str, str]
    hit_transitions: set[str] = field(default_factory=set)
    hit_rules: set[str] = field(default_factory=set)
    scenarios: int = 0

    @property
    def rules(self) -> list[str]:
        """Every rule of the workflow (``warn`` rules count when they warned)."""
        return list(self.workflow.rules)

    @property
    def missing(self) -> list[str]:
        """What no scenario exercised, as readable items."""
        out = [
            f"transition {label}"
            for tid, label in self.transitions.items()
            if tid not in self.hit_transitions
        ]
        out.extend(
            f"{'warning' if self.workflow.rules[r].effect == 'warn' else 'refusal'} by rule {r}"
            for r in self.rules
            if r not in self.hit_rules
        )
        return out

    @property
    def complete(self) -> bool:
        """Whether every transition and every rule's refusal was exercised."""
        return not self.missing

    def line(self) -> str:
        """``sales_order: 7/7 transitions, 2/2 rule refusals (4 scenarios): complete``."""
        t_hit = len(self.hit_transitions & set(self.transitions))
        r_hit = len(self.hit_rules & set(self.rules))
        verdict = "complete" if self.complete else f"{len(self.missing)} missing"
        return (
            f"{self.workflow.name}: {t_hit}/{len(self.transitions)} transitions, "
            f"{r_hit}/{len(self.rules)} rule refusals ({self.scenarios} scenarios): {verdict}"
        )


@dataclass
class Coverage:
    """Coverage per workflow (by source file), over every scenario run."""

    workflows: dict[str, WorkflowCoverage] = field(default_factory=dict)

    def include(self, definitions: Iterable[WorkflowDef]) -> None:
        """Count these workflows (the newest version of each), exercised or not."""
        newest: dict[str, WorkflowDef] = {}
        for defn in definitions:
            if defn.name not in newest or defn.version > newest[defn.name].version:
                newest[defn.name] = defn
        for defn in newest.values():
            if defn.source not in self.workflows:
                self.workflows[defn.source] = WorkflowCoverage(defn, transition_groups(defn))

    def add(self, result: ScenarioResult) -> None:
        """Add what one scenario exercised."""
        self.include(result.file.definitions)
        own = result.file.definition.source
        if own in self.workflows:
            self.workflows[own].scenarios += 1
        for source, hits in result.transitions.items():
            if source in self.workflows:
                self.workflows[source].hit_transitions |= hits
        for source, hits in result.refusals.items():
            if source in self.workflows:
                self.workflows[source].hit_rules |= hits

    @property
    def complete(self) -> bool:
        """Whether every counted workflow is complete."""
        return all(w.complete for w in self.workflows.values())

    def render(self) -> str:
        """One line per workflow, then what is missing, indented."""
        lines = []
        for cov in sorted(
            self.workflows.values(), key=lambda w: (w.workflow.name, w.workflow.source)
        ):
            lines.append(cov.line())
            lines.extend(f"    missing: {item}" for item in cov.missing)
        return "\n".join(lines)


# -- running ----------------------------------------------------------------------------------


class _ScenarioFacts:
    """The host's facts as the scenario says they are at the current step.

    Registered as a plugin, so timers that fire triggers with rules reading host facts see the
    same facts as the steps do.
    """

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
        """The scenario's facts of ``namespace`` (``None`` when it gives none)."""
        found = self.current.get(namespace)
        return dict(found) if found is not None else None


@dataclass
class _Outcome:
    """What an action returned, in one shape for every kind of action."""

    ok: bool = True
    text: str = ""
    refusals: tuple[Refusal, ...] = ()
    warnings: tuple[Refusal, ...] = ()
    effects: Mapping[str, Any] | None = None
    error: CrmflowError | None = None


def run_scenario(
    file: ScenarioFile,
    scenario: Scenario,
    *,
    store: str = "memory://",
    rules_backend: str = "auto",
    plugins: Sequence[object] = (),
    load_entry_points: bool = True,
) -> ScenarioResult:
    """Play ``scenario`` on a fresh engine with a virtual clock; never raises for a failure.

    ``store`` defaults to a new in-memory store. With a shared store (an SQLite file) the
    scenario's keys must not exist there yet, and its pending timers are cancelled when it
    ends so that a later scenario's ticks do not fire them.
    """
    began = time.perf_counter()
    result = ScenarioResult(file=file, scenario=scenario)
    clock = VirtualClock(scenario.start)
    facts = _ScenarioFacts()
    try:
        engine = Engine(
            file.definitions,
            store=store,
            clock=clock,
            org=file.org,
            calendar=file.calendar_path,
            plugins=[*plugins, facts],
            rules_backend=rules_backend,
            load_entry_points=load_entry_points,
        )
    except CrmflowError as exc:
        result.error = exc.render() if isinstance(exc, DefinitionError) else str(exc)
        result.duration = time.perf_counter() - began
        return result
    keys: list[str] = []
    try:
        for step in scenario.steps:
            report = _run_step(
                engine, clock, facts, step, keys, scenario.timezone, scenario.workflow
            )
            result.steps.append(report)
            if not report.passed:
                break
        _record_coverage(engine, keys, result)
    finally:
        if not store.startswith("memory"):
            for key in keys:
                for timer in engine.timers(key=key):
                    engine.cancel_timer(timer.id)
        engine.close()
    result.duration = time.perf_counter() - began
    return result


def _history(engine: Engine, key: str) -> list[HistoryRecord]:
    """The instance's history, empty when it does not exist (its start failed)."""
    try:
        return engine.history(key)
    except CrmflowError:
        return []


def _record_coverage(engine: Engine, keys: Sequence[str], result: ScenarioResult) -> None:
    for key in keys:
        try:
            instance = engine.get(key)
        except CrmflowError:
            continue
        defn = engine.definition(instance.workflow, instance.workflow_version)
        transitions, rules = exercised(defn, engine.history(key))
        result.transitions.setdefault(defn.source, set()).update(transitions)
        result.refusals.setdefault(defn.source, set()).update(rules)


def _run_step(
    engine: Engine,
    clock: VirtualClock,
    facts: _ScenarioFacts,
    step: Step,
    keys: list[str],
    tz: tzinfo,
    workflow: str,
) -> StepReport:
    report = StepReport(step)
    if step.at > clock.now():
        clock.set(step.at)
    facts.current = step.facts
    outbox_before = {n.id for n in engine.notifications()}
    history_before = {k: len(_history(engine, k)) for k in keys}
    outcome = _Outcome()
    try:
        outcome = _act(engine, step, keys, workflow)
    except CrmflowError as exc:
        outcome = _Outcome(ok=False, error=exc, text=f"ERROR {type(exc).__name__}: {exc}")
    new_notes = [n for n in engine.notifications() if n.id not in outbox_before]
    new_history = {k: _history(engine, k)[history_before.get(k, 0) :] for k in keys}
    report.entries = _timeline(step, outcome, new_notes, new_history)
    context = _Context(engine, step, outcome, new_notes, new_history, tz)
    report.mismatches = context.check()
    return report


def _act(engine: Engine, step: Step, keys: list[str], workflow: str) -> _Outcome:
    a = step.args
    actor = step.actor
    key = step.key or ""
    if step.action == "start":
        assert actor is not None
        keys.append(key)
        instance = engine.start(
            workflow,
            key,
            actor=actor,
            data=a.get("data") or {},
            owner=a.get("owner"),
        )
        return _Outcome(text=f"start {key}: {instance.state} (owner {instance.owner})")
    if step.action == "fire":
        assert actor is not None
        fired = engine.fire(
            key,
            a["trigger"],
            actor=actor,
            data=a.get("data") or None,
            facts=a.get("facts") or None,
            override=a.get("override"),
            idempotency_key=a.get("idempotency_key"),
        )
        return _from_fire(fired, a["trigger"])
    if step.action == "reassign":
        assert actor is not None
        moved = engine.reassign(
            key,
            a["to"],
            actor=actor,
            keep=set(a.get("keep") or ()),
            reason=a.get("reason", ""),
            facts=a.get("facts") or None,
        )
        outcome = _from_fire(moved, "reassign")
        if moved.ok:
            old, new = moved.effects.get("owner_changed") or ["?", a["to"]]
            outcome.text = f"reassign {key}: owner {old} -> {new}"
            tasks = moved.effects.get("tasks_moved")
            if tasks:
                outcome.text += f", tasks moved: {', '.join(tasks)}"
        else:
            outcome.text = outcome.text.replace("reassign", f"reassign to {a['to']}", 1)
        return outcome
    if step.action == "tick":
        tick = engine.tick()
        return _Outcome(ok=tick.failed == 0, text=f"tick: {_tick_text(tick)}")
    if step.action == "record_cost":
        assert actor is not None
        entry = engine.record_cost(
            key, a["category"], a["amount"], actor=actor, note=a.get("note", "")
        )
        return _Outcome(text=f"record_cost {key}: {entry.category} {entry.amount}")
    if step.action in ("complete_task", "defer_task", "reopen_task", "reassign_task"):
        assert actor is not None
        return _from_task(_task_op(engine, step, key))
    if step.action == "facts":
        changed = ", ".join(
            f"{ns}.{attr} = {_show(value)}"
            for ns, attrs in step.args.get("changed", {}).items()
            for attr, value in attrs.items()
        )
        return _Outcome(text=f"facts: {changed or 'unchanged'}")
    if step.action == "wait":
        return _Outcome(text="(time passes)")
    return _Outcome(text="check")


def _task_op(engine: Engine, step: Step, key: str) -> TaskOutcome:
    a = step.args
    actor = step.actor
    assert actor is not None
    if step.action == "complete_task":
        return engine.complete_task(
            key, a["task"], actor=actor, result=a.get("result"), note=a.get("note", "")
        )
    if step.action == "defer_task":
        return engine.defer_task(
            key, a["task"], actor=actor, reason=a.get("reason", ""), due=a.get("due")
        )
    if step.action == "reopen_task":
        return engine.reopen_task(key, a["task"], actor=actor, note=a.get("note", ""))
    return engine.reassign_task(key, a["task"], to=a["to"], actor=actor, note=a.get("note", ""))


def _tick_text(tick: Any) -> str:
    parts = []
    for name in ("fired", "refused", "skipped", "delivered", "retrying", "dead", "failed"):
        count = getattr(tick, name)
        if count:
            parts.append(f"{count} {name}")
    return ", ".join(parts) if parts else "nothing due"


def _from_fire(result: FireResult, what: str) -> _Outcome:
    if result.ok:
        moved = (
            f"{result.previous_state} -> {result.state}"
            if result.previous_state != result.state
            else f"stays {result.state}"
        )
        text = f"{what} {result.key}: {moved}"
        for o in result.overrides:
            text += f" (overrides {o.rule}: {o.reason})"
    else:
        rules = ", ".join(r.rule for r in result.refusals)
        text = f"{what} {result.key}: REFUSED by {rules}, still {result.state}"
    return _Outcome(
        ok=result.ok,
        text=text,
        refusals=result.refusals,
        warnings=result.warnings,
        effects=result.effects,
    )


def _from_task(outcome: TaskOutcome) -> _Outcome:
    if outcome.ok:
        text = f"{outcome.operation} {outcome.task_id} on {outcome.key}: {outcome.task.status}"
        if outcome.task.assignee and outcome.operation == "reassign":
            text += f" (now {outcome.task.assignee})"
    else:
        rules = ", ".join(r.rule for r in outcome.refusals)
        text = f"{outcome.operation} {outcome.task_id} on {outcome.key}: REFUSED by {rules}"
    return _Outcome(ok=outcome.ok, text=text, refusals=outcome.refusals)


# -- the timeline -----------------------------------------------------------------------------


#: The actor column of steps nobody in the org takes.
_NO_ACTOR = {"tick": "clock", "wait": "clock", "facts": "host"}


def _note_line(note: OutboxRecord) -> str:
    via = f" (for {note.intended})" if note.intended and note.intended != note.recipient else ""
    return f"-> {note.recipient}{via} [{note.channel}]: {note.subject}"


def _timeline(
    step: Step,
    outcome: _Outcome,
    notes: Sequence[OutboxRecord],
    history: Mapping[str, Sequence[HistoryRecord]],
) -> list[TimelineEntry]:
    who = step.actor.id if step.actor is not None else _NO_ACTOR.get(step.action, "")
    main = TimelineEntry(step.at, who, outcome.text or step.label())
    if step.note:
        main.details.append(f"# {step.note}")
    entries = [main]
    for refusal in outcome.refusals:
        main.details.append(f"{refusal.rule}: {refusal.message}")
        if refusal.hint:
            main.details.append(f"  hint: {refusal.hint}")
    main.details.extend(f"warning {w.rule}: {w.message}" for w in outcome.warnings)
    if step.action == "tick":
        for key, entries_of_key in history.items():
            for h in entries_of_key:
                if not h.actor.startswith("timer:"):
                    continue
                if h.kind == "timer":
                    what = f"{h.actor} on {key}"
                elif h.kind == "refused":
                    what = f"{h.actor} on {key}: {h.trigger} REFUSED: {h.reason}"
                else:
                    what = f"{h.actor} on {key}: {h.trigger}, {h.from_state} -> {h.to_state}"
                main.details.append(what)
    main.details.extend(_note_line(n) for n in notes)
    return entries


# -- checking ---------------------------------------------------------------------------------


def _show(value: Any, tz: tzinfo | None = None) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return (value.astimezone(tz) if tz is not None else value).isoformat()
    if isinstance(value, date | Decimal | int | float):
        return str(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_show(v, tz)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return "[" + ", ".join(_show(v, tz) for v in items) + "]"
    return repr(value)


def _same(expected: Any, actual: Any) -> bool:
    """Typed equality: decimals by value, datetimes by instant, dates as dates."""
    if isinstance(expected, Decimal) and isinstance(actual, Decimal | int):
        return expected == actual
    if isinstance(expected, datetime) and isinstance(actual, datetime):
        return expected == actual
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    return bool(expected == actual)


def _names(value: Any) -> list[str]:
    """An effect's value as names: timers by name, tasks by id, notifications by recipient."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [str(k) for k in value]
    if isinstance(value, list | tuple):
        out = []
        for item in value:
            if isinstance(item, Mapping):
                out.append(str(item.get("name") or item.get("id") or item.get("to") or item))
            else:
                out.append(str(item))
        return out
    return [str(value)]


class _Context:
    """Checks a step's expectations against the engine after the step."""

    def __init__(
        self,
        engine: Engine,
        step: Step,
        outcome: _Outcome,
        notes: Sequence[OutboxRecord],
        history: Mapping[str, Sequence[HistoryRecord]],
        tz: tzinfo,
    ) -> None:
        self.engine = engine
        self.step = step
        self.outcome = outcome
        self.notes = notes
        self.history = history
        self.tz = tz
        self.key = next((e.value for e in step.expect if e.name == "key"), step.key)
        self.found: list[Mismatch] = []

    def miss(self, e: Expectation, what: str, expected: Any, actual: Any) -> None:
        self.found.append(Mismatch(what, expected, actual, e.pos))

    def result_text(self) -> str:
        o = self.outcome
        if o.error is not None:
            return f"{type(o.error).__name__}: {o.error}"
        if not o.ok:
            if o.refusals:
                return "refused by " + "; ".join(f"{r.rule} ({r.message})" for r in o.refusals)
            return "failed: " + o.text
        return "success"

    def check(self) -> list[Mismatch]:
        step = self.step
        o = self.outcome
        if o.error is not None and not step.expects_error:
            # Nothing else can be judged fairly after an unexpected error.
            wanted = "a refusal" if step.expects_failure else "success"
            self.found.append(Mismatch("ok", wanted, self.result_text(), step.pos))
            return self.found
        if not step.expects_failure and not o.ok:
            self.found.append(Mismatch("ok", "success", self.result_text(), step.pos))
        for e in step.expect:
            try:
                getattr(self, f"check_{e.name}")(e)
            except CrmflowError as exc:
                self.miss(e, e.name, _show(e.value, self.tz), f"{type(exc).__name__}: {exc}")
        return self.found

    # One method per expectation key.

    def check_key(self, e: Expectation) -> None:
        """The instance later expectations are about (nothing to check)."""

    def check_ok(self, e: Expectation) -> None:
        actual = self.outcome.ok and self.outcome.error is None
        if actual != e.value:
            self.miss(e, "ok", _show(e.value), f"{_show(actual)} ({self.result_text()})")

    def check_refused(self, e: Expectation) -> None:
        actual = not self.outcome.ok and self.outcome.error is None
        if actual != e.value:
            self.miss(e, "refused", _show(e.value), f"{_show(actual)} ({self.result_text()})")

    def check_refused_by(self, e: Expectation) -> None:
        rules = [r.rule for r in self.outcome.refusals]
        missing = [r for r in e.value if r not in rules]
        if missing or self.outcome.ok:
            want = "refused by " + ", ".join(e.value)
            self.miss(e, "refused_by", want, self.result_text())

    def check_warned_by(self, e: Expectation) -> None:
        rules = [w.rule for w in self.outcome.warnings]
        if any(r not in rules for r in e.value):
            actual = "warnings from " + ", ".join(rules) if rules else "no warning"
            self.miss(e, "warned_by", "warnings from " + ", ".join(e.value), actual)

    def check_message_contains(self, e: Expectation) -> None:
        texts = [r.message for r in (*self.outcome.refusals, *self.outcome.warnings)]
        if self.outcome.error is not None:
            texts.append(str(self.outcome.error))
        if not any(e.value in t for t in texts):
            actual = " | ".join(repr(t) for t in texts) if texts else "no message"
            self.miss(e, "message_contains", f"a message containing {e.value!r}", actual)

    def check_error(self, e: Expectation) -> None:
        wanted = getattr(errors_module, e.value)
        err = self.outcome.error
        if not isinstance(err, wanted):
            self.miss(e, "error", e.value, self.result_text())

    def check_error_contains(self, e: Expectation) -> None:
        err = self.outcome.error
        if err is None or e.value not in str(err):
            self.miss(e, "error_contains", f"an error containing {e.value!r}", self.result_text())

    def check_state(self, e: Expectation) -> None:
        instance = self.engine.get(self.key or "")
        defn = self.engine.definition(instance.workflow, instance.workflow_version)
        inside = instance.state in defn.states and e.value in defn.ancestors(instance.state)
        if not inside:
            self.miss(e, "state", _show(e.value), _show(instance.state))

    def check_owner(self, e: Expectation) -> None:
        owner = self.engine.get(self.key or "").owner
        if owner != e.value:
            self.miss(e, "owner", _show(e.value), _show(owner))

    def check_data(self, e: Expectation) -> None:
        data = self.engine.get(self.key or "").data
        for name, wanted in e.value.items():
            actual = data.get(name)
            if not _same(wanted, actual):
                self.miss(e, f"data.{name}", _show(wanted, self.tz), _show(actual, self.tz))

    def check_notified(self, e: Expectation) -> None:
        unused = list(self.notes)
        for matcher in e.value:
            hit = next((n for n in unused if _matches_note(matcher, n)), None)
            if hit is None:
                sent = "; ".join(_note_line(n) for n in self.notes) or "no notification"
                self.miss(e, "notified", _show(matcher), sent)
            else:
                unused.remove(hit)

    def check_not_notified(self, e: Expectation) -> None:
        told = [n for n in self.notes if n.recipient in e.value or n.intended in e.value]
        if told:
            self.miss(
                e,
                "not_notified",
                "nothing to " + ", ".join(e.value),
                "; ".join(_note_line(n) for n in told),
            )

    def check_tasks_open(self, e: Expectation) -> None:
        actual = tuple(sorted(t.id for t in self.engine.tasks(self.key or "", status="open")))
        if actual != e.value:
            extra = sorted(set(actual) - set(e.value))
            lacking = sorted(set(e.value) - set(actual))
            diff = []
            if extra:
                diff.append("also open: " + ", ".join(extra))
            if lacking:
                diff.append("not open: " + ", ".join(lacking))
            self.miss(
                e, "tasks_open", _show(list(e.value)), f"{_show(list(actual))} ({'; '.join(diff)})"
            )

    def check_tasks(self, e: Expectation) -> None:
        tasks = {t.id: t.status for t in self.engine.tasks(self.key or "")}
        for task, status in e.value.items():
            actual = tasks.get(task, "not opened")
            if actual != status:
                self.miss(e, f"tasks.{task}", _show(status), _show(actual))

    def check_history(self, e: Expectation) -> None:
        entries = self.engine.history(self.key or "")
        spec = e.value
        if "count" in spec and len(entries) != spec["count"]:
            self.miss(e, "history.count", str(spec["count"]), str(len(entries)))
        if spec.get("last") is not None:
            last = entries[-1] if entries else None
            for k, wanted in spec["last"].items():
                actual = _entry_value(last, k) if last is not None else None
                if not _entry_matches(k, wanted, actual):
                    self.miss(e, f"history.last.{k}", _show(wanted), _show(actual))
        for matcher in spec.get("includes", ()):
            if not any(
                all(_entry_matches(k, v, _entry_value(h, k)) for k, v in matcher.items())
                for h in entries
            ):
                shown = "; ".join(
                    f"{h.kind} {h.trigger or ''} by {h.actor}".replace("  ", " ") for h in entries
                )
                self.miss(e, "history.includes", f"an entry {_show(matcher)}", shown)

    def check_effects(self, e: Expectation) -> None:
        effects = self.effects()
        for name, wanted in e.value.items():
            actual = tuple(sorted(set(_names(effects.get(name)))))
            if actual != wanted:
                self.miss(e, f"effects.{name}", _show(list(wanted)), _show(list(actual)))

    def effects(self) -> Mapping[str, Any]:
        if self.outcome.effects is not None:
            return self.outcome.effects
        merged: dict[str, Any] = {}
        for h in self.history.get(self.key or "", ()):
            for name, value in (h.details or {}).items():
                if isinstance(value, list):
                    merged.setdefault(name, []).extend(value)
            if h.changes and h.kind != "start":
                merged.setdefault("data_changed", {}).update(h.changes)
        return merged

    def check_timers(self, e: Expectation) -> None:
        pending: dict[str, list[datetime]] = {}
        for timer in self.engine.timers(key=self.key or ""):
            pending.setdefault(timer.name, []).append(timer.due_at)
        for name, wanted in e.value.items():
            dues = pending.get(name, [])
            shown = _show([d.astimezone(self.tz) for d in dues]) if dues else "not pending"
            if wanted is True and not dues:
                self.miss(e, f"timers.{name}", "pending", shown)
            elif wanted is False and dues:
                self.miss(e, f"timers.{name}", "not pending", f"pending, due {shown}")
            elif isinstance(wanted, datetime) and wanted not in dues:
                self.miss(e, f"timers.{name}", f"due {_show(wanted, self.tz)}", shown)

    def check_progress(self, e: Expectation) -> None:
        progress = self.engine.progress(self.key or "")
        for name, wanted in e.value.items():
            actual = getattr(progress, name)
            if actual != wanted:
                self.miss(e, f"progress.{name}", str(wanted), str(actual))

    def check_costs(self, e: Expectation) -> None:
        totals = self.engine.cost_totals(self.key or "")
        for name, wanted in e.value.items():
            actual = totals.get(name, Decimal(0))
            if not _same(wanted, actual):
                self.miss(e, f"costs.{name}", _show(wanted), _show(actual))


def _matches_note(matcher: Mapping[str, str], note: OutboxRecord) -> bool:
    for k, v in matcher.items():
        if k == "to" and note.recipient != v:
            return False
        if k == "intended" and (note.intended or note.recipient) != v:
            return False
        if k == "subject_contains" and v not in note.subject:
            return False
        if k == "body_contains" and v not in note.body:
            return False
        if k == "channel" and note.channel != v:
            return False
        if k == "event" and note.event != v:
            return False
    return True


def _entry_value(entry: HistoryRecord, key: str) -> Any:
    if key == "from":
        return entry.from_state
    if key == "to":
        return entry.to_state
    if key == "reason_contains":
        return entry.reason
    return getattr(entry, key)


def _entry_matches(key: str, wanted: str, actual: Any) -> bool:
    if key == "reason_contains":
        return actual is not None and wanted in str(actual)
    return bool(actual == wanted)


# -- many files -------------------------------------------------------------------------------


@dataclass
class SimulationReport:
    """Everything one :func:`simulate` call did."""

    results: list[ScenarioResult] = field(default_factory=list)
    errors: list[DefinitionError] = field(default_factory=list)
    files: list[ScenarioFile] = field(default_factory=list)
    coverage: Coverage = field(default_factory=Coverage)
    duration: float = 0.0

    @property
    def passed(self) -> int:
        """Scenarios that passed."""
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        """Scenarios that failed."""
        return len(self.results) - self.passed

    @property
    def ok(self) -> bool:
        """Whether every file loaded and every scenario passed."""
        return not self.errors and self.failed == 0

    def summary(self) -> str:
        """``simulate: 12 scenarios in 5 files: 12 passed, 0 failed (1.3 s)``."""
        broken = len({e.source for e in self.errors})
        text = (
            f"simulate: {len(self.results)} scenarios in {len(self.files) + broken} files: "
            f"{self.passed} passed, {self.failed} failed"
        )
        if self.errors:
            text += f", {len(self.errors)} errors in {broken} files"
        return text + f" ({self.duration:.1f} s)"


def load_scenarios(
    paths: Sequence[str | Path], *, workflows: str | Path | None = None
) -> tuple[list[ScenarioFile], list[DefinitionError]]:
    """Load every scenario file under ``paths``; files with errors are reported, not raised."""
    loaded: list[ScenarioFile] = []
    problems: list[DefinitionError] = []
    for path in paths:
        try:
            files = scenario_files(path)
        except DefinitionError as exc:
            problems.append(exc)
            continue
        for file in files:
            try:
                loaded.append(load_scenario_file(file, workflows=workflows))
            except DefinitionError as exc:
                # Report every mistake in the file at once, as `crmflow validate` does.
                problems.extend(collect_scenario_errors(file, workflows=workflows) or [exc])
    return loaded, problems


def simulate(
    paths: Sequence[str | Path],
    *,
    workflows: str | Path | None = None,
    store: str = "memory://",
    name_filter: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[ScenarioResult], None] | None = None,
    load_entry_points: bool = True,
) -> SimulationReport:
    """Load and run every scenario under ``paths``.

    ``workflows`` is where the workflows are for files that do not say (see
    :func:`~crmflow.engine._scenario.load_scenario_file`). ``name_filter`` keeps scenarios
    whose name contains it. ``on_start`` receives the number of scenarios about to run and
    ``on_result`` each result as it arrives (for progress and timelines).
    """
    began = time.perf_counter()
    report = SimulationReport()
    report.files, report.errors = load_scenarios(paths, workflows=workflows)
    todo = [
        (f, s)
        for f in report.files
        for s in f.scenarios
        if name_filter is None or name_filter.lower() in s.name.lower()
    ]
    for f in report.files:
        report.coverage.include(f.definitions)
    if on_start is not None:
        on_start(len(todo))
    for file, scenario in todo:
        result = run_scenario(file, scenario, store=store, load_entry_points=load_entry_points)
        report.results.append(result)
        report.coverage.add(result)
        if on_result is not None:
            on_result(result)
    report.duration = time.perf_counter() - began
    return report


def junit_suites(report: SimulationReport) -> list[JUnitSuite]:
    """The report as JUnit suites: one per scenario file, one test case per scenario.

    A file that did not load is a suite with one errored case whose message lists its
    mistakes as ``file:line:column: ...``.
    """
    suites: dict[str, JUnitSuite] = {}
    for result in report.results:
        source = result.scenario.source
        suite = suites.setdefault(source, JUnitSuite(source, properties={"file": source}))
        case = JUnitCase(
            name=result.scenario.name,
            classname=_classname(source),
            time=result.duration,
            output=result.timeline(),
        )
        if result.error:
            case.error = (result.failure_message(), result.timeline())
            case.error_type = "ScenarioError"
        elif not result.passed:
            case.failure = (result.failure_message(), result.timeline())
            case.failure_type = "ExpectationFailed"
        suite.cases.append(case)
    by_file: dict[str, list[DefinitionError]] = {}
    for error in report.errors:
        by_file.setdefault(error.source, []).append(error)
    for source, problems in by_file.items():
        suite = suites.setdefault(source, JUnitSuite(source, properties={"file": source}))
        rendered = "\n".join(p.render() for p in problems)
        suite.cases.append(
            JUnitCase(
                name=f"load {Path(source).name}",
                classname=_classname(source),
                error=(rendered, rendered),
            )
        )
    return list(suites.values())


def _classname(source: str) -> str:
    path = Path(source)
    parts = [*path.parent.parts, path.name.split(".")[0]]
    return ".".join(p for p in parts if p not in ("", ".", "..", "/"))
