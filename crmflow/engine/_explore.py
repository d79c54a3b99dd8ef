"""Exploration: random walks through a workflow on a virtual clock, checking invariants.

:func:`explore` runs many seeded random walks of events against a real :class:`Engine` on the
memory store: starts, fires of the triggers the current state offers (by actors who hold the
roles, and by some who do not), random field data and facts by declared type, overrides,
clock moves followed by ``tick()`` (timers), and task operations on checklist tasks. After
every step it checks (the history at the end of each walk unless ``verify`` says otherwise):

``unhandled-error``
    an exception escaped that the call's documented misuse does not explain (an actor
    without the role may get :class:`PermissionDenied`; anything else is a finding);
``misuse-accepted``
    a call that should have been refused as misuse (an actor without the role firing) went
    through;
``stuck``
    the instance rests in a non-final state that no actor can leave: for every actor, with
    every set of facts tried, no trigger that leaves the state is available, no pending timer
    will fire one, and no open task could unblock a checklist gate; firing every trigger with
    fresh random data and overrides did not get out either;
``history``
    the instance's hash-chained history does not verify (:meth:`Engine.verify`);
``invalid-state``
    the instance rests in a state that is not a leaf of the definition, or a transition led
    somewhere other than the definition says;
``timer-failed``
    a timer raised while ``tick()`` ran it (the engine logs and retries it; a finding here);
``unvisited-state``
    only with ``require_all_states=True``: a state no walk reached (a warning otherwise).

For each violation the report carries the shortest event sequence found that reproduces it
on a fresh instance: a breadth-first search over the moves the walks showed possible, and the
failing walk shrunk step by step; the shorter sequence that replays to the violation wins.

Same workflow, same seed, same options: same walks, same report.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from crmflow._errors import (
    CrmflowError,
    InstanceExists,
    InvalidData,
    PermissionDenied,
    UnknownTask,
    UnknownTrigger,
)
from crmflow._task_types import Task
from crmflow._types import Actor
from crmflow.engine._data import merge_data, validate_new_data
from crmflow.engine._model import TransitionDef, WorkflowDef
from crmflow.engine._runtime import Engine
from crmflow.engine._tasks import may_work_on
from crmflow.plugins.org_directory import OrgDirectory, load_org_file
from crmflow.rules import parse_expression
from crmflow.rules._ast import Attr, Compare, Const, ListLit, Member, Name, walk

__all__ = [
    "VIOLATION_KINDS",
    "ExplorationReport",
    "ReplayResult",
    "Step",
    "Violation",
    "explore",
    "format_exploration",
    "replay",
]

#: Every kind of violation :func:`explore` reports, in the order reports list them.
VIOLATION_KINDS: tuple[str, ...] = (
    "unhandled-error",
    "misuse-accepted",
    "stuck",
    "history",
    "invalid-state",
    "timer-failed",
    "unvisited-state",
)

#: Where every walk's clock starts (a Monday morning, so business calendars are open).
DEFAULT_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

#: How far the clock may move before a ``tick``: short steps catch reminders, long ones
#: deadlines and due dates.
_ADVANCES = (
    timedelta(minutes=30),
    timedelta(hours=4),
    *(timedelta(days=d) for d in (1, 2, 3, 7, 10, 30)),
)
_OVERRIDE_REASON = "explore: override"
_DEFER_REASON = "explore: deferred"


# -- the report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One event of a walk, with what it did; enough to replay it on a fresh instance.

    Attributes:
        action: ``start``, ``fire``, ``tick``, ``complete_task``, ``defer_task`` or
            ``reopen_task``.
        name: the trigger fired, or the task a task operation is about ("" otherwise).
        actor: the acting user's id.
        roles: the roles the actor holds.
        data: field values passed (start data, or the data a fire writes).
        facts: fact namespaces passed to a fire.
        override: the override reason given, if any.
        result: the result recorded when completing a task.
        advance: how far the clock moved just before the step.
        misuse: what the step got wrong on purpose ("" for a proper call): ``denied``,
            ``bad-data``, ``wrong-trigger``, ``after-final``, ``no-result``.
        outcome: what happened (``ok``, ``refused by RULE``, ``raised PermissionDenied`` ...).
        state: the instance's state after the step.

    """

    action: str
    name: str = ""
    actor: str = ""
    roles: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    override: str | None = None
    result: Any = None
    advance: timedelta = timedelta(0)
    misuse: str = ""
    outcome: str = ""
    state: str = ""

    def as_actor(self) -> Actor:
        """The actor the step acts as."""
        return Actor(self.actor, self.roles)

    def describe(self) -> str:
        """One line: ``+1d fire qualify as sales_rep-user [sales_rep] (contact='x') -> ok``."""
        parts: list[str] = []
        if self.advance:
            parts.append(f"+{_show_duration(self.advance)}")
        parts.append(self.action if not self.name else f"{self.action} {self.name}")
        if self.action != "tick":
            parts.append(f"as {self.actor} [{', '.join(self.roles) or 'no roles'}]")
        if self.data:
            parts.append(f"data({_show_mapping(self.data)})")
        if self.facts:
            parts.append(f"facts({_show_mapping(self.facts)})")
        if self.override is not None:
            parts.append(f"override {self.override!r}")
        if self.result is not None:
            parts.append(f"result {_show(self.result)}")
        if self.misuse:
            parts.append(f"<misuse: {self.misuse}>")
        text = " ".join(parts)
        if self.outcome:
            text += f" -> {self.outcome}"
            if self.state:
                text += f", {self.state}"
        return text


@dataclass(frozen=True)
class Violation:
    """One broken invariant, with the shortest event sequence found that reaches it.

    Attributes:
        kind: one of :data:`VIOLATION_KINDS`.
        message: what is wrong, in a sentence.
        state: the state the instance was in when it broke.
        walk: the first walk (0-based) that found it.
        walks: how many walks found it.
        sequence: the shortest sequence of steps found that reaches it, from ``start``.
        confirmed: whether :attr:`sequence` was replayed on a fresh instance and broke the
            same invariant (false only when no replay reproduced it, e.g. timing-dependent).
        detail: extra lines (the exception's text, the refusals seen in a stuck state).

    """

    kind: str
    message: str
    state: str = ""
    walk: int = 0
    walks: int = 1
    sequence: tuple[Step, ...] = ()
    confirmed: bool = False
    detail: tuple[str, ...] = ()

    @property
    def signature(self) -> tuple[str, str, str]:
        """What makes two findings the same violation: kind, state and message.

        A broken history is one violation wherever it was noticed: it stays broken, so a
        check at the end of a walk and one right after the breaking step see different states
        and counts.
        """
        if self.kind == "history":
            return (self.kind, "", "")
        return (self.kind, self.state, self.message)


@dataclass(frozen=True)
class ExplorationReport:
    """What :func:`explore` found.

    Attributes:
        workflow: the workflow's name.
        version: its version.
        seed: the seed the walks were drawn from.
        walks: how many walks ran.
        steps: how many steps they took in all.
        max_steps: the most steps a walk could take.
        states_visited: states some walk reached (compound states through their
            sub-states), in definition order.
        states_not_visited: the other states, in definition order.
        triggers_fired: triggers that fired successfully at least once.
        triggers_not_fired: the workflow's other triggers.
        outcomes: counts of what the steps did: ``starts``, ``fired``, ``refused by rules``,
            ``misuse refused`` (refused with the documented exception), ``ticks``,
            ``task operations`` (and ``task operations refused``), ``errors``.
        violations: what broke, most frequent first.
        warnings: findings that are not violations (states never visited).
        elapsed: seconds the exploration took (not compared: reports of the same seed are
            equal however long they took).

    """

    workflow: str
    version: int
    seed: int
    walks: int
    steps: int
    max_steps: int
    states_visited: tuple[str, ...]
    states_not_visited: tuple[str, ...]
    triggers_fired: tuple[str, ...]
    triggers_not_fired: tuple[str, ...]
    outcomes: Mapping[str, int]
    violations: tuple[Violation, ...]
    warnings: tuple[str, ...] = ()
    elapsed: float = field(default=0.0, compare=False)

    @property
    def ok(self) -> bool:
        """Whether no invariant broke."""
        return not self.violations


@dataclass(frozen=True)
class ReplayResult:
    """What :func:`replay` saw: each step with its outcome, and the first violation."""

    steps: tuple[Step, ...]
    violation: Violation | None = None


# -- random values by declared type ---------------------------------------------------------


class _Values:
    """Random field values and facts, by type, seeded with the literals rules compare against.

    A rule ``customer.payment_terms == 'prepaid'`` only ever fires when the walk supplies
    ``'prepaid'``; random text almost never would, so literals found in the workflow's rules
    (and the categories of SLA timers) are offered half of the time.
    """

    def __init__(self, defn: WorkflowDef) -> None:
        self.defn = defn
        self.literals: dict[str, list[Any]] = {}
        for rule in defn.rules.values():
            try:
                expr = parse_expression(rule.when)
            except CrmflowError:  # the loader compiled it already; nothing to learn otherwise
                continue
            for node in walk(expr):
                if isinstance(node, Compare):
                    self._learn(node.left, node.right)
                    self._learn(node.right, node.left)
                elif isinstance(node, Member) and isinstance(node.haystack, ListLit):
                    for item in node.haystack.items:
                        self._learn(node.needle, item)
        for timer in defn.timers:
            if timer.sla_by:
                for value in timer.sla_hours:
                    self._add(timer.sla_by, value)

    def _learn(self, subject: Any, other: Any) -> None:
        if not isinstance(other, Const) or other.value is None:
            return
        if isinstance(subject, Name):
            self._add(subject.id, other.value)
        elif isinstance(subject, Attr):
            self._add(f"{subject.ns}.{subject.attr}", other.value)

    def _add(self, name: str, value: Any) -> None:
        known = self.literals.setdefault(name, [])
        if value not in known:
            known.append(value)

    def value(self, rng: random.Random, name: str, type_: str, now: datetime) -> Any:
        """A random value of ``type_`` for the field or fact ``name``."""
        literals = [v for v in self.literals.get(name, ()) if _fits(type_, v)]
        if literals and rng.random() < 0.5:
            base = rng.choice(literals)
            if type_ in ("int", "decimal") and rng.random() < 0.5:
                # Either side of a threshold is where a rule flips.
                step = 1 if type_ == "int" else Decimal("0.01")
                return base + rng.choice((-step, step))
            return Decimal(base) if type_ == "decimal" else base
        if type_ == "str":
            return rng.choice(("", "x", "Acme Ltd", f"v{rng.randint(0, 999)}"))
        if type_ == "int":
            return rng.choice((0, 1, rng.randint(-5, 1000)))
        if type_ == "decimal":
            return rng.choice((Decimal(0), Decimal(rng.randint(0, 10_000_000)) / 100))
        if type_ == "bool":
            return rng.random() < 0.5
        if type_ == "date":
            return now.date() + timedelta(days=rng.randint(-60, 60))
        if type_ == "datetime":
            return now + timedelta(hours=rng.randint(-24 * 60, 24 * 60))
        raise AssertionError(f"unknown field type {type_!r}")  # the loader refuses others

    def bad_value(self, rng: random.Random, type_: str) -> Any:
        """A value the type refuses (every declared type refuses a list)."""
        if type_ in ("int", "decimal", "date", "datetime"):
            return rng.choice((["not", "a", type_], "not-a-" + type_))
        return ["not", "a", type_]

    def facts(self, rng: random.Random, now: datetime) -> dict[str, dict[str, Any]]:
        """A full set of facts: every declared namespace and attribute, random by type."""
        return {
            namespace: {
                attr: (
                    None
                    if rng.random() < 0.05
                    else self.value(rng, f"{namespace}.{attr}", type_, now)
                )
                for attr, type_ in sorted(attrs.items())
            }
            for namespace, attrs in sorted(self.defn.facts.items())
        }


def _fits(type_: str, value: Any) -> bool:
    if type_ == "str":
        return isinstance(value, str)
    if type_ == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_ == "decimal":
        return isinstance(value, int | Decimal) and not isinstance(value, bool)
    if type_ == "bool":
        return isinstance(value, bool)
    return False


# -- one instance on one engine -------------------------------------------------------------


class _Clock:
    """A virtual clock that a new walk may set back: walks are independent of each other."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def reset(self, moment: datetime) -> None:
        self._now = moment

    def advance(self, by: timedelta) -> None:
        self._now += by


@dataclass
class _Expectation:
    """What a step may raise: ``allowed`` exception types, and whether one must be raised."""

    allowed: tuple[type[CrmflowError], ...] = ()
    required: bool = False
    why: str = ""


_NOTHING = _Expectation()


class _Runner:
    """Runs steps against one instance and checks the invariants after each."""

    def __init__(
        self,
        defn: WorkflowDef,
        *,
        start: datetime,
        org: OrgDirectory | None,
        verify: str,
        plugins: Sequence[object] = (),
    ) -> None:
        self.defn = defn
        self.start_time = start
        self.clock = _Clock(start)
        self.org = org
        self.verify_mode = verify
        self.engine = Engine(
            [defn],
            rules_backend="python",
            load_entry_points=False,
            clock=self.clock,
            org=org,
            plugins=plugins,
        )
        self.instances = 0
        self.key = ""
        self.state: str | None = None
        self.version = 0
        self.data: Mapping[str, Any] = {}
        self.owner = ""
        self._tasks: tuple[int, list[Task]] = (-1, [])
        self.timer_fires = {t.name: t.fire for t in defn.timers if t.fire}
        self.triggers_by_state: dict[str, dict[str, TransitionDef]] = {}

    def close(self) -> None:
        self.engine.close()

    def begin(self, key: str) -> None:
        """Point at a new instance key and set the clock back to the start."""
        self.clock.reset(self.start_time)
        self.key = key
        self.state = None
        self.version = 0
        self.data = {}
        self.owner = ""
        self._tasks = (-1, [])
        self.instances += 1

    def finish(self) -> None:
        """Cancel the instance's pending timers so later walks on this engine never see them."""
        if self.state is None:
            return
        for timer in self.engine.timers(key=self.key):
            self.engine.cancel_timer(timer.id)

    def tasks(self) -> list[Task]:
        """The instance's tasks (read once per version: only a change alters them)."""
        version, tasks = self._tasks
        if version != self.version:
            tasks = self.engine.tasks(self.key)
            self._tasks = (self.version, tasks)
        return tasks

    def triggers(self, state: str) -> dict[str, TransitionDef]:
        """Trigger -> the transition it fires from ``state`` (innermost wins)."""
        found = self.triggers_by_state.get(state)
        if found is None:
            found = {}
            for t in self.defn.transitions_from(state):
                found.setdefault(t.trigger, t)
            self.triggers_by_state[state] = found
        return found

    # -- expectations ---------------------------------------------------------------------

    def _expect_start(self, step: Step, actor: Actor) -> _Expectation:
        if self.state is not None:
            return _Expectation((InstanceExists,), True, "the key is taken")
        if not actor.has_any_role(self.defn.start_roles):
            return _Expectation((PermissionDenied,), True, "the actor may not start it")
        try:
            validate_new_data(self.defn.fields, step.data)
        except InvalidData:
            return _Expectation((InvalidData,), True, "the data does not fit the fields")
        return _NOTHING

    def _expect_fire(self, step: Step, actor: Actor, data: Mapping[str, Any]) -> _Expectation:
        assert self.state is not None
        transition = self.triggers(self.state).get(step.name)
        if transition is None:
            return _Expectation((UnknownTrigger,), True, "the trigger does not leave this state")
        if not actor.has_any_role(transition.roles):
            return _Expectation((PermissionDenied,), True, "the actor lacks the trigger's roles")
        try:
            merge_data(
                self.defn.fields,
                data,
                step.data,
                trigger=step.name,
                writes=transition.writes,
            )
        except InvalidData:
            return _Expectation((InvalidData,), True, "the data does not fit the transition")
        return _NOTHING

    def _expect_task(self, step: Step, actor: Actor, tasks: Sequence[Task]) -> _Expectation:
        task = next((t for t in tasks if t.id == step.name), None)
        if task is None:
            return _Expectation((UnknownTask,), True, "the instance has no such task")
        if not may_work_on(actor, self.defn, task):
            return _Expectation((PermissionDenied,), True, "the actor may not work on the task")
        if step.action == "complete_task":
            found = self.defn.checklist_item(task.id)
            if found is not None and found[1].result is not None:
                # A missing or ill-typed result is refused as InvalidData, unless the task
                # is refused first (already done, waiting on another task).
                return _Expectation((InvalidData,), False, "the task needs a typed result")
        return _NOTHING

    # -- running a step -------------------------------------------------------------------

    def execute(self, step: Step) -> tuple[Step, Violation | None]:
        """Run ``step``; return it with its outcome, and the first invariant it broke."""
        if step.advance:
            self.clock.advance(step.advance)
        actor = step.as_actor()
        state_before = self.state
        if self.state is None and step.action != "start":
            # A shortened sequence may lose the start: nothing to act on, nothing to check.
            return self._done(step, "skipped: no instance", None)
        expectation = _NOTHING
        outcome = "ok"
        moved_by: TransitionDef | None = None
        try:
            if step.action == "start":
                expectation = self._expect_start(step, actor)
                instance = self.engine.start(self.defn.name, self.key, actor=actor, data=step.data)
                self.owner = instance.owner or actor.id
            elif step.action == "tick":
                report = self.engine.tick()
                if report.failed:
                    return self._done(
                        step,
                        f"{report.failed} timer(s) failed",
                        Violation(
                            "timer-failed",
                            "a timer raised while tick() ran it (the engine logged it and "
                            "will retry)",
                            state=self.state or "",
                        ),
                    )
                outcome = "tick" if report.idle else f"tick: {report.fired} timer(s) fired"
            elif step.action == "fire":
                assert self.state is not None
                expectation = self._expect_fire(step, actor, self.data)
                moved_by = self.triggers(self.state).get(step.name)
                result = self.engine.fire(
                    self.key,
                    step.name,
                    actor=actor,
                    data=step.data or None,
                    facts=step.facts or None,
                    override=step.override,
                )
                if not result.ok:
                    outcome = "refused by " + ", ".join(r.rule for r in result.refusals)
                    moved_by = None
            else:
                expectation = self._expect_task(step, actor, self.tasks())
                if step.action == "complete_task":
                    task_outcome = self.engine.complete_task(
                        self.key, step.name, actor=actor, result=step.result
                    )
                elif step.action == "defer_task":
                    task_outcome = self.engine.defer_task(
                        self.key, step.name, actor=actor, reason=_DEFER_REASON
                    )
                else:
                    task_outcome = self.engine.reopen_task(self.key, step.name, actor=actor)
                if not task_outcome.ok:
                    outcome = "refused by " + ", ".join(r.rule for r in task_outcome.refusals)
        except CrmflowError as exc:
            name = type(exc).__name__
            if isinstance(exc, expectation.allowed):
                # Refused misuse still leaves a history entry: the invariants apply.
                outcome = f"raised {name} as expected"
                if self.state is None:
                    return self._done(step, outcome, None)
                return self._check(step, outcome, None)
            return self._done(step, f"raised {name}", _error_violation(step, exc, state_before))
        except Exception as exc:  # the finding this check exists for
            return self._done(
                step, f"raised {type(exc).__name__}", _error_violation(step, exc, state_before)
            )
        if expectation.required:
            return self._done(
                step,
                outcome,
                Violation(
                    "misuse-accepted",
                    f"{_what(step)} went through although {expectation.why}",
                    state=state_before or "",
                ),
            )
        return self._check(step, outcome, moved_by)

    def _done(
        self, step: Step, outcome: str, violation: Violation | None
    ) -> tuple[Step, Violation | None]:
        return replace(step, outcome=outcome, state=self.state or ""), violation

    def _check(
        self, step: Step, outcome: str, moved_by: TransitionDef | None
    ) -> tuple[Step, Violation | None]:
        """The invariants that hold after any step: a leaf state, the definition's target."""
        instance = self.engine.get(self.key)
        state = instance.state
        before = self.state
        changed = instance.version != self.version
        self.state, self.version, self.data = state, instance.version, instance.data
        spec = self.defn.states.get(state)
        if spec is None or spec.children:
            return self._done(
                step,
                outcome,
                Violation(
                    "invalid-state",
                    f"the instance rests in {state!r}, which is not a leaf state of the definition",
                    state=state,
                ),
            )
        if instance.final != spec.final:
            return self._done(
                step,
                outcome,
                Violation(
                    "invalid-state",
                    f"the instance says final={instance.final} in {state!r}, the definition "
                    f"says final={spec.final}",
                    state=state,
                ),
            )
        if moved_by is not None and not moved_by.internal:
            expected = self.defn.leaf_state(moved_by.dest)
            if state != expected:
                return self._done(
                    step,
                    outcome,
                    Violation(
                        "invalid-state",
                        f"{moved_by.trigger} from {before!r} led to {state!r}, the definition "
                        f"says {expected!r}",
                        state=state,
                    ),
                )
        if self.verify_mode == "step" or (self.verify_mode == "change" and changed):
            violation = self.verify()
            if violation is not None:
                return self._done(step, outcome, violation)
        return self._done(step, outcome, None)

    def verify(self) -> Violation | None:
        """The history check: the chain verifies and counts the instance's changes."""
        if self.state is None:
            return None
        report = self.engine.verify(self.key)
        if report.ok:
            return None
        return Violation(
            "history",
            f"the history does not verify: {report.reason}",
            state=self.state,
        )

    # -- stuck ----------------------------------------------------------------------------

    def way_out(
        self, actors: list[Actor], facts_sets: Iterable[Mapping[str, Any]]
    ) -> tuple[bool, list[str], Violation | None]:
        """Whether something can still move the instance out of its state, and why not.

        Something can when, for some actor and some facts, a trigger that leaves the state
        is available (or available with an override); or a pending timer will fire one; or
        every refusal of one is a checklist gate whose tasks someone may still work on.
        Triggers that keep the instance where it is (written without ``to``) are no way out.
        The actor who found a way out moves to the front of ``actors``: the next state
        usually opens to the same one, so most checks take one ``available`` call.
        Asking is a step too: an exception escaping ``available()`` is the violation returned.
        """
        try:
            free, reasons = self._way_out(actors, facts_sets)
        except Exception as exc:  # available() documents no exception for these calls
            name = type(exc).__name__
            return (
                True,
                [],
                Violation(
                    "unhandled-error",
                    f"available() raised {name}",
                    state=self.state or "",
                    detail=(f"{name}: {exc}",),
                ),
            )
        return free, reasons, None

    def _way_out(
        self, actors: list[Actor], facts_sets: Iterable[Mapping[str, Any]]
    ) -> tuple[bool, list[str]]:
        assert self.state is not None
        state = self.state
        if self.defn.states[state].final:
            return True, []
        leaving = {
            trigger
            for trigger, t in self.triggers(state).items()
            if t.internal is False and self.defn.leaf_state(t.dest) != state
        }
        for timer in self.engine.timers(key=self.key):
            if self.timer_fires.get(timer.name) in leaving:
                return True, []
        reasons: list[str] = []
        denied: list[str] = []
        tasks: list[Task] | None = None
        for facts in facts_sets:
            for index, actor in enumerate(actors):
                for option in self.engine.available(self.key, actor, facts=dict(facts) or None):
                    if option.trigger not in leaving:
                        continue
                    if option.allowed or option.needs_override:
                        actors.insert(0, actors.pop(index))
                        return True, []
                    gates = [r for r in option.reasons if r.rule.startswith("checklist:")]
                    if gates and len(gates) == len(option.reasons):
                        if tasks is None:
                            tasks = self.tasks()
                        waiting = {i for r in gates for i in r.items}
                        workers = (*actors, Actor(self.owner))
                        if any(
                            may_work_on(a, self.defn, t)
                            for t in tasks
                            if t.id in waiting
                            for a in workers
                        ):
                            return True, []
                    for r in option.reasons:
                        line = f"{option.trigger}: {r.rule}: {r.message}"
                        target = denied if r.rule == "roles" else reasons
                        if line not in target:
                            target.append(line)
        if not reasons and not denied:
            reasons = [f"no transition leaves {state!r}"]
        return False, reasons or denied


def _from_available(violation: Violation) -> bool:
    """Whether ``available()`` raised it (asked between steps, not by a step)."""
    return violation.kind == "unhandled-error" and violation.message.startswith("available()")


def _what(step: Step) -> str:
    return step.action if not step.name else f"{step.action} {step.name}"


def _error_violation(step: Step, exc: BaseException, state: str | None) -> Violation:
    name = type(exc).__name__
    return Violation(
        "unhandled-error",
        f"{_what(step)} raised {name}",
        state=state or "",
        detail=(f"{name}: {exc}",),
    )


# -- the walks ------------------------------------------------------------------------------


@dataclass
class _Walk:
    steps: list[Step]
    violation: Violation | None = None
    #: The first start that succeeded: every sequence replays from it.
    start_step: Step | None = None
    start_index: int = 0
    #: Where the stuck check's probe fires began (they are no part of the way in).
    probe_from: int | None = None


class _Explorer:
    def __init__(
        self,
        defn: WorkflowDef,
        *,
        seed: int,
        max_steps: int,
        org: OrgDirectory | None,
        roles: Sequence[str] | None,
        start: datetime,
        misuse: float,
        verify: str,
        recycle: int,
        facts_tries: int,
        shrink_budget: int,
        plugins: Sequence[object],
    ) -> None:
        self.defn = defn
        self.plugins = plugins
        self.seed = seed
        self.max_steps = max_steps
        self.org = org
        self.start = start
        self.misuse = misuse
        self.verify = verify
        self.recycle = max(1, recycle)
        self.facts_tries = max(1, facts_tries)
        self.shrink_budget = shrink_budget
        self.values = _Values(defn)
        self.actors = _actors(defn, org, roles)
        # For the stuck check only: someone holding every role, in case a trigger and the
        # override it needs are given to different roles (a real org may have such a person;
        # without an org there is no telling).
        every = sorted({r for a in self.actors for r in a.roles})
        self.check_actors = [*self.actors, Actor("everyone", every)] if org is None else self.actors
        self.starters = [a for a in self.actors if a.has_any_role(defn.start_roles)]
        self.has_timers = bool(defn.timers) or any(
            a.timer is not None for auto in defn.automations for a in auto.actions
        )
        self.tick_chance = 0.2 if self.has_timers else 0.05
        self.runner: _Runner | None = None
        self.replayer: _Runner | None = None
        self.visited: set[str] = set()
        self.fired: set[str] = set()
        self.outcomes: dict[str, int] = {}
        self.edges: dict[str, dict[str, Step]] = {}
        self.taken: dict[tuple[str, str], int] = {}
        self.gated = {
            leaf
            for leaf, spec in defn.states.items()
            if not spec.children and any(t.requires for t in defn.transitions_from(leaf))
        }
        self.total_steps = 0

    def _runner(self, walk_index: int) -> _Runner:
        # One engine serves many walks (each its own instance key); it is replaced now and
        # then so the memory store's per-call scans stay short.
        if self.runner is None or walk_index % self.recycle == 0:
            if self.runner is not None:
                self.runner.close()
            self.runner = _Runner(
                self.defn, start=self.start, org=self.org, verify=self.verify, plugins=self.plugins
            )
        return self.runner

    def close(self) -> None:
        for runner in (self.runner, self.replayer):
            if runner is not None:
                runner.close()

    def count(self, step: Step) -> None:
        outcome = step.outcome
        if outcome.endswith("as expected"):
            label = "misuse refused"
        elif step.action == "tick":
            label = "ticks"
        elif outcome.startswith("skipped"):
            label = "skipped"
        elif outcome.startswith("raised"):
            label = "errors"
        elif step.action == "start":
            label = "starts"
        elif step.action == "fire":
            label = "fired" if outcome == "ok" else "refused by rules"
        else:
            label = "task operations" if outcome == "ok" else "task operations refused"
        self.outcomes[label] = self.outcomes.get(label, 0) + 1

    # -- one walk -------------------------------------------------------------------------

    def walk(self, index: int, rng: random.Random) -> _Walk:
        runner = self._runner(index)
        runner.begin(f"walk-{index}")
        result = _Walk([])
        try:
            self._walk(runner, rng, result)
            if result.violation is None and self.verify == "end":
                result.violation = runner.verify()
        finally:
            runner.finish()
        return result

    def _run(self, runner: _Runner, step: Step, result: _Walk) -> bool:
        """Run a step and record it; ``False`` when the walk must stop (a violation)."""
        before = runner.state
        done, violation = runner.execute(step)
        result.steps.append(done)
        self.total_steps += 1
        self.count(done)
        if violation is not None:
            result.violation = violation
            return False
        if runner.state is not None:
            self.visited.add(runner.state)
            if done.action == "start" and result.start_step is None and before is None:
                result.start_step = done
                result.start_index = len(result.steps) - 1
            if done.action == "fire" and done.outcome == "ok" and before is not None:
                self.fired.add(done.name)
                self.taken[before, done.name] = self.taken.get((before, done.name), 0) + 1
            if before is not None and runner.state != before:
                # A move some walk showed possible: the search for short sequences uses it.
                self.edges.setdefault(before, {}).setdefault(runner.state, done)
        return True

    def _walk(self, runner: _Runner, rng: random.Random, result: _Walk) -> None:
        now = runner.clock.now()
        misused = rng.random() < self.misuse
        if misused and not self._run(runner, self._bad_start(rng, now), result):
            return
        if not self._run(runner, self._start(rng, now), result):
            return
        if runner.state is None:
            return
        if not self._stuck_check(runner, rng, result):
            return
        for _ in range(self.max_steps):
            assert runner.state is not None
            if self.defn.states[runner.state].final:
                if rng.random() < self.misuse:
                    self._run(runner, self._after_final(rng, runner), result)
                return
            version = runner.version
            if not self._run(runner, self._next(rng, runner), result):
                return
            if runner.version != version and not self._stuck_check(runner, rng, result):
                return

    def _stuck_check(
        self, runner: _Runner, rng: random.Random, result: _Walk, depth: int = 0
    ) -> bool:
        """``False`` (with the violation recorded) when the instance cannot get out."""
        assert runner.state is not None
        if self.defn.states[runner.state].final:
            return True
        facts_sets = self._facts_sets(rng, runner.clock.now())
        free, reasons, broken = runner.way_out(self.check_actors, facts_sets)
        if broken is not None:
            result.violation = broken
            return False
        if free:
            return True
        # Rules may read what a fire writes (first_order_no with the purchase), and a trigger
        # that stays may set what an exit's rule waits for (a prepayment received): available()
        # sees neither, so every trigger is tried for real with random data and overrides.
        state = runner.state
        result.probe_from = len(result.steps)
        for _ in range(self.facts_tries):
            for trigger, transition in sorted(runner.triggers(state).items()):
                actor = next(
                    (a for a in self.check_actors if a.has_any_role(transition.roles)), None
                )
                if actor is None:
                    continue
                version = runner.version
                step = self._fire_step(rng, runner, trigger, transition, actor, probe=True)
                if not self._run(runner, step, result):
                    return False
                if runner.state != state:
                    result.probe_from = None
                    return depth >= self.max_steps or self._stuck_check(
                        runner, rng, result, depth + 1
                    )
                if runner.version != version:
                    free, reasons, broken = runner.way_out(
                        self.check_actors, self._facts_sets(rng, runner.clock.now())
                    )
                    if broken is not None:
                        result.violation = broken
                        return False
                    if free:
                        result.probe_from = None
                        return True
        result.violation = Violation(
            "stuck",
            f"state {state!r} is not final and nothing gets an instance out of it",
            state=state,
            detail=tuple(reasons[:8]),
        )
        return False

    def _facts_sets(self, rng: random.Random, now: datetime) -> list[dict[str, Any]]:
        if not self.defn.facts:
            return [{}]
        return [self.values.facts(rng, now) for _ in range(self.facts_tries)]

    # -- step generators ------------------------------------------------------------------

    def _start_data(self, rng: random.Random, now: datetime) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, spec in self.defn.fields.items():
            if spec.required or rng.random() < 0.3:
                data[name] = self.values.value(rng, name, spec.type, now)
        return data

    def _start(self, rng: random.Random, now: datetime) -> Step:
        actor = rng.choice(self.starters) if self.starters else rng.choice(self.actors)
        return Step("start", actor=actor.id, roles=_roles(actor), data=self._start_data(rng, now))

    def _bad_start(self, rng: random.Random, now: datetime) -> Step:
        outsiders = [a for a in self.actors if not a.has_any_role(self.defn.start_roles)]
        data = self._start_data(rng, now)
        if outsiders and rng.random() < 0.5:
            actor = rng.choice(outsiders)
            return Step("start", actor=actor.id, roles=_roles(actor), data=data, misuse="denied")
        actor = rng.choice(self.starters or self.actors)
        if self.defn.fields and rng.random() < 0.5:
            name = rng.choice(sorted(self.defn.fields))
            data[name] = self.values.bad_value(rng, self.defn.fields[name].type)
        else:
            data["no_such_field"] = "x"
        return Step("start", actor=actor.id, roles=_roles(actor), data=data, misuse="bad-data")

    def _after_final(self, rng: random.Random, runner: _Runner) -> Step:
        actor = rng.choice(self.actors)
        trigger = rng.choice(self.defn.triggers)
        return Step("fire", trigger, actor=actor.id, roles=_roles(actor), misuse="after-final")

    def _next(self, rng: random.Random, runner: _Runner) -> Step:
        assert runner.state is not None
        roll = rng.random()
        if roll < self.tick_chance:
            return Step("tick", advance=rng.choice(_ADVANCES))
        # Where a checklist gates the way on, work on the tasks most of the time, or the
        # walks would rarely get past it.
        task_chance = 0.6 if runner.state in self.gated else 0.2
        if self.defn.checklists and rng.random() < task_chance:
            step = self._task_step(rng, runner)
            if step is not None:
                return step
        triggers = runner.triggers(runner.state)
        if not triggers:
            return Step("tick", advance=rng.choice(_ADVANCES))
        # Triggers taken less often so far are preferred: walks spread over the machine
        # instead of repeating its likeliest path.
        names = sorted(triggers)
        weights = [1 / (1 + self.taken.get((runner.state, n), 0)) for n in names]
        trigger = rng.choices(names, weights)[0]
        transition = triggers[trigger]
        misuse = ""
        if rng.random() < self.misuse:
            misuse = rng.choice(("denied", "bad-data", "wrong-trigger"))
        if misuse == "wrong-trigger":
            others = [t for t in self.defn.triggers if t not in triggers]
            if others:
                trigger = rng.choice(others)
                actor = rng.choice(self.actors)
                return Step("fire", trigger, actor=actor.id, roles=_roles(actor), misuse=misuse)
            misuse = ""
        holders = [a for a in self.actors if a.has_any_role(transition.roles)]
        outsiders = [a for a in self.actors if not a.has_any_role(transition.roles)]
        if misuse == "denied" and outsiders:
            actor = rng.choice(outsiders)
        else:
            if misuse == "denied":
                misuse = ""
            # Mostly someone allowed; now and then anyone, as users do.
            actor = rng.choice(holders if holders and rng.random() < 0.85 else self.actors)
        step = self._fire_step(rng, runner, trigger, transition, actor)
        advance = rng.choice(_ADVANCES) if rng.random() < 0.3 else timedelta(0)
        step = replace(step, advance=advance)
        if misuse == "bad-data":
            return replace(step, data=self._bad_data(rng, transition, step.data), misuse=misuse)
        return replace(step, misuse=misuse)

    def _fire_step(
        self,
        rng: random.Random,
        runner: _Runner,
        trigger: str,
        transition: TransitionDef,
        actor: Actor,
        *,
        probe: bool = False,
    ) -> Step:
        now = runner.clock.now()
        data: dict[str, Any] = {}
        for name in transition.writes:
            if probe or rng.random() < 0.7:
                spec = self.defn.fields[name]
                none_ok = not spec.required and not probe
                data[name] = (
                    None
                    if none_ok and rng.random() < 0.1
                    else self.values.value(rng, name, spec.type, now)
                )
        facts = self.values.facts(rng, now) if self.defn.facts else {}
        override = _OVERRIDE_REASON if probe or rng.random() < 0.3 else None
        return Step(
            "fire",
            trigger,
            actor=actor.id,
            roles=_roles(actor),
            data=data,
            facts=facts,
            override=override,
        )

    def _bad_data(
        self, rng: random.Random, transition: TransitionDef, data: Mapping[str, Any]
    ) -> dict[str, Any]:
        bad = dict(data)
        unwritable = [f for f in self.defn.fields if f not in transition.writes]
        roll = rng.random()
        if transition.writes and roll < 0.5:
            name = rng.choice(transition.writes)
            bad[name] = self.values.bad_value(rng, self.defn.fields[name].type)
        elif unwritable and roll < 0.8:
            name = rng.choice(unwritable)
            bad[name] = self.values.value(rng, name, self.defn.fields[name].type, self.start)
        else:
            bad["no_such_field"] = "x"
        return bad

    def _task_step(self, rng: random.Random, runner: _Runner) -> Step | None:
        tasks = runner.tasks()
        unfinished = [t for t in tasks if t.status in ("open", "deferred")]
        done = [t for t in tasks if t.status == "done"]
        if not unfinished and not done:
            return None
        roll = rng.random()
        if done and (roll < 0.05 or not unfinished):
            task, action = rng.choice(done), "reopen_task"
        else:
            task = rng.choice(unfinished)
            action = "defer_task" if task.deferrable and roll < 0.3 else "complete_task"
        allowed = [
            a
            for a in (*self.actors, Actor(runner.owner, self._owner_roles(runner)))
            if may_work_on(a, self.defn, task)
        ]
        misuse = ""
        if allowed and rng.random() > self.misuse:
            actor = rng.choice(allowed)
        else:
            actor = rng.choice(self.actors)
            if not may_work_on(actor, self.defn, task):
                misuse = "denied"
        result: Any = None
        if action == "complete_task":
            found = self.defn.checklist_item(task.id)
            kind = found[1].result if found is not None else None
            if kind is not None:
                if rng.random() < self.misuse:
                    misuse = misuse or "no-result"
                else:
                    result = self.values.value(rng, f"{task.id}.result", kind, runner.clock.now())
        return Step(
            action, task.id, actor=actor.id, roles=_roles(actor), result=result, misuse=misuse
        )

    def _owner_roles(self, runner: _Runner) -> tuple[str, ...]:
        owner = next((a for a in self.actors if a.id == runner.owner), None)
        return _roles(owner) if owner is not None else ()

    # -- short sequences ------------------------------------------------------------------

    def _replayer(self) -> _Runner:
        if self.replayer is None:
            self.replayer = _Runner(
                self.defn, start=self.start, org=self.org, verify="step", plugins=self.plugins
            )
        return self.replayer

    def reproduces(self, steps: Sequence[Step], target: Violation) -> tuple[Step, ...] | None:
        """Replay ``steps``; the executed prefix that breaks ``target``'s invariant, or None."""
        runner = self._replayer()
        if runner.instances and runner.instances % self.recycle == 0:
            runner.close()
            self.replayer = None
            runner = self._replayer()
        runner.begin(f"replay-{runner.instances}")
        done: list[Step] = []
        try:
            for step in steps:
                executed, violation = runner.execute(step)
                done.append(executed)
                if violation is not None:
                    return tuple(done) if violation.signature == target.signature else None
            asked = target.kind == "stuck" or _from_available(target)
            if asked and runner.state == target.state:
                facts_sets = self._facts_sets(random.Random(self.seed), runner.clock.now())
                free, _, broken = runner.way_out(self.check_actors, facts_sets)
                if broken is not None:
                    return tuple(done) if broken.signature == target.signature else None
                if not free:
                    return tuple(done)
            if target.kind == "history":
                violation = runner.verify()
                if violation is not None and violation.signature == target.signature:
                    return tuple(done)
            return None
        finally:
            runner.finish()

    def shortest(self, walk: _Walk) -> tuple[tuple[Step, ...], bool]:
        """The shortest replaying sequence found for ``walk``'s violation."""
        target = walk.violation
        assert target is not None
        original = walk.steps[: walk.probe_from] if walk.probe_from is not None else walk.steps
        original = original[walk.start_index :]
        candidates: list[tuple[Step, ...]] = []
        bfs = self._bfs_sequence(walk, target)
        budget = [self.shrink_budget]

        def attempt(steps: Sequence[Step]) -> tuple[Step, ...] | None:
            if budget[0] <= 0:
                return None
            budget[0] -= 1
            return self.reproduces([_input(s) for s in steps], target)

        if bfs is not None:
            found = attempt(bfs)
            if found is not None:
                candidates.append(found)
        confirmed = attempt(original)
        if confirmed is not None:
            candidates.append(self._shrink(confirmed, attempt))
        if not candidates:
            return tuple(original), False
        return self._simplify(min(candidates, key=len), attempt), True

    def _shrink(
        self,
        steps: tuple[Step, ...],
        attempt: Callable[[Sequence[Step]], tuple[Step, ...] | None],
    ) -> tuple[Step, ...]:
        """Delete chunks, then single steps, while the violation persists (never the start)."""
        best = steps
        size = max(1, (len(best) - 1) // 2)
        while size >= 1:
            index = 1
            while index < len(best):
                candidate = best[:index] + best[index + size :]
                found = attempt(candidate)
                if found is not None and len(found) < len(best):
                    best = found
                else:
                    index += size
            size //= 2
        return best

    def _simplify(
        self,
        steps: tuple[Step, ...],
        attempt: Callable[[Sequence[Step]], tuple[Step, ...] | None],
    ) -> tuple[Step, ...]:
        """Drop clock moves, overrides, data and facts the violation does not need."""
        best = steps
        index = 0
        while index < len(best):
            for simplify in self._simplifications(_input(best[index])):
                current = _input(best[index])
                simpler = simplify(current)
                if simpler == current:
                    continue
                found = attempt((*best[:index], simpler, *best[index + 1 :]))
                if found is not None and index < len(found) <= len(best):
                    best = found
            index += 1
        return best

    def _simplifications(self, step: Step) -> list[Callable[[Step], Step]]:
        """Ways to make ``step`` simpler, one change each.

        Each applies to the step as it is by then: earlier simplifications may have been kept.
        """
        fields = self.defn.fields
        ways: list[Callable[[Step], Step]] = [
            lambda s: replace(s, advance=timedelta(0)),
            lambda s: replace(s, override=None),
            lambda s: replace(s, facts={}),
        ]
        if step.action == "start" and all(k in fields for k in step.data):
            ways.append(
                lambda s: replace(s, data={k: v for k, v in s.data.items() if fields[k].required})
            )
        elif step.action != "start":
            ways.append(lambda s: replace(s, data={}))
            ways.extend(_without(name) for name in step.data)
        return ways

    def _bfs_sequence(self, walk: _Walk, target: Violation) -> list[Step] | None:
        if walk.start_step is None:
            return None
        origin = walk.start_step.state
        goal = target.state
        previous: dict[str, tuple[str, Step] | None] = {origin: None}
        queue = deque([origin])
        while queue:
            state = queue.popleft()
            if state == goal:
                break
            for dest, step in sorted(self.edges.get(state, {}).items()):
                if dest not in previous:
                    previous[dest] = (state, step)
                    queue.append(dest)
        if goal not in previous:
            return None
        path: list[Step] = []
        cursor = goal
        while (link := previous[cursor]) is not None:
            cursor, step = link
            path.append(step)
        path.reverse()
        sequence = [walk.start_step, *path]
        # The step that broke, unless it broke after the steps: stuck, a history noticed at
        # the end, available() failing while the stuck check asked.
        if target.kind not in ("stuck", "history") and not _from_available(target):
            sequence.append(walk.steps[-1])
        return sequence

    # -- the whole run --------------------------------------------------------------------

    def run(self, walks: int, require_all_states: bool) -> ExplorationReport:
        started = time.perf_counter()
        master = random.Random(self.seed)
        seeds = [master.getrandbits(64) for _ in range(walks)]
        found: dict[tuple[str, str, str], tuple[_Walk, int, int]] = {}
        try:
            for index, walk_seed in enumerate(seeds):
                walk = self.walk(index, random.Random(walk_seed))
                if walk.violation is not None:
                    signature = walk.violation.signature
                    first = found.get(signature)
                    if first is None:
                        found[signature] = (walk, index, 1)
                    else:
                        found[signature] = (first[0], first[1], first[2] + 1)
            violations = []
            for walk, index, times in found.values():
                assert walk.violation is not None
                sequence, confirmed = self.shortest(walk)
                violations.append(
                    replace(
                        walk.violation,
                        walk=index,
                        walks=times,
                        sequence=sequence,
                        confirmed=confirmed,
                    )
                )
        finally:
            self.close()
        visited = {a for leaf in self.visited for a in self.defn.ancestors(leaf)}
        states = list(self.defn.states)
        not_visited = tuple(s for s in states if s not in visited)
        warnings = tuple(f"state {s!r} was never visited in {walks} walks" for s in not_visited)
        if require_all_states:
            violations.extend(
                Violation(
                    "unvisited-state",
                    f"state {s!r} was never visited in {walks} walks",
                    state=s,
                    walks=0,
                    confirmed=True,
                )
                for s in not_visited
            )
            warnings = ()
        violations.sort(key=lambda v: (VIOLATION_KINDS.index(v.kind), -v.walks, v.state))
        triggers = self.defn.triggers
        return ExplorationReport(
            workflow=self.defn.name,
            version=self.defn.version,
            seed=self.seed,
            walks=walks,
            steps=self.total_steps,
            max_steps=self.max_steps,
            states_visited=tuple(s for s in states if s in visited),
            states_not_visited=not_visited,
            triggers_fired=tuple(t for t in triggers if t in self.fired),
            triggers_not_fired=tuple(t for t in triggers if t not in self.fired),
            outcomes=dict(sorted(self.outcomes.items())),
            violations=tuple(violations),
            warnings=warnings,
            elapsed=time.perf_counter() - started,
        )


def _without(name: str) -> Callable[[Step], Step]:
    """A simplification: the step without the field ``name`` in its data."""
    return lambda s: replace(s, data={k: v for k, v in s.data.items() if k != name})


def _input(step: Step) -> Step:
    """The step without what a run recorded about it."""
    return replace(step, outcome="", state="")


def _roles(actor: Actor) -> tuple[str, ...]:
    return tuple(sorted(actor.roles))


def _actors(
    defn: WorkflowDef, org: OrgDirectory | None, roles: Sequence[str] | None
) -> list[Actor]:
    """Who acts: the org's users when there is an org, else one user per role."""
    if org is not None:
        return [org.actor(user) for user in org.users()]
    names = list(roles) if roles is not None else sorted(defn.roles)
    return [Actor(f"{role}-user", {role}) for role in names] or [Actor("nobody", ())]


# -- public functions ---------------------------------------------------------------------


def explore(
    defn: WorkflowDef,
    *,
    walks: int,
    seed: int,
    max_steps: int = 30,
    org: OrgDirectory | str | Path | None = None,
    roles: Sequence[str] | None = None,
    require_all_states: bool = False,
    misuse: float = 0.1,
    start: datetime = DEFAULT_START,
    verify: str = "end",
    recycle: int = 100,
    facts_tries: int = 4,
    shrink_budget: int = 400,
    plugins: Sequence[object] = (),
) -> ExplorationReport:
    """Explore ``defn`` with ``walks`` seeded random walks and report broken invariants.

    Args:
        defn: the workflow to explore (one version).
        walks: how many walks to run; each starts a new instance.
        seed: the seed; the same seed and options give the same walks and the same report.
        max_steps: the most steps a walk takes after its start (a walk also ends in a final
            state, and at the first violation).
        org: an org directory (or its YAML file): its users act, with their roles, and a
            state only a role nobody holds can leave counts as stuck. Without one, each of
            the workflow's roles gets one user (or each of ``roles`` when given).
        roles: the roles that exist, when there is no org directory (default: the
            workflow's roles).
        require_all_states: report states no walk reached as violations, not warnings.
        misuse: the share of steps that misuse the API on purpose (an actor without the
            role, ill-typed data, a trigger the state does not offer), to check that misuse
            is refused with the documented exception and nothing else.
        start: where each walk's virtual clock starts.
        verify: when to verify the history: after every ``"step"`` (default), after each
            step that changed the instance (``"change"``), or at the ``"end"`` of each walk.
        recycle: walks run on one engine before a fresh one replaces it.
        facts_tries: sets of random facts (and probe fires) tried before calling a state
            stuck.
        shrink_budget: the most replays spent looking for the shortest sequence of one
            violation.
        plugins: plugins the engine runs with (custom actions, fact providers, observers),
            as the host's engine would; entry-point plugins are not loaded.

    Returns:
        The :class:`ExplorationReport`; ``report.ok`` is true when nothing broke.

    """
    if walks < 0:
        raise ValueError("walks must be zero or more")
    if max_steps < 0:
        raise ValueError("max_steps must be zero or more")
    if verify not in ("step", "change", "end"):
        raise ValueError(f"verify must be 'step', 'change' or 'end', not {verify!r}")
    if isinstance(org, str | Path):
        org = load_org_file(org)
    explorer = _Explorer(
        defn,
        seed=seed,
        max_steps=max_steps,
        org=org,
        roles=roles,
        start=start,
        misuse=misuse,
        verify=verify,
        recycle=recycle,
        facts_tries=facts_tries,
        shrink_budget=shrink_budget,
        plugins=plugins,
    )
    return explorer.run(walks, require_all_states)


def replay(
    defn: WorkflowDef,
    steps: Sequence[Step],
    *,
    org: OrgDirectory | str | Path | None = None,
    start: datetime = DEFAULT_START,
    plugins: Sequence[object] = (),
) -> ReplayResult:
    """Run ``steps`` on a fresh instance of ``defn`` and report the first broken invariant.

    The steps of a :class:`Violation`'s sequence replay to it (``stuck`` is checked once the
    steps ran: whether anything still gets the instance out).
    """
    if isinstance(org, str | Path):
        org = load_org_file(org)
    runner = _Runner(defn, start=start, org=org, verify="step", plugins=plugins)
    runner.begin("replay")
    done: list[Step] = []
    try:
        for step in steps:
            executed, violation = runner.execute(_input(step))
            done.append(executed)
            if violation is not None:
                return ReplayResult(tuple(done), violation)
        if runner.state is not None and not defn.states[runner.state].final:
            actors = _actors(defn, org, None)
            if org is None:
                every = sorted({r for a in actors for r in a.roles})
                actors = [*actors, Actor("everyone", every)]
            values = _Values(defn)
            rng = random.Random(0)
            now = runner.clock.now()
            facts_sets = [values.facts(rng, now) for _ in range(4)] if defn.facts else [{}]
            free, reasons, broken = runner.way_out(actors, facts_sets)
            if broken is not None:
                return ReplayResult(tuple(done), broken)
            if not free:
                return ReplayResult(
                    tuple(done),
                    Violation(
                        "stuck",
                        f"state {runner.state!r} is not final and nothing gets an instance out "
                        "of it",
                        state=runner.state,
                        detail=tuple(reasons[:8]),
                    ),
                )
        return ReplayResult(tuple(done))
    finally:
        runner.close()


# -- text output ----------------------------------------------------------------------------


def format_exploration(report: ExplorationReport) -> str:
    """Render an exploration report as text for a terminal or a CI log."""
    lines = [
        f"Explored {report.workflow} v{report.version}: {report.walks} walks "
        f"(seed {report.seed}, up to {report.max_steps} steps each), {report.steps} steps"
        + (f" in {report.elapsed:.1f} s" if report.elapsed else ""),
    ]
    total_states = len(report.states_visited) + len(report.states_not_visited)
    lines.append(f"  states visited:    {len(report.states_visited)} of {total_states}")
    total_triggers = len(report.triggers_fired) + len(report.triggers_not_fired)
    lines.append(f"  triggers fired:    {len(report.triggers_fired)} of {total_triggers}")
    if report.triggers_not_fired:
        lines.append(f"  never fired:       {', '.join(report.triggers_not_fired)}")
    if report.outcomes:
        counts = ", ".join(f"{n} {label}" for label, n in report.outcomes.items())
        lines.append(f"  step outcomes:     {counts}")
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    if not report.violations:
        lines.append("No violation.")
        return "\n".join(lines)
    lines.append(f"{len(report.violations)} violation{'s' if len(report.violations) != 1 else ''}:")
    for number, v in enumerate(report.violations, 1):
        lines.append("")
        where = f" in {v.state!r}" if v.state else ""
        seen = f" (first in walk {v.walk}, {v.walks} walk{'s' if v.walks != 1 else ''})"
        lines.append(f"{number}. [{v.kind}]{where}: {v.message}{seen if v.walks else ''}")
        lines.extend(f"     {d}" for d in v.detail)
        if v.sequence:
            label = "shortest sequence" if v.confirmed else "sequence (did not replay)"
            lines.append(f"   {label}, {len(v.sequence)} step(s):")
            lines.extend(f"     {i}. {s.describe()}" for i, s in enumerate(v.sequence, 1))
    return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, Decimal | int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="minutes")
    if isinstance(value, date):
        return value.isoformat()
    return repr(value)


def _show_mapping(values: Mapping[str, Any]) -> str:
    parts = []
    for name, value in values.items():
        if isinstance(value, Mapping):
            parts.append(f"{name}: {{{_show_mapping(value)}}}")
        else:
            parts.append(f"{name}={_show(value)}")
    return ", ".join(parts)


def _show_duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
