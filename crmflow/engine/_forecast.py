"""Monte Carlo pipeline forecast: many leads through a workflow on a virtual clock.

A forecast file gives, for one workflow, where a lead goes from each state and how long it
takes: the probability of each trigger and a duration (fixed, uniform or triangular).
:func:`forecast` runs that many leads on a real :class:`Engine` (memory store, one virtual
clock), so the workflow's rules and data take part: a transition whose rule refuses because
the forecast supplies no data for it shows up as leads stalled in that state, with the rule.

The result is the expected funnel (how many leads reach each state), the conversion of each
stage, the final outcomes, and the time-to-close distribution per final state.
:func:`format_forecast` renders it with text histograms; :func:`plot_forecast` draws it with
matplotlib when that is installed.

The file format (see ``docs/simulation.md``)::

    workflow: deal
    leads: 1000
    start: 2026-01-05
    seed: 7
    data: {company: Forecast lead}
    from:
      lead:
        qualify: {p: 0.6, after: 3d..10d}
        lose: {p: 0.4, after: 1d..20d, data: {lost_reason: no budget}}
      opportunity.negotiation:
        first_purchase: {p: 0.5, after: 5d..10d..30d, data: {first_order_no: SO-1}}
        lose: {p: 0.5, after: 10d}
"""

from __future__ import annotations

import heapq
import importlib
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from crmflow._clock import VirtualClock, parse_duration
from crmflow._errors import CrmflowError, DefinitionError, InvalidData, UnknownInstance
from crmflow._suggest import suggest
from crmflow._types import Actor
from crmflow.engine._data import coerce_value
from crmflow.engine._loader import load_definitions
from crmflow.engine._model import SourcePos, TransitionDef, WorkflowDef
from crmflow.engine._runtime import Engine
from crmflow.engine._yaml import (
    DEFAULT_LIMITS,
    KeyPath,
    YamlDocument,
    format_path,
    read_text_file,
    read_yaml_text,
)

__all__ = [
    "Branch",
    "Duration",
    "DurationStats",
    "ForecastReport",
    "ForecastSpec",
    "FunnelRow",
    "StageConversion",
    "Stall",
    "forecast",
    "format_forecast",
    "load_forecast_file",
    "load_forecast_text",
    "plot_forecast",
]

#: Where the clock starts when the file gives no ``start`` (a Monday morning).
DEFAULT_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
#: The time of day a ``start`` given as a date means.
_START_OF_DAY = (9, 0)
#: Fires one lead may take before it counts as looping (internal transitions may repeat).
_MAX_FIRES_PER_LEAD = 1000

_TOP_KEYS = (
    "workflow",
    "version",
    "description",
    "leads",
    "start",
    "seed",
    "arrivals",
    "horizon",
    "roles",
    "data",
    "facts",
    "from",
)
_BRANCH_KEYS = ("p", "after", "data")
#: History kinds of a fired trigger (a host's call, a timer's, or one with an override).
_CHANGES = frozenset({"transition", "override"})


# -- the spec -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Duration:
    """A random duration: fixed (``3d``), uniform (``3d..10d``) or triangular (``3d..5d..20d``).

    ``mode`` is set for the triangular form only.
    """

    low: timedelta
    high: timedelta
    mode: timedelta | None = None
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse the duration syntax; raises :class:`ValueError` with the reason."""
        parts = [p.strip() for p in text.split("..")]
        if len(parts) > 3 or any(not p for p in parts):
            raise ValueError(
                f"bad duration {text!r}: write 3d (fixed), 3d..10d (uniform) or "
                "3d..5d..20d (triangular: low..most likely..high)"
            )
        try:
            spans = [parse_duration(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"bad duration {text!r}: each part is a number and one of s, m, h, d, w "
                "(3d, 12h, 1d 12h)"
            ) from None
        if spans != sorted(spans):
            raise ValueError(f"bad duration {text!r}: the parts must not decrease")
        if len(spans) == 1:
            return cls(spans[0], spans[0], text=text)
        if len(spans) == 2:
            return cls(spans[0], spans[1], text=text)
        return cls(spans[0], spans[2], spans[1], text=text)

    def sample(self, rng: random.Random) -> timedelta:
        """Draw one duration (whole seconds)."""
        if self.low == self.high:
            return self.low
        low, high = self.low.total_seconds(), self.high.total_seconds()
        if self.mode is None:
            seconds = rng.uniform(low, high)
        else:
            seconds = rng.triangular(low, high, self.mode.total_seconds())
        return timedelta(seconds=round(seconds))

    @property
    def mean(self) -> timedelta:
        """The expected value."""
        if self.mode is None:
            return (self.low + self.high) / 2
        return (self.low + self.mode + self.high) / 3


@dataclass(frozen=True)
class Branch:
    """One way out of a state: ``trigger`` with probability ``p`` after ``after``.

    ``data`` is passed with the fire (the fields the transition writes, already typed).
    """

    trigger: str
    p: float
    after: Duration
    data: Mapping[str, Any] = field(default_factory=dict)
    pos: SourcePos = field(default_factory=SourcePos, compare=False)


@dataclass(frozen=True)
class ForecastSpec:
    """A validated forecast file, bound to one workflow.

    Attributes:
        workflow: the workflow's name.
        version: the version it was checked against.
        leads: how many leads to simulate.
        start: when the first lead starts.
        seed: the random seed.
        arrivals: the time between one lead's start and the next (zero: all at once).
        horizon: how long after ``start`` the simulation runs (``None``: until every lead
            is closed or stalled).
        roles: the roles of the simulated user who starts leads and fires triggers.
        data: field values each lead starts with.
        facts: fact namespaces passed with every fire.
        branches: leaf state -> its branches, in file order.
        description: free text.
        source: the file name.
        positions: where top-level keys and each state's branches are written.

    """

    workflow: str
    version: int
    leads: int
    start: datetime
    seed: int
    arrivals: Duration
    horizon: timedelta | None
    roles: tuple[str, ...]
    data: Mapping[str, Any]
    facts: Mapping[str, Mapping[str, Any]]
    branches: Mapping[str, tuple[Branch, ...]]
    description: str = ""
    source: str = "<string>"
    positions: Mapping[str, SourcePos] = field(default_factory=dict, compare=False)


class _Reader:
    """Checks a forecast document against its workflow; collects positions for errors."""

    def __init__(self, doc: YamlDocument, workflows: Mapping[str, WorkflowDef]) -> None:
        self.doc = doc
        self.workflows = workflows

    def error(
        self,
        reason: str,
        path: KeyPath,
        *,
        key: bool = False,
        suggestions: Sequence[str] = (),
        hint: str = "",
    ) -> DefinitionError:
        pos = self.doc.key_pos(path) if key else self.doc.pos(path)
        return DefinitionError(
            reason,
            source=self.doc.source,
            line=pos.line,
            column=pos.column,
            path=format_path(path),
            suggestions=suggestions,
            hint=hint,
        )

    def mapping(self, value: Any, path: KeyPath, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(f"{what} must be a mapping", path)
        return value

    def check_keys(self, mapping: Mapping[str, Any], allowed: Sequence[str], path: KeyPath) -> None:
        for key in mapping:
            if key not in allowed:
                raise self.error(
                    f"unknown key {key!r}",
                    (*path, key),
                    key=True,
                    suggestions=suggest(key, allowed),
                    hint=f"allowed here: {', '.join(allowed)}",
                )

    def integer(self, data: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(f"{key} must be a whole number of at least {minimum}", (key,))
        return value

    def duration(self, value: Any, path: KeyPath) -> Duration:
        if not isinstance(value, str):
            raise self.error("a duration must be written like 3d, 3d..10d or 3d..5d..20d", path)
        try:
            return Duration.parse(value)
        except ValueError as exc:
            raise self.error(str(exc), path) from None

    def horizon(self, value: Any) -> timedelta | None:
        if value is None:
            return None
        span = self.duration(value, ("horizon",))
        if span.low != span.high:
            raise self.error("the horizon is one duration (180d), not a range", ("horizon",))
        return span.low

    def start(self, value: Any) -> datetime:
        if value is None:
            return DEFAULT_START
        text = str(value)
        try:
            if "T" in text or " " in text.strip():
                moment = datetime.fromisoformat(text)
                return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            day = date.fromisoformat(text)
        except ValueError:
            raise self.error(
                f"start {text!r} is not a date (2026-01-05) or a date and time "
                "(2026-01-05T09:00:00+00:00)",
                ("start",),
            ) from None
        return datetime(day.year, day.month, day.day, *_START_OF_DAY, tzinfo=UTC)

    def typed(self, name: str, type_: str, value: Any, path: KeyPath) -> Any:
        try:
            return coerce_value(name, type_, value)
        except InvalidData as exc:
            raise self.error(exc.reason, path) from None

    def read(self) -> ForecastSpec:
        data = self.mapping(self.doc.data, (), "a forecast file")
        self.check_keys(data, _TOP_KEYS, ())
        if "workflow" not in data:
            raise self.error("the workflow to forecast is missing", (), hint="add workflow: NAME")
        name = data["workflow"]
        if not isinstance(name, str) or name not in self.workflows:
            raise self.error(
                f"unknown workflow {name!r}",
                ("workflow",),
                suggestions=suggest(str(name), list(self.workflows)),
            )
        defn = self.workflows[name]
        version = data.get("version", defn.version)
        if version != defn.version:
            raise self.error(
                f"workflow {name!r} is loaded at version {defn.version}, not {version!r}",
                ("version",),
            )
        description = data.get("description", "")
        if not isinstance(description, str):
            raise self.error("description must be text", ("description",))
        roles = self.roles(defn, data.get("roles"))
        spec = ForecastSpec(
            workflow=name,
            version=defn.version,
            leads=self.integer(data, "leads", 1000, 1),
            start=self.start(data.get("start")),
            seed=self.integer(data, "seed", 0, 0),
            arrivals=self.duration(data.get("arrivals", "0s"), ("arrivals",)),
            horizon=self.horizon(data.get("horizon")),
            roles=roles,
            data=self.start_data(defn, data.get("data", {})),
            facts=self.facts(defn, data.get("facts", {})),
            branches=self.branches(defn, roles, data.get("from")),
            description=description,
            source=self.doc.source,
            positions={key: self.doc.pos((key,)) for key in data},
        )
        self.check_covered(defn, spec)
        return spec

    def roles(self, defn: WorkflowDef, value: Any) -> tuple[str, ...]:
        if value is None:
            return defn.roles
        if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
            raise self.error("roles must be a list of role names", ("roles",))
        for index, role in enumerate(value):
            if role not in defn.roles:
                raise self.error(
                    f"unknown role {role!r} of workflow {defn.name!r}",
                    ("roles", index),
                    suggestions=suggest(role, defn.roles),
                )
        return tuple(value)

    def start_data(self, defn: WorkflowDef, value: Any) -> dict[str, Any]:
        data = self.mapping(value, ("data",), "data")
        result: dict[str, Any] = {}
        for name, raw in data.items():
            if name not in defn.fields:
                raise self.error(
                    f"unknown field {name!r}",
                    ("data", name),
                    key=True,
                    suggestions=suggest(name, list(defn.fields)),
                )
            result[name] = self.typed(name, defn.fields[name].type, raw, ("data", name))
        return result

    def facts(self, defn: WorkflowDef, value: Any) -> dict[str, dict[str, Any]]:
        facts = self.mapping(value, ("facts",), "facts")
        result: dict[str, dict[str, Any]] = {}
        for namespace, attrs in facts.items():
            if namespace not in defn.facts:
                raise self.error(
                    f"unknown fact namespace {namespace!r}",
                    ("facts", namespace),
                    key=True,
                    suggestions=suggest(namespace, list(defn.facts)),
                )
            declared = defn.facts[namespace]
            values = self.mapping(attrs, ("facts", namespace), f"facts.{namespace}")
            result[namespace] = {}
            for attr, raw in values.items():
                path = ("facts", namespace, attr)
                if attr not in declared:
                    raise self.error(
                        f"unknown fact {namespace}.{attr}",
                        path,
                        key=True,
                        suggestions=suggest(attr, list(declared)),
                    )
                result[namespace][attr] = self.typed(
                    f"{namespace}.{attr}", declared[attr], raw, path
                )
        return result

    def branches(
        self, defn: WorkflowDef, roles: tuple[str, ...], value: Any
    ) -> dict[str, tuple[Branch, ...]]:
        if value is None:
            raise self.error(
                "'from' is missing: give the branches out of each state",
                (),
                hint="from: {lead: {qualify: {p: 0.6, after: 3d..10d}, ...}}",
            )
        states = self.mapping(value, ("from",), "'from'")
        leaves = [s.name for s in defn.states.values() if not s.children]
        result: dict[str, tuple[Branch, ...]] = {}
        for state, triggers in states.items():
            path: KeyPath = ("from", state)
            spec = defn.states.get(state)
            if spec is None:
                raise self.error(
                    f"unknown state {state!r}",
                    path,
                    key=True,
                    suggestions=suggest(state, leaves),
                )
            if spec.children:
                raise self.error(
                    f"{state!r} has sub-states; leads rest in those: give the branches per "
                    "sub-state",
                    path,
                    key=True,
                    suggestions=tuple(c for c in leaves if c.startswith(state + "."))[:3],
                )
            if spec.final:
                raise self.error(f"{state!r} is final: nothing leaves it", path, key=True)
            result[state] = self.state_branches(defn, roles, state, triggers, path)
        return result

    def state_branches(
        self,
        defn: WorkflowDef,
        roles: tuple[str, ...],
        state: str,
        value: Any,
        path: KeyPath,
    ) -> tuple[Branch, ...]:
        triggers = self.mapping(value, path, f"the branches from {state!r}")
        if not triggers:
            raise self.error(f"no branches from {state!r}", path)
        available: dict[str, TransitionDef] = {}
        for t in defn.transitions_from(state):
            available.setdefault(t.trigger, t)
        branches: list[Branch] = []
        total = Decimal(0)
        for trigger, item in triggers.items():
            here: KeyPath = (*path, trigger)
            transition = available.get(trigger)
            if transition is None:
                reason = (
                    f"trigger {trigger!r} does not fire from {state!r}"
                    if trigger in defn.triggers
                    else f"unknown trigger {trigger!r}"
                )
                raise self.error(
                    reason,
                    here,
                    key=True,
                    suggestions=suggest(trigger, list(available)) or tuple(available)[:3],
                )
            if transition.roles and not set(transition.roles) & set(roles):
                raise self.error(
                    f"{trigger!r} needs one of the roles {', '.join(transition.roles)}; the "
                    f"forecast acts with {', '.join(roles) or 'no roles'}",
                    here,
                    key=True,
                )
            branch = self.mapping(item, here, f"branch {trigger!r}")
            self.check_keys(branch, _BRANCH_KEYS, here)
            for key in ("p", "after"):
                if key not in branch:
                    raise self.error(
                        f"{key!r} is missing",
                        here,
                        key=True,
                        hint="write {p: 0.5, after: 3d..10d}",
                    )
            p = branch["p"]
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
                raise self.error("p must be a probability between 0 and 1", (*here, "p"))
            try:
                total += Decimal(self.doc.raw.get((*here, "p"), repr(p)))
            except InvalidOperation:  # a spelling YAML reads as a number but Decimal does not
                total += Decimal(repr(float(p)))
            branches.append(
                Branch(
                    trigger=trigger,
                    p=float(p),
                    after=self.duration(branch["after"], (*here, "after")),
                    data=self.branch_data(defn, transition, branch.get("data", {}), here),
                    pos=self.doc.key_pos(here),
                )
            )
        if total != 1:
            raise self.error(
                f"the probabilities from {state!r} add up to {total.normalize()}, not 1",
                path,
                key=True,
            )
        return tuple(branches)

    def branch_data(
        self, defn: WorkflowDef, transition: TransitionDef, value: Any, path: KeyPath
    ) -> dict[str, Any]:
        data = self.mapping(value, (*path, "data"), "data")
        result: dict[str, Any] = {}
        for name, raw in data.items():
            here = (*path, "data", name)
            if name not in defn.fields:
                raise self.error(
                    f"unknown field {name!r}",
                    here,
                    key=True,
                    suggestions=suggest(name, list(defn.fields)),
                )
            if name not in transition.writes:
                writes = ", ".join(transition.writes) or "no fields"
                raise self.error(
                    f"{transition.trigger!r} does not write {name!r} (it writes {writes})",
                    here,
                    key=True,
                    suggestions=suggest(name, transition.writes),
                )
            result[name] = self.typed(name, defn.fields[name].type, raw, here)
        return result

    def check_covered(self, defn: WorkflowDef, spec: ForecastSpec) -> None:
        """Every non-final state the branches lead to needs branches of its own."""
        start = defn.leaf_state(defn.initial_state)
        seen = {start}
        todo = [(start, "", "")]
        while todo:
            state, via, origin = todo.pop()
            if defn.states[state].final:
                continue
            if state not in spec.branches:
                how = "leads start there" if not via else f"{via!r} from {origin!r} leads there"
                raise self.error(
                    f"no branches from {state!r}, but {how}",
                    ("from",),
                    key=True,
                    hint=f"add {state}: {{TRIGGER: {{p: ..., after: ...}}}} under from:",
                )
            for branch in spec.branches[state]:
                if branch.p == 0:
                    continue
                transition = next(
                    t for t in defn.transitions_from(state) if t.trigger == branch.trigger
                )
                dest = defn.leaf_state(transition.dest)
                if dest not in seen:
                    seen.add(dest)
                    todo.append((dest, branch.trigger, state))


def _as_workflows(
    workflows: Mapping[str, WorkflowDef] | Iterable[WorkflowDef] | str | Path,
) -> dict[str, WorkflowDef]:
    if isinstance(workflows, str | Path):
        workflows = load_definitions(workflows)
    if isinstance(workflows, Mapping):
        return dict(workflows)
    newest: dict[str, WorkflowDef] = {}
    for defn in workflows:
        if defn.name not in newest or defn.version > newest[defn.name].version:
            newest[defn.name] = defn
    return newest


def load_forecast_text(
    text: str,
    source: str = "<string>",
    *,
    workflows: Mapping[str, WorkflowDef] | Iterable[WorkflowDef] | str | Path,
) -> ForecastSpec:
    """Read and check a forecast document against the workflow it names.

    Args:
        text: the YAML text.
        source: the file name used in errors.
        workflows: the workflows it may name: definitions (the newest version of each name
            is used), a mapping of name to definition, or a file or directory to load.

    Raises:
        DefinitionError: with file, line, column and suggestions: unknown keys, states or
            triggers, probabilities that do not add up to 1, bad durations, data of the
            wrong type, a state the branches reach that has no branches of its own.

    """
    doc = read_yaml_text(text, source)
    return _Reader(doc, _as_workflows(workflows)).read()


def load_forecast_file(
    path: str | Path,
    *,
    workflows: Mapping[str, WorkflowDef] | Iterable[WorkflowDef] | str | Path,
) -> ForecastSpec:
    """Read and check a forecast file (see :func:`load_forecast_text`)."""
    return load_forecast_text(read_text_file(path, DEFAULT_LIMITS), str(path), workflows=workflows)


# -- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FunnelRow:
    """How many leads reached a state (a compound state counts its sub-states' leads)."""

    state: str
    depth: int
    reached: int
    share: float
    final: bool = False


@dataclass(frozen=True)
class StageConversion:
    """How many of the leads that entered ``state`` left it by ``trigger``."""

    state: str
    trigger: str
    expected: float
    entered: int
    taken: int

    @property
    def rate(self) -> float:
        """``taken / entered`` (0 when no lead entered)."""
        return self.taken / self.entered if self.entered else 0.0


@dataclass(frozen=True)
class DurationStats:
    """A distribution of durations: count, mean and percentiles (linear interpolation)."""

    count: int
    mean: timedelta
    p10: timedelta
    p50: timedelta
    p90: timedelta
    minimum: timedelta
    maximum: timedelta

    @classmethod
    def of(cls, values: Sequence[timedelta]) -> DurationStats:
        """The statistics of ``values`` (at least one)."""
        ordered = sorted(values)
        seconds = [v.total_seconds() for v in ordered]
        return cls(
            count=len(ordered),
            mean=timedelta(seconds=sum(seconds) / len(seconds)),
            p10=timedelta(seconds=_percentile(seconds, 0.10)),
            p50=timedelta(seconds=_percentile(seconds, 0.50)),
            p90=timedelta(seconds=_percentile(seconds, 0.90)),
            minimum=ordered[0],
            maximum=ordered[-1],
        )


@dataclass(frozen=True)
class Stall:
    """Leads that stopped in a non-final state: a refused fire, or a timer moved them."""

    state: str
    trigger: str
    reason: str
    count: int


@dataclass(frozen=True)
class ForecastReport:
    """What :func:`forecast` found.

    Attributes:
        workflow: the workflow's name.
        version: its version.
        leads: leads simulated.
        seed: the seed used.
        start: when the first lead started.
        horizon: where the simulation stopped (``None``: it ran until nothing moved).
        funnel: every state in definition order with the leads that reached it.
        conversions: per state and trigger, leads that entered and left that way.
        outcomes: final state -> leads that ended there; ``open`` and ``stalled`` count the
            others.
        stalls: why leads stalled, most frequent first.
        open_states: state -> leads still open at the horizon.
        time_to_close: final state -> the distribution of the time from start to it.
        days_to_close: final state -> every lead's time to it in days, sorted (histograms).
        elapsed: seconds the run took (not compared).

    """

    workflow: str
    version: int
    leads: int
    seed: int
    start: datetime
    horizon: timedelta | None
    funnel: tuple[FunnelRow, ...]
    conversions: tuple[StageConversion, ...]
    outcomes: Mapping[str, int]
    stalls: tuple[Stall, ...]
    open_states: Mapping[str, int]
    time_to_close: Mapping[str, DurationStats]
    days_to_close: Mapping[str, tuple[float, ...]]
    elapsed: float = field(default=0.0, compare=False)


def _percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted values, interpolating between neighbours."""
    if len(ordered) == 1:
        return ordered[0]
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- the simulation -------------------------------------------------------------------------


def _placeholder(type_: str, index: int, start: datetime) -> Any:
    """A start value for a required field the forecast gives no value for."""
    if type_ == "str":
        return f"Lead {index + 1}"
    if type_ in ("int", "decimal"):
        return 0 if type_ == "int" else Decimal(0)
    if type_ == "bool":
        return False
    if type_ == "date":
        return start.date()
    return start


def forecast(
    defn: WorkflowDef,
    spec: ForecastSpec,
    *,
    leads: int | None = None,
    seed: int | None = None,
) -> ForecastReport:
    """Simulate ``spec``'s leads through ``defn`` on the engine and summarise the funnel.

    Each lead is an instance on one in-memory engine with a virtual clock. From each state a
    lead takes a branch drawn by its probability, waits its drawn duration, then the trigger
    is fired with the branch's data and the spec's facts; a refused fire leaves the lead
    stalled there (reported with the rules). Workflow timers fire at the next simulated
    event after they fall due.

    Args:
        defn: the workflow (the one ``spec`` was checked against).
        spec: the forecast, from :func:`load_forecast_file` or :func:`load_forecast_text`.
        leads: overrides ``spec.leads``.
        seed: overrides ``spec.seed``.

    Raises:
        DefinitionError: the engine refused a call the spec makes (a rule needs a fact the
            spec does not give, a required field is cleared ...), at the branch's position.

    """
    if (defn.name, defn.version) != (spec.workflow, spec.version):
        raise CrmflowError(
            f"the forecast is for {spec.workflow} v{spec.version}, not {defn.name} v{defn.version}"
        )
    count = spec.leads if leads is None else leads
    if count < 1:
        raise ValueError("leads must be at least 1")
    used_seed = spec.seed if seed is None else seed
    started = time.perf_counter()
    rng = random.Random(used_seed)
    clock = VirtualClock(spec.start)
    engine = Engine(
        [defn], rules_backend="python", load_entry_points=False, clock=clock, name="forecast"
    )
    try:
        stalls = _simulate(engine, clock, defn, spec, count, rng)
        report = _summarise(engine, defn, spec, count, used_seed, stalls)
    finally:
        engine.close()
    return replace(report, elapsed=time.perf_counter() - started)


def _choose(rng: random.Random, branches: Sequence[Branch]) -> Branch:
    roll = rng.random()
    cumulative = 0.0
    for branch in branches:
        cumulative += branch.p
        if roll < cumulative:
            return branch
    # Rounding may leave the top sliver of [0, 1) uncovered: it belongs to the last branch
    # that can be taken at all.
    return next(b for b in reversed(branches) if b.p > 0)


def _key(index: int) -> str:
    return f"lead-{index + 1:06d}"


def _simulate(
    engine: Engine,
    clock: VirtualClock,
    defn: WorkflowDef,
    spec: ForecastSpec,
    count: int,
    rng: random.Random,
) -> dict[int, tuple[str, str, str]]:
    """Run every lead; return lead -> (state, trigger, reason) for the stalled ones."""
    actor = Actor("forecast", spec.roles)
    has_timers = bool(defn.timers) or any(
        a.timer is not None for auto in defn.automations for a in auto.actions
    )
    end = spec.start + spec.horizon if spec.horizon is not None else None
    # (when, order, lead, the state the event was planned from, the branch); "" for a start.
    events: list[tuple[datetime, int, int, str, Branch | None]] = []
    order = 0
    moment = spec.start
    for index in range(count):
        events.append((moment, order, index, "", None))
        order += 1
        moment += spec.arrivals.sample(rng)
    heapq.heapify(events)
    stalled: dict[int, tuple[str, str, str]] = {}
    fires = [0] * count
    while events:
        at, _, index, planned, branch = heapq.heappop(events)
        if end is not None and at > end:
            break
        if at > clock.now():
            clock.set(at)
        if has_timers:
            engine.tick(deliver=False)
        key = _key(index)
        if branch is None:
            state = _start(engine, defn, spec, key, index, actor)
        else:
            state = engine.get(key).state if has_timers else planned
            if state == planned:
                fired = _fire(engine, spec, key, planned, branch, actor, stalled, index)
                fires[index] += 1
                if fired is None:
                    continue
                state = fired
        if defn.states[state].final:
            continue
        choices = spec.branches.get(state)
        if choices is None:
            # Only a timer can bring a lead where the forecast gives no branches.
            stalled[index] = (state, "", "no branches from this state in the forecast")
            continue
        if fires[index] >= _MAX_FIRES_PER_LEAD:
            stalled[index] = (state, "", f"still open after {_MAX_FIRES_PER_LEAD} fires")
            continue
        chosen = _choose(rng, choices)
        heapq.heappush(events, (at + chosen.after.sample(rng), order, index, state, chosen))
        order += 1
    return stalled


def _start(
    engine: Engine,
    defn: WorkflowDef,
    spec: ForecastSpec,
    key: str,
    index: int,
    actor: Actor,
) -> str:
    data = dict(spec.data)
    for name, field_def in defn.fields.items():
        if field_def.required and data.get(name) is None:
            data[name] = _placeholder(field_def.type, index, spec.start)
    try:
        return engine.start(defn.name, key, actor=actor, data=data).state
    except CrmflowError as exc:
        pos = spec.positions.get("data") or spec.positions.get("workflow") or SourcePos()
        raise DefinitionError(
            f"starting a lead failed: {exc}",
            source=spec.source,
            line=pos.line,
            column=pos.column,
            path="data",
        ) from exc


def _fire(
    engine: Engine,
    spec: ForecastSpec,
    key: str,
    state: str,
    branch: Branch,
    actor: Actor,
    stalled: dict[int, tuple[str, str, str]],
    index: int,
) -> str | None:
    """Fire the branch's trigger; the new state, or ``None`` when refused (lead stalled)."""
    try:
        result = engine.fire(
            key,
            branch.trigger,
            actor=actor,
            data=branch.data or None,
            facts=spec.facts or None,
        )
    except CrmflowError as exc:
        raise DefinitionError(
            f"firing {branch.trigger!r} from {state!r} failed: {exc}",
            source=spec.source,
            line=branch.pos.line,
            column=branch.pos.column,
            path=f"from.{state}.{branch.trigger}",
        ) from exc
    if not result.ok:
        reason = "; ".join(f"{r.rule}: {r.message}" for r in result.refusals)
        stalled[index] = (state, branch.trigger, reason)
        return None
    return result.state


def _summarise(
    engine: Engine,
    defn: WorkflowDef,
    spec: ForecastSpec,
    count: int,
    seed: int,
    stalled: Mapping[int, tuple[str, str, str]],
) -> ForecastReport:
    reached: dict[str, int] = dict.fromkeys(defn.states, 0)
    entered: dict[str, int] = {}
    taken: dict[tuple[str, str], int] = {}
    outcomes: dict[str, int] = dict.fromkeys(defn.final_states, 0)
    open_states: dict[str, int] = {}
    closing: dict[str, list[timedelta]] = {s: [] for s in defn.final_states}
    for index in range(count):
        key = _key(index)
        try:
            current = engine.get(key).state
        except UnknownInstance:
            # A horizon shorter than the arrivals: this lead never started.
            open_states["(not started)"] = open_states.get("(not started)", 0) + 1
            continue
        history = engine.history(key)
        began = history[0].at
        leaves: set[str] = set()
        ways: set[tuple[str, str]] = set()
        for entry in history:
            moved = entry.kind == "start" or (
                entry.kind in _CHANGES and entry.to_state and entry.to_state != entry.from_state
            )
            if entry.kind in _CHANGES:
                ways.add((entry.from_state, entry.trigger))
            if moved and entry.to_state:
                leaves.add(entry.to_state)
                if defn.states[entry.to_state].final:
                    closing[entry.to_state].append(entry.at - began)
        for state in {a for leaf in leaves for a in defn.ancestors(leaf)}:
            reached[state] += 1
        for leaf in leaves:
            entered[leaf] = entered.get(leaf, 0) + 1
        for way in ways:
            taken[way] = taken.get(way, 0) + 1
        if defn.states[current].final:
            outcomes[current] += 1
        elif index not in stalled:
            open_states[current] = open_states.get(current, 0) + 1
    stall_counts: dict[tuple[str, str, str], int] = {}
    for stall in stalled.values():
        stall_counts[stall] = stall_counts.get(stall, 0) + 1
    if stalled:
        outcomes["stalled"] = len(stalled)
    if open_states:
        outcomes["open"] = sum(open_states.values())
    funnel = tuple(
        FunnelRow(
            state=name,
            depth=len(defn.ancestors(name)) - 1,
            reached=reached[name],
            share=reached[name] / count,
            final=state.final,
        )
        for name, state in defn.states.items()
    )
    conversions = tuple(
        StageConversion(
            state=state,
            trigger=branch.trigger,
            expected=branch.p,
            entered=entered.get(state, 0),
            taken=taken.get((state, branch.trigger), 0),
        )
        for state in defn.states
        for branch in spec.branches.get(state, ())
    )
    return ForecastReport(
        workflow=defn.name,
        version=defn.version,
        leads=count,
        seed=seed,
        start=spec.start,
        horizon=spec.horizon,
        funnel=funnel,
        conversions=conversions,
        outcomes=outcomes,
        stalls=tuple(
            Stall(state, trigger, reason, n)
            for (state, trigger, reason), n in sorted(
                stall_counts.items(), key=lambda item: (-item[1], item[0])
            )
        ),
        open_states=dict(sorted(open_states.items())),
        time_to_close={s: DurationStats.of(v) for s, v in closing.items() if v},
        days_to_close={
            s: tuple(sorted(v.total_seconds() / 86400 for v in values))
            for s, values in closing.items()
            if values
        },
    )


# -- output ---------------------------------------------------------------------------------


def _days(span: timedelta) -> str:
    return f"{span.total_seconds() / 86400:.1f}"


def _bar(share: float, width: int) -> str:
    return "#" * round(share * width)


def histogram(values: Sequence[float], *, bins: int = 10, width: int = 40) -> list[str]:
    """Lines of a text histogram of ``values`` (days): range, bar, count."""
    if not values:
        return []
    low, high = min(values), max(values)
    if high == low:
        return [f"  {low:7.1f}          | {'#' * width} {len(values)}"]
    size = (high - low) / bins
    counts = [0] * bins
    for value in values:
        counts[min(int((value - low) / size), bins - 1)] += 1
    most = max(counts)
    return [
        f"  {low + i * size:7.1f} - {low + (i + 1) * size:7.1f} | "
        f"{'#' * round(n / most * width):<{width}} {n}"
        for i, n in enumerate(counts)
    ]


def format_forecast(report: ForecastReport, *, histograms: bool = True) -> str:
    """Render a forecast as text: funnel, stage conversion, outcomes, time to close."""
    lines = [
        f"Forecast for {report.workflow} v{report.version}: {report.leads} leads from "
        f"{report.start:%Y-%m-%d %H:%M} UTC (seed {report.seed})"
        + (f", horizon {_days(report.horizon)} days" if report.horizon is not None else ""),
        "",
        "Funnel (leads reaching each state)",
    ]
    width = max(len(r.state.rsplit(".", 1)[-1]) + 2 * r.depth for r in report.funnel) + 2
    for row in report.funnel:
        label = "  " * row.depth + row.state.rsplit(".", 1)[-1]
        lines.append(
            f"  {label:<{width}} {row.reached:>7}  {row.share * 100:5.1f}%  {_bar(row.share, 30)}"
        )
    if report.conversions:
        lines += ["", "Conversion by stage (of the leads that entered the state)"]
        labels = [f"{c.state} -> {c.trigger}" for c in report.conversions]
        size = max(len(label) for label in labels) + 2
        for label, c in zip(labels, report.conversions, strict=True):
            lines.append(
                f"  {label:<{size}} {c.taken:>7} of {c.entered:<7} {c.rate * 100:5.1f}%  "
                f"(expected {c.expected * 100:.1f}%)"
            )
    lines += ["", "Outcomes"]
    for outcome, n in report.outcomes.items():
        lines.append(f"  {outcome:<{width}} {n:>7}  {n / report.leads * 100:5.1f}%")
    for stall in report.stalls:
        via = f" ({stall.trigger} refused)" if stall.trigger else ""
        lines.append(f"    stalled in {stall.state}{via}: {stall.reason} [{stall.count}]")
    for state, n in report.open_states.items():
        lines.append(f"    open in {state}: {n}")
    if report.time_to_close:
        lines += [
            "",
            "Time to close (days)",
            f"  {'':<{width}} {'leads':>7} {'mean':>7} {'p10':>7} {'p50':>7} {'p90':>7} "
            f"{'min':>7} {'max':>7}",
        ]
        for state, s in report.time_to_close.items():
            lines.append(
                f"  {state:<{width}} {s.count:>7} {_days(s.mean):>7} {_days(s.p10):>7} "
                f"{_days(s.p50):>7} {_days(s.p90):>7} {_days(s.minimum):>7} "
                f"{_days(s.maximum):>7}"
            )
    if histograms:
        for state, values in report.days_to_close.items():
            lines += ["", f"Days to {state} ({len(values)} leads)", *histogram(values)]
    return "\n".join(lines)


def plot_forecast(report: ForecastReport, path: str | Path) -> bool:
    """Draw the funnel and the time-to-close histograms to ``path`` (``.png`` or ``.svg``).

    Returns ``False`` without writing anything when matplotlib is not installed (the text
    histograms of :func:`format_forecast` stand in); ``True`` once the file is written.

    Raises:
        ValueError: the file name ends in neither ``.png`` nor ``.svg``.

    """
    target = Path(path)
    if target.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"plot to a .png or .svg file, not {target.name!r}")
    try:
        # Imported by name: matplotlib is optional and has no place among the dependencies.
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")  # no display needed: the plot goes to a file
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return False
    finals = [s for s, values in report.days_to_close.items() if values]
    figure, axes = plt.subplots(
        1 + len(finals), 1, figsize=(8, 3 + 2.5 * len(finals)), squeeze=False
    )
    funnel = axes[0][0]
    rows = list(reversed(report.funnel))
    funnel.barh(
        ["  " * r.depth + r.state.rsplit(".", 1)[-1] for r in rows], [r.reached for r in rows]
    )
    funnel.set_title(f"{report.workflow}: leads reaching each state ({report.leads} leads)")
    for row_axes, state in zip(axes[1:], finals, strict=True):
        axis = row_axes[0]
        axis.hist(report.days_to_close[state], bins=20)
        axis.set_title(f"days to {state}")
        axis.set_xlabel("days")
        axis.set_ylabel("leads")
    figure.tight_layout()
    figure.savefig(target)
    plt.close(figure)
    return True
