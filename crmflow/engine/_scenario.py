"""Scenario files: stories on a virtual clock that check a workflow does what the client asked.

A scenario file names one workflow and holds one or more scenarios. Each scenario starts at a
moment, then runs steps in order (start an instance, fire a trigger, work on a task, let time
pass, tick the timers) and checks expectations after any step (the state, who was told, which
rule refused ...). The reference is ``docs/implementer-guide.md``; in short::

    workflow: sales_order
    org: ../../examples/org.yaml
    timezone: Asia/Shanghai
    facts: {customer: {name: ACME, credit_limit: 10000, open_balance: 5000, payment_terms: net30}}
    scenarios:
      - name: credit limit needs a manager's override
        start: 2026-01-05T09:00
        steps:
          - start: {key: SO-1, as: alice, data: {customer_id: C1, amount: 8000}}
          - fire: {trigger: approve, as: alice}
            expect: {refused_by: credit_limit, state: draft}
          - after: 1h
          - fire: {trigger: approve, as: sam, override: pays on time}
            expect: {state: approved, history: {last: {kind: override, actor: sam}}}

This module reads and checks a file against the loaded workflow *before* anything runs, so a
misspelled trigger, state, rule, field, user, task, step kind or key is a
:class:`~crmflow.DefinitionError` with file, line, column and the nearest names, like an error
in a workflow file. Running the steps is :mod:`crmflow.engine._simulate`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crmflow._clock import parse_duration
from crmflow._errors import DefinitionError, InvalidData
from crmflow._suggest import suggest
from crmflow._task_types import TASK_STATUSES
from crmflow._types import Actor
from crmflow.engine._data import coerce_value
from crmflow.engine._loader import load_definitions
from crmflow.engine._model import NOWHERE, SourcePos, WorkflowDef
from crmflow.engine._yaml import KeyPath, YamlDocument, format_path, read_yaml_file, read_yaml_text
from crmflow.plugins.org_directory import OrgDirectory, load_org_file

__all__ = [
    "ACTIONS",
    "EXPECTATIONS",
    "Expectation",
    "Scenario",
    "ScenarioFile",
    "Step",
    "collect_scenario_errors",
    "default_workflows_path",
    "is_scenario_file",
    "load_scenario_file",
    "load_scenario_text",
    "scenario_files",
]

#: Step actions and the keys each takes (``as`` is the acting user).
ACTIONS: Mapping[str, frozenset[str]] = {
    "start": frozenset({"key", "as", "data", "owner"}),
    "fire": frozenset({"key", "trigger", "as", "data", "facts", "override", "idempotency_key"}),
    "tick": frozenset({"at", "after"}),
    "complete_task": frozenset({"key", "task", "as", "result", "note"}),
    "defer_task": frozenset({"key", "task", "as", "reason", "due"}),
    "reopen_task": frozenset({"key", "task", "as", "note"}),
    "reassign_task": frozenset({"key", "task", "to", "as", "note"}),
    "reassign": frozenset({"key", "to", "as", "keep", "reason", "facts"}),
    "record_cost": frozenset({"key", "category", "amount", "as", "note"}),
    "facts": frozenset(),
}
_REQUIRED: Mapping[str, tuple[str, ...]] = {
    "start": ("key", "as"),
    "fire": ("trigger", "as"),
    "complete_task": ("task", "as"),
    "defer_task": ("task", "as", "reason"),
    "reopen_task": ("task", "as"),
    "reassign_task": ("task", "to", "as"),
    "reassign": ("to", "as"),
    "record_cost": ("category", "amount", "as"),
}
#: Keys a step may have besides its action.
_STEP_EXTRAS = frozenset({"at", "after", "expect", "note"})

#: Expectation keys (see the implementer guide for what each compares).
EXPECTATIONS = frozenset(
    {
        "key",
        "ok",
        "refused",
        "refused_by",
        "warned_by",
        "message_contains",
        "error",
        "error_contains",
        "state",
        "owner",
        "data",
        "notified",
        "not_notified",
        "tasks_open",
        "tasks",
        "history",
        "effects",
        "timers",
        "progress",
        "costs",
    }
)
_NOTIFIED_KEYS = frozenset(
    {"to", "intended", "subject_contains", "body_contains", "channel", "event"}
)
_HISTORY_KEYS = frozenset({"last", "count", "includes"})
_ENTRY_KEYS = frozenset({"kind", "actor", "trigger", "from", "to", "reason_contains"})
HISTORY_KINDS = (
    "start",
    "transition",
    "override",
    "refused",
    "denied",
    "task",
    "cost",
    "reassign",
    "timer",
)
EFFECTS = (
    "data_changed",
    "tasks_opened",
    "tasks_cancelled",
    "timers_set",
    "timers_cancelled",
    "notifications",
    "automations",
    "actions",
    "owner_changed",
    "tasks_moved",
    "tasks_kept",
)
_PROGRESS_KEYS = ("done", "open", "deferred", "overdue", "cancelled", "percent")
#: Exception names ``expect: {error: ...}`` accepts.
ERRORS = (
    "CrmflowError",
    "PermissionDenied",
    "InvalidData",
    "UnknownTrigger",
    "UnknownTask",
    "UnknownInstance",
    "InstanceExists",
    "MissingFact",
    "ConcurrencyConflict",
)
#: Refusals that no rule of the workflow makes (roles, task operations, facts).
PSEUDO_RULES = ("roles", "facts", "depends_on", "status", "deferrable", "assignee")
_TOP_KEYS = frozenset(
    {
        "workflow",
        "workflows",
        "org",
        "calendar",
        "timezone",
        "start",
        "facts",
        "actors",
        "description",
        "scenarios",
    }
)
_SCENARIO_KEYS = frozenset({"name", "description", "start", "facts", "steps"})
_DEFAULT_START = (2026, 1, 5, 9, 0)
_TOP_LEVEL_SCENARIOS = re.compile(r"^scenarios\s*:", re.MULTILINE)


@dataclass(frozen=True)
class Expectation:
    """One expectation of a step: ``name`` (a key under ``expect``), the value, its position."""

    name: str
    value: Any
    pos: SourcePos = NOWHERE


@dataclass(frozen=True)
class Step:
    """One step of a scenario, checked against the workflow and ready to run.

    Attributes:
        number: 1-based position in the scenario.
        action: the action (a key of :data:`ACTIONS`), ``wait`` (only ``at``/``after``) or
            ``check`` (only ``expect``).
        args: the action's arguments, typed (decimals, dates, actors resolved).
        key: the instance the step is about (given, or the one the previous step was about).
        actor: who acts (``None`` for ``tick``, ``wait``, ``check`` and ``facts``).
        at: the virtual time the action runs at.
        facts: the host facts in effect for the step.
        expect: the expectations, in the order written.
        pos: where the step starts.
        note: a free-text remark shown in the timeline.

    """

    number: int
    action: str
    args: Mapping[str, Any]
    key: str | None
    actor: Actor | None
    at: datetime
    facts: Mapping[str, Mapping[str, Any]]
    expect: tuple[Expectation, ...] = ()
    pos: SourcePos = NOWHERE
    note: str = ""

    @property
    def expects_failure(self) -> bool:
        """Whether the step says its action is refused or raises (otherwise it must succeed)."""
        names = {e.name for e in self.expect}
        if names & {"error", "error_contains", "refused_by"}:
            return True
        for e in self.expect:
            if (e.name == "ok" and e.value is False) or (e.name == "refused" and e.value is True):
                return True
        return False

    @property
    def expects_error(self) -> bool:
        """Whether the step expects its action to raise an error."""
        return any(e.name in ("error", "error_contains") for e in self.expect)

    def label(self) -> str:
        """A short description: ``fire approve on SO-1 as sam``."""
        a = self.args
        who = f" as {self.actor.id}" if self.actor is not None else ""
        on = f" on {self.key}" if self.key else ""
        if self.action == "start":
            return f"start {self.key}{who}"
        if self.action == "fire":
            return f"fire {a['trigger']}{on}{who}"
        if self.action in ("complete_task", "defer_task", "reopen_task"):
            return f"{self.action} {a['task']}{on}{who}"
        if self.action == "reassign_task":
            return f"reassign_task {a['task']}{on} to {a['to']}{who}"
        if self.action == "reassign":
            return f"reassign{on} to {a['to']}{who}"
        if self.action == "record_cost":
            return f"record_cost {a['category']} {a['amount']}{on}{who}"
        return self.action


@dataclass(frozen=True)
class Scenario:
    """One story: a name, a start time, steps."""

    name: str
    source: str
    workflow: str
    start: datetime
    timezone: tzinfo
    steps: tuple[Step, ...]
    facts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""
    pos: SourcePos = NOWHERE

    @property
    def keys(self) -> tuple[str, ...]:
        """The instances the scenario starts, in order."""
        return tuple(s.key for s in self.steps if s.action == "start" and s.key is not None)


@dataclass(frozen=True)
class ScenarioFile:
    """A checked scenario file and what running it needs.

    Attributes:
        source: the file name.
        workflow: the workflow its scenarios are about.
        definitions: every workflow loaded beside it (the engine gets them all).
        workflows_path: where the definitions came from.
        org: the org directory, when the file names one.
        org_path: the org directory's file.
        calendar_path: the business calendar's file, when the file names one.
        actors: actors declared in the file (by id).
        scenarios: the scenarios, in file order.
        pos: the position of ``workflow:``.

    """

    source: str
    workflow: str
    definitions: tuple[WorkflowDef, ...]
    workflows_path: Path | None
    org: OrgDirectory | None
    org_path: Path | None
    calendar_path: Path | None
    actors: Mapping[str, Actor]
    scenarios: tuple[Scenario, ...]
    pos: SourcePos = NOWHERE

    @property
    def definition(self) -> WorkflowDef:
        """The newest loaded version of the file's workflow."""
        found = [d for d in self.definitions if d.name == self.workflow]
        return max(found, key=lambda d: d.version)


# -- finding files --------------------------------------------------------------------------


def is_scenario_file(path: str | Path) -> bool:
    """Whether ``path`` is a scenario file by the collection rule.

    That is a ``*.scenario.yaml`` / ``*.scenario.yml`` file anywhere, or a ``*.yaml`` /
    ``*.yml`` file below a directory named ``scenarios`` whose text has a top-level
    ``scenarios:`` key (workflow files never do: the key is reserved there).
    """
    file = Path(path)
    name = file.name
    if name.endswith((".scenario.yaml", ".scenario.yml")):
        return True
    if file.suffix not in (".yaml", ".yml"):
        return False
    if not any(parent.name == "scenarios" for parent in file.parents):
        return False
    try:
        with open(file, encoding="utf-8", errors="replace") as handle:
            head = handle.read(1024 * 1024)
    except OSError:
        return False
    return _TOP_LEVEL_SCENARIOS.search(head) is not None


def scenario_files(path: str | Path) -> list[Path]:
    """The scenario files at ``path``: the file itself, or those below a directory.

    Below a directory, :func:`is_scenario_file` decides (hidden directories are skipped); a
    directory named ``scenarios`` counts for the files directly in it too.

    Raises:
        DefinitionError: when ``path`` does not exist.

    """
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DefinitionError("no such file or directory", source=str(root))
    found = []
    for candidate in sorted(root.rglob("*")):
        relative = candidate.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if candidate.is_file() and is_scenario_file(candidate):
            found.append(candidate)
    return found


def default_workflows_path(scenario: str | Path) -> Path:
    """Where a scenario (or forecast) file's workflows are when neither file nor caller says.

    The directory above the nearest enclosing ``scenarios`` (or ``forecasts``) directory
    (``workflows/scenarios/deal.yaml`` -> ``workflows/``), else the file's own directory
    (``workflows/deal.scenario.yaml`` -> ``workflows/``).
    """
    file = Path(scenario)
    for parent in file.parents:
        if parent.name in ("scenarios", "forecasts"):
            return parent.parent
    return file.parent


# -- loading --------------------------------------------------------------------------------


def load_scenario_file(
    path: str | Path,
    *,
    workflows: str | Path | Sequence[WorkflowDef] | None = None,
) -> ScenarioFile:
    """Read and check a scenario file against its workflow.

    ``workflows`` is where the workflows are (a directory, a file, or loaded definitions); a
    ``workflows:`` key in the file wins over it, and without either the default is
    :func:`default_workflows_path`.

    Raises:
        DefinitionError: the first problem in the file (see :func:`collect_scenario_errors`
            for all of them), or in the workflows it reads.

    """
    loaded, errors = _load(read_yaml_file(path), Path(path).parent, workflows, Path(path))
    if errors:
        raise errors[0]
    assert loaded is not None
    return loaded


def load_scenario_text(
    text: str,
    source: str = "<string>",
    *,
    workflows: str | Path | Sequence[WorkflowDef],
    base: str | Path = ".",
) -> ScenarioFile:
    """Like :func:`load_scenario_file`, from text; relative paths are read from ``base``.

    Raises:
        DefinitionError: the first problem in the text.

    """
    loaded, errors = _load(read_yaml_text(text, source), Path(base), workflows, None)
    if errors:
        raise errors[0]
    assert loaded is not None
    return loaded


def collect_scenario_errors(
    path: str | Path, *, workflows: str | Path | Sequence[WorkflowDef] | None = None
) -> list[DefinitionError]:
    """Every problem in a scenario file, in file order (empty when it is fine)."""
    try:
        doc = read_yaml_file(path)
    except DefinitionError as exc:
        return [exc]
    _, errors = _load(doc, Path(path).parent, workflows, Path(path))
    return errors


def _load(
    doc: YamlDocument,
    base: Path,
    workflows: str | Path | Sequence[WorkflowDef] | None,
    file: Path | None,
) -> tuple[ScenarioFile | None, list[DefinitionError]]:
    checker = _Checker(doc, base)
    try:
        result = checker.file(workflows, file)
    except _Stop:
        result = None
    errors = sorted(checker.errors, key=lambda e: (e.line, e.column))
    return (None if errors else result), errors


class _Stop(Exception):
    """Internal: a problem that makes checking the rest of the file pointless."""


def _describe(value: Any) -> str:
    return type(value).__name__ if value is not None else "nothing"


class _Checker:
    """Walks a scenario document, collecting errors and building the typed scenarios."""

    def __init__(self, doc: YamlDocument, base: Path) -> None:
        self.doc = doc
        self.base = base
        self.errors: list[DefinitionError] = []
        self.defn: WorkflowDef | None = None
        self.org: OrgDirectory | None = None
        self.actors: dict[str, Actor] = {}
        self.tz: tzinfo = UTC
        self.tz_given = False

    # -- reporting ----------------------------------------------------------------------

    def error(
        self,
        path: KeyPath,
        reason: str,
        *,
        suggestions: Iterable[str] = (),
        hint: str = "",
        at_key: bool = False,
    ) -> None:
        pos = self.doc.key_pos(path) if at_key else self.doc.pos(path)
        self.errors.append(
            DefinitionError(
                reason,
                source=self.doc.source,
                line=pos.line,
                column=pos.column,
                path=format_path(path),
                suggestions=tuple(suggestions),
                hint=hint,
            )
        )

    def unknown(
        self, path: KeyPath, what: str, name: Any, known: Iterable[str], *, at_key: bool = False
    ) -> None:
        known = list(known)
        self.error(
            path, f"unknown {what} {name!r}", suggestions=suggest(str(name), known), at_key=at_key
        )

    def keys(self, mapping: Mapping[str, Any], path: KeyPath, allowed: Iterable[str]) -> bool:
        """Report keys of ``mapping`` not in ``allowed``; true when all are known."""
        allowed = sorted(allowed)
        fine = True
        for key in mapping:
            if key not in allowed:
                self.error(
                    (*path, key),
                    f"unknown key {key!r}",
                    suggestions=suggest(key, allowed),
                    at_key=True,
                )
                fine = False
        return fine

    def mapping(self, value: Any, path: KeyPath, what: str) -> dict[str, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"{what} must be a mapping, not {_describe(value)}")
            return None
        return value

    def text(self, value: Any, path: KeyPath, what: str) -> str | None:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.error(path, f"{what} must be text, not {_describe(value)}")
            return None
        return str(value) if not isinstance(value, float) else self.doc.raw.get(path, str(value))

    def names(self, value: Any, path: KeyPath, what: str) -> list[tuple[str, KeyPath]]:
        """A name or a list of names, each with its path."""
        if isinstance(value, str):
            return [(value, path)]
        if isinstance(value, list):
            out = []
            for i, item in enumerate(value):
                if isinstance(item, str):
                    out.append((item, (*path, i)))
                else:
                    self.error((*path, i), f"{what} must be a name, not {_describe(item)}")
            return out
        self.error(path, f"{what} must be a name or a list of names, not {_describe(value)}")
        return []

    # -- the file -----------------------------------------------------------------------

    def file(
        self, workflows: str | Path | Sequence[WorkflowDef] | None, file: Path | None
    ) -> ScenarioFile:
        data = self.doc.data
        if not isinstance(data, dict):
            self.error((), "a scenario file must be a mapping with 'workflow' and 'scenarios'")
            raise _Stop
        self.keys(data, (), _TOP_KEYS)
        for required in ("workflow", "scenarios"):
            if required not in data:
                hint = (
                    "this looks like a workflow file; scenario files name a workflow and "
                    "list scenarios"
                    if "states" in data
                    else ""
                )
                self.error((), f"missing required key {required!r}", hint=hint)
        if "workflow" not in data or "scenarios" not in data:
            raise _Stop
        if "timezone" in data:
            self.tz = self.zone(data["timezone"], ("timezone",))
            self.tz_given = True
        definitions, where = self.definitions(data, workflows, file)
        name = data["workflow"]
        names = sorted({d.name for d in definitions})
        if not isinstance(name, str) or name not in names:
            self.error(
                ("workflow",),
                f"no workflow named {name!r} under {where}",
                suggestions=suggest(str(name), names),
            )
            raise _Stop
        self.defn = max((d for d in definitions if d.name == name), key=lambda d: d.version)
        org_path = self.path_key(data, "org")
        if org_path is not None:
            try:
                self.org = load_org_file(org_path)
            except DefinitionError as exc:
                self.errors.append(exc)
        calendar_path = self.path_key(data, "calendar")
        if calendar_path is not None:
            self.calendar(calendar_path)
        self.declared_actors(data.get("actors"))
        facts = self.facts(data.get("facts"), ("facts",), {})
        start = self.moment(data["start"], ("start",)) if "start" in data else None
        scenarios = self.scenarios(data["scenarios"], facts, start)
        return ScenarioFile(
            source=self.doc.source,
            workflow=name,
            definitions=tuple(definitions),
            workflows_path=where,
            org=self.org,
            org_path=org_path,
            calendar_path=calendar_path,
            actors=dict(self.actors),
            scenarios=tuple(scenarios),
            pos=self.doc.pos(("workflow",)),
        )

    def definitions(
        self,
        data: Mapping[str, Any],
        workflows: str | Path | Sequence[WorkflowDef] | None,
        file: Path | None,
    ) -> tuple[list[WorkflowDef], Path | None]:
        if "workflows" in data:
            where = self.path_key(data, "workflows")
            if where is None:
                raise _Stop
        elif workflows is None:
            if file is None:
                self.error((), "say where the workflows are (a 'workflows:' key)")
                raise _Stop
            where = default_workflows_path(file)
        elif isinstance(workflows, str | Path):
            where = Path(workflows)
        else:
            return list(workflows), None
        try:
            return load_definitions(where), where
        except DefinitionError as exc:
            self.errors.append(exc)
            raise _Stop from None

    def path_key(self, data: Mapping[str, Any], key: str) -> Path | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.error((key,), f"{key} must be a path, not {_describe(value)}")
            return None
        target = self.base / value
        if not target.exists():
            self.error(
                (key,),
                f"{value!r} does not exist (looked for {target})",
                hint="paths are relative to the scenario file",
            )
            return None
        return target

    def calendar(self, path: Path) -> None:
        from crmflow.engine._calendar import load_calendar_file

        try:
            load_calendar_file(path)
        except DefinitionError as exc:
            self.errors.append(exc)

    def zone(self, value: Any, path: KeyPath) -> tzinfo:
        if not isinstance(value, str):
            self.error(path, f"a time zone must be an IANA name, not {_describe(value)}")
            return UTC
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            from crmflow.engine._calendar import _zone_suggestions

            self.error(path, f"unknown time zone {value!r}", suggestions=_zone_suggestions(value))
            return UTC

    # -- people -------------------------------------------------------------------------

    def declared_actors(self, value: Any) -> None:
        actors = self.mapping(value, ("actors",), "actors")
        for actor_id, spec in (actors or {}).items():
            if spec is not None and not isinstance(spec, dict):
                self.error(("actors", actor_id), "an actor is {roles: [...], org: unit}")
                continue
            actor = self.inline_actor({"id": actor_id, **(spec or {})}, ("actors", actor_id))
            if actor is not None:
                self.actors[actor_id] = actor

    def inline_actor(self, spec: Any, path: KeyPath) -> Actor | None:
        if not isinstance(spec, dict):
            self.error(path, f"an actor must be a mapping with id and roles, not {_describe(spec)}")
            return None
        if not self.keys(spec, path, ("id", "roles", "org")):
            return None
        actor_id = spec.get("id")
        if not isinstance(actor_id, str) or not actor_id:
            self.error(path, "an actor needs an id")
            return None
        roles = self.names(spec.get("roles") or [], (*path, "roles"), "a role")
        assert self.defn is not None
        declared = self.defn.roles
        for role, role_path in roles:
            if declared and role not in declared:
                self.error(
                    role_path,
                    f"workflow {self.defn.name!r} has no role {role!r}",
                    suggestions=suggest(role, declared),
                )
        unit = spec.get("org", "")
        return Actor(actor_id, {r for r, _ in roles}, org=str(unit or ""))

    def users(self) -> list[str]:
        known = set(self.actors)
        if self.org is not None:
            known.update(self.org.users(include_inactive=True))
        return sorted(known)

    def user(self, value: Any, path: KeyPath) -> str | None:
        """A user id that must exist in the org directory or among the declared actors."""
        if not isinstance(value, str) or not value:
            self.error(path, f"a user must be a user id, not {_describe(value)}")
            return None
        if self.org is None and not self.actors:
            return value  # nothing to check against: any id is a user
        if value not in self.users():
            self.unknown(path, "user", value, self.users())
            return None
        return value

    def actor(self, value: Any, path: KeyPath) -> Actor | None:
        if isinstance(value, dict):
            return self.inline_actor(value, path)
        if not isinstance(value, str) or not value:
            self.error(path, f"'as' must be a user id or {{id, roles}}, not {_describe(value)}")
            return None
        if value in self.actors:
            return self.actors[value]
        if self.org is not None and value in self.org:
            return self.org.actor(value)
        if self.org is None and not self.actors:
            self.error(
                path,
                f"unknown user {value!r}: the file has no org directory and no actors",
                hint="add 'org: path/to/org.yaml', declare 'actors:', or write "
                "{id: x, roles: [...]}",
            )
            return None
        self.unknown(path, "user", value, self.users())
        return None

    # -- values -------------------------------------------------------------------------

    def moment(self, value: Any, path: KeyPath) -> datetime | None:
        text = self.doc.raw.get(path, value) if not isinstance(value, str) else value
        if not isinstance(text, str):
            self.error(path, f"expected a date and time (2026-01-05T09:00), not {_describe(value)}")
            return None
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            self.error(path, f"{text!r} is not a date and time (write 2026-01-05T09:00+08:00)")
            return None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=self.tz)

    def duration(self, value: Any, path: KeyPath) -> timedelta | None:
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.error(path, str(exc))
            return None

    def typed(self, type_name: str, value: Any, path: KeyPath, what: str) -> Any:
        """Convert a YAML value to ``type_name`` (decimals from the text as written)."""
        if type_name == "decimal" and isinstance(value, float):
            value = self.doc.raw.get(path, repr(value))
        if type_name == "datetime" and isinstance(value, str):
            parsed = self.moment(value, path)
            return parsed
        try:
            return coerce_value(what, type_name, value)
        except InvalidData as exc:
            self.error(path, f"{what}: {exc.reason}")
            return None

    def field_values(
        self, value: Any, path: KeyPath, *, writes: Sequence[str] | None = None, trigger: str = ""
    ) -> dict[str, Any]:
        data = self.mapping(value, path, "data")
        assert self.defn is not None
        fields = self.defn.fields
        out: dict[str, Any] = {}
        for name, raw in (data or {}).items():
            if name not in fields:
                self.error(
                    (*path, name),
                    f"{name!r} is not a field of workflow {self.defn.name!r}",
                    suggestions=suggest(name, list(fields)),
                    at_key=True,
                )
                continue
            if writes is not None and name not in writes:
                allowed = ", ".join(writes) or "no fields"
                self.error(
                    (*path, name),
                    f"trigger {trigger!r} may not change {name!r} (it writes {allowed})",
                    at_key=True,
                )
                continue
            out[name] = self.typed(fields[name].type, raw, (*path, name), name)
        return out

    def facts(
        self, value: Any, path: KeyPath, base: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """Facts merged over ``base`` (attribute by attribute), checked against the workflow."""
        merged = {ns: dict(attrs) for ns, attrs in base.items()}
        given = self.mapping(value, path, "facts")
        assert self.defn is not None
        declared = self.defn.facts
        for namespace, attrs in (given or {}).items():
            ns_path = (*path, namespace)
            if namespace not in declared:
                hint = "" if declared else f"workflow {self.defn.name!r} declares no facts"
                self.error(
                    ns_path,
                    f"{namespace!r} is not a fact namespace of workflow {self.defn.name!r}",
                    suggestions=suggest(namespace, list(declared)),
                    hint=hint,
                    at_key=True,
                )
                continue
            values = self.mapping(attrs, ns_path, f"facts.{namespace}")
            target = merged.setdefault(namespace, {})
            for attribute, raw in (values or {}).items():
                if attribute not in declared[namespace]:
                    self.error(
                        (*ns_path, attribute),
                        f"{namespace} has no attribute {attribute!r}",
                        suggestions=suggest(attribute, list(declared[namespace])),
                        at_key=True,
                    )
                    continue
                target[attribute] = self.typed(
                    declared[namespace][attribute],
                    raw,
                    (*ns_path, attribute),
                    f"{namespace}.{attribute}",
                )
        return merged

    # -- scenarios ----------------------------------------------------------------------

    def scenarios(
        self,
        value: Any,
        facts: Mapping[str, Mapping[str, Any]],
        start: datetime | None,
    ) -> list[Scenario]:
        if not isinstance(value, list) or not value:
            self.error(("scenarios",), "scenarios must be a non-empty list of scenarios")
            return []
        out = []
        seen: dict[str, int] = {}
        for i, spec in enumerate(value):
            path: KeyPath = ("scenarios", i)
            if not isinstance(spec, dict):
                self.error(path, f"a scenario must be a mapping, not {_describe(spec)}")
                continue
            self.keys(spec, path, _SCENARIO_KEYS)
            name = spec.get("name")
            if not isinstance(name, str) or not name.strip():
                self.error(path, "a scenario needs a name")
                name = f"scenario {i + 1}"
            elif name in seen:
                self.error(
                    (*path, "name"),
                    f"two scenarios are named {name!r} (the first at line {seen[name]})",
                )
            seen.setdefault(name, self.doc.pos((*path, "name")).line)
            scenario = self.scenario(spec, path, name, facts, start)
            if scenario is not None:
                out.append(scenario)
        return out

    def scenario(
        self,
        spec: Mapping[str, Any],
        path: KeyPath,
        name: str,
        facts: Mapping[str, Mapping[str, Any]],
        start: datetime | None,
    ) -> Scenario | None:
        assert self.defn is not None
        if "start" in spec:
            start = self.moment(spec["start"], (*path, "start"))
        if start is None:
            start = datetime(*_DEFAULT_START, tzinfo=self.tz)
        facts = self.facts(spec.get("facts"), (*path, "facts"), facts)
        steps_value = spec.get("steps")
        if not isinstance(steps_value, list) or not steps_value:
            self.error(path if "steps" not in spec else (*path, "steps"), "a scenario needs steps")
            return None
        # Without a `timezone:` key, times written without an offset are read in the start's.
        file_tz = self.tz
        self.tz = file_tz if self.tz_given else (start.tzinfo or UTC)
        try:
            walker = _StepWalker(self, start, facts)
            steps = [
                step
                for j, step_spec in enumerate(steps_value)
                if (step := walker.step(step_spec, (*path, "steps", j), j + 1)) is not None
            ]
            zone = self.tz
        finally:
            self.tz = file_tz
        return Scenario(
            name=name,
            source=self.doc.source,
            workflow=self.defn.name,
            start=start,
            timezone=zone,
            steps=tuple(steps),
            facts=facts,
            description=str(spec.get("description") or ""),
            pos=self.doc.pos(path),
        )


class _StepWalker:
    """Checks one scenario's steps in order, tracking the virtual time and the current key."""

    def __init__(
        self, checker: _Checker, start: datetime, facts: Mapping[str, Mapping[str, Any]]
    ) -> None:
        self.c = checker
        assert checker.defn is not None
        self.defn = checker.defn
        self.now = start
        self.facts = facts
        self.key: str | None = None
        self.started: list[str] = []

    def step(self, spec: Any, path: KeyPath, number: int) -> Step | None:
        c = self.c
        if not isinstance(spec, dict):
            c.error(path, f"a step must be a mapping, not {_describe(spec)}")
            return None
        allowed = set(ACTIONS) | _STEP_EXTRAS
        if not c.keys(spec, path, allowed):
            return None
        actions = [k for k in spec if k in ACTIONS]
        if len(actions) > 1:
            c.error(
                (*path, actions[1]),
                f"a step does one thing; this one has {' and '.join(actions)}",
                hint="split it into two steps",
                at_key=True,
            )
            return None
        self.move_clock(spec, path)
        action = actions[0] if actions else ("check" if "expect" in spec else "wait")
        if action == "wait" and not ({"at", "after"} & set(spec)):
            c.error(path, "an empty step", hint=f"use one of {', '.join(sorted(ACTIONS))}")
            return None
        args: dict[str, Any] = {}
        actor: Actor | None = None
        key = self.key
        if action in ACTIONS:
            args_path = (*path, action)
            if action == "facts":
                before = self.facts
                self.facts = c.facts(spec[action], args_path, before)
                args["changed"] = {
                    ns: {k: v for k, v in attrs.items() if before.get(ns, {}).get(k) != v}
                    for ns, attrs in self.facts.items()
                }
            else:
                parsed = self.args(action, spec[action], args_path)
                if parsed is None:
                    # Still check the expectations: every mistake of the step at once.
                    self.expect(spec.get("expect"), (*path, "expect"), action, self.key)
                    return None
                args, actor, key = parsed
        expect = self.expect(spec.get("expect"), (*path, "expect"), action, key)
        note = spec.get("note")
        return Step(
            number=number,
            action=action,
            args=args,
            key=key,
            actor=actor,
            at=self.now,
            facts={ns: dict(v) for ns, v in self.facts.items()},
            expect=tuple(expect),
            pos=self.c.doc.pos(path),
            note=str(note) if note is not None else "",
        )

    def move_clock(self, spec: Mapping[str, Any], path: KeyPath) -> None:
        sources = [(spec, path)]
        tick = spec.get("tick")
        if isinstance(tick, dict):
            sources.append((tick, (*path, "tick")))
        moves = [(k, s, p) for s, p in sources for k in ("at", "after") if k in s]
        if len(moves) > 1:
            k, _, p = moves[1]
            self.c.error(
                (*p, k),
                "give one of 'at' and 'after' per step",
                hint="'at' jumps to a moment, 'after' waits a duration",
                at_key=True,
            )
            return
        for k, source, p in moves:
            if k == "after":
                step = self.c.duration(source[k], (*p, k))
                if step is not None:
                    self.now += step
            else:
                target = self.c.moment(source[k], (*p, k))
                if target is not None and target < self.now:
                    self.c.error(
                        (*p, k),
                        f"{target.isoformat()} is before the scenario's time "
                        f"({self.now.isoformat()}): the clock cannot go back",
                    )
                elif target is not None:
                    self.now = target

    def instance_key(self, args: Mapping[str, Any], path: KeyPath, action: str) -> str | None:
        c = self.c
        if action == "start":
            key = c.text(args.get("key"), (*path, "key"), "key")
            if key is not None and key in self.started:
                c.error((*path, "key"), f"{key!r} is already started in this scenario")
            if key is not None:
                self.started.append(key)
            return key
        if "key" not in args:
            if self.key is None:
                c.error(path, "which instance? no instance is started before this step")
            return self.key
        key = c.text(args["key"], (*path, "key"), "key")
        if key is not None and key not in self.started:
            c.error(
                (*path, "key"),
                f"no instance {key!r} is started before this step",
                suggestions=suggest(key, self.started),
            )
        return key

    def args(
        self, action: str, value: Any, path: KeyPath
    ) -> tuple[dict[str, Any], Actor | None, str | None] | None:
        c = self.c
        spec = c.mapping(value, path, action)
        if spec is None:
            return None
        if not c.keys(spec, path, ACTIONS[action]):
            return None
        missing = [k for k in _REQUIRED.get(action, ()) if k not in spec]
        if missing:
            c.error(path, f"{action} needs {' and '.join(repr(m) for m in missing)}")
            self.names_given(spec, path)
            return None
        args: dict[str, Any] = {}
        actor = c.actor(spec["as"], (*path, "as")) if "as" in spec else None
        if action == "tick":
            return args, None, self.key
        key = self.instance_key(spec, path, action)
        self.key = key
        defn = self.defn
        if action == "start":
            args["data"] = c.field_values(spec.get("data"), (*path, "data"))
            if "owner" in spec:
                args["owner"] = c.user(spec["owner"], (*path, "owner"))
        elif action == "fire":
            trigger = spec["trigger"]
            if trigger not in defn.triggers:
                c.unknown((*path, "trigger"), "trigger", trigger, defn.triggers)
                return None
            writes = sorted({w for t in defn.transitions if t.trigger == trigger for w in t.writes})
            args["trigger"] = trigger
            args["data"] = c.field_values(
                spec.get("data"), (*path, "data"), writes=writes, trigger=trigger
            )
            args["facts"] = c.facts(spec.get("facts"), (*path, "facts"), self.facts)
            for name in ("override", "idempotency_key"):
                if name in spec:
                    args[name] = c.text(spec[name], (*path, name), name)
        elif action == "reassign":
            args["to"] = c.user(spec["to"], (*path, "to"))
            args["keep"] = [
                t
                for t, p in c.names(spec.get("keep") or [], (*path, "keep"), "a task id")
                if self.task_id(t, p)
            ]
            args["reason"] = str(spec.get("reason") or "")
            args["facts"] = c.facts(spec.get("facts"), (*path, "facts"), self.facts)
        elif action == "record_cost":
            args.update(self.cost(spec, path))
        else:
            task = spec["task"]
            if not self.task_id(task, (*path, "task")):
                return None
            args["task"] = task
            for name in ("note", "reason"):
                if name in spec:
                    args[name] = str(spec[name])
            if action == "complete_task" and "result" in spec:
                args["result"] = self.task_result(task, spec["result"], (*path, "result"))
            if action == "defer_task" and "due" in spec:
                args["due"] = c.moment(spec["due"], (*path, "due"))
            if action == "reassign_task":
                args["to"] = c.user(spec["to"], (*path, "to"))
        return args, actor, key

    def names_given(self, spec: Mapping[str, Any], path: KeyPath) -> None:
        """Check the names a step with missing keys does give (all mistakes at once)."""
        c = self.c
        if "as" in spec:
            c.actor(spec["as"], (*path, "as"))
        if "trigger" in spec and spec["trigger"] not in self.defn.triggers:
            c.unknown((*path, "trigger"), "trigger", spec["trigger"], self.defn.triggers)
        if "task" in spec:
            self.task_id(spec["task"], (*path, "task"))
        if "to" in spec:
            c.user(spec["to"], (*path, "to"))

    def task_ids(self) -> list[str]:
        ids = [item.id for cl in self.defn.checklists.values() for item in cl.items]
        for automation in self.defn.automations:
            for action in automation.actions:
                if action.task is not None:
                    ids.append(action.task.id)
        return ids

    def task_id(self, value: Any, path: KeyPath, *, at_key: bool = False) -> bool:
        ids = self.task_ids()
        if value not in ids:
            hint = "" if ids else f"workflow {self.defn.name!r} opens no tasks"
            self.c.error(
                path,
                f"unknown task {value!r}",
                suggestions=suggest(str(value), ids),
                hint=hint,
                at_key=at_key,
            )
            return False
        return True

    def task_result(self, task: str, value: Any, path: KeyPath) -> Any:
        found = self.defn.checklist_item(task)
        if found is None or found[1].result is None:
            return value
        return self.c.typed(found[1].result, value, path, f"{task}.result")

    def cost(self, spec: Mapping[str, Any], path: KeyPath) -> dict[str, Any]:
        costs = self.defn.costs
        category = spec["category"]
        if costs is None:
            self.c.error(
                (*path, "category"), f"workflow {self.defn.name!r} declares no cost categories"
            )
        elif category not in costs.categories:
            self.c.unknown((*path, "category"), "cost category", category, costs.categories)
        raw = spec["amount"]
        text = self.c.doc.raw.get((*path, "amount"), str(raw))
        try:
            amount = Decimal(str(text).strip())
        except InvalidOperation:
            self.c.error((*path, "amount"), f"{raw!r} is not an amount")
            amount = Decimal(0)
        return {"category": category, "amount": amount, "note": str(spec.get("note") or "")}

    # -- expectations -------------------------------------------------------------------

    def states(self) -> list[str]:
        return list(self.defn.states)

    def rules(self) -> list[str]:
        return [
            *self.defn.rules,
            *(f"checklist:{c}" for c in self.defn.checklists),
            *PSEUDO_RULES,
        ]

    def timer_names(self) -> list[str]:
        names = [t.name for t in self.defn.timers]
        for automation in self.defn.automations:
            for action in automation.actions:
                if action.timer is not None:
                    names.append(action.timer.name)
        return names

    def expect(self, value: Any, path: KeyPath, action: str, key: str | None) -> list[Expectation]:
        c = self.c
        spec = c.mapping(value, path, "expect")
        if not spec:
            return []
        c.keys(spec, path, EXPECTATIONS)
        out: list[Expectation] = []
        if "key" in spec:
            key = c.text(spec["key"], (*path, "key"), "key")
            if key is not None and key not in self.started:
                c.error(
                    (*path, "key"),
                    f"no instance {key!r} is started before this step",
                    suggestions=suggest(key, self.started),
                )
        needs_key = EXPECTATIONS - {
            "key",
            "ok",
            "refused",
            "refused_by",
            "warned_by",
            "message_contains",
            "error",
            "error_contains",
            "notified",
            "not_notified",
            "effects",
        }
        for name, raw in spec.items():
            if name not in EXPECTATIONS or name == "key":
                continue
            epath = (*path, name)
            if name in needs_key and key is None:
                c.error(epath, f"expect.{name} needs an instance: no instance is started yet")
                continue
            checked = self.expectation(name, raw, epath)
            if checked is not _INVALID:
                out.append(Expectation(name, checked, c.doc.pos(epath)))
        if "key" in spec and key is not None:
            out.insert(0, Expectation("key", key, c.doc.pos((*path, "key"))))
        return out

    def expectation(self, name: str, raw: Any, path: KeyPath) -> Any:
        c = self.c
        if name in ("ok", "refused"):
            if not isinstance(raw, bool):
                c.error(path, f"{name} must be true or false, not {_describe(raw)}")
                return _INVALID
            return raw
        if name in ("refused_by", "warned_by"):
            rules = self.rules()
            names = c.names(raw, path, "a rule")
            for rule, p in names:
                if rule not in rules:
                    c.unknown(p, "rule", rule, rules)
            return tuple(r for r, _ in names)
        if name in ("message_contains", "error_contains"):
            return c.text(raw, path, name) or _INVALID
        if name == "error":
            if raw not in ERRORS:
                c.unknown(path, "error", raw, ERRORS)
                return _INVALID
            return raw
        if name == "state":
            if raw not in self.defn.states:
                c.error(
                    path,
                    f"workflow {self.defn.name!r} has no state {raw!r}",
                    suggestions=suggest(str(raw), self.states()),
                )
                return _INVALID
            return raw
        if name == "owner":
            return c.user(raw, path) or _INVALID
        if name == "data":
            return c.field_values(raw, path)
        if name == "notified":
            return self.notified(raw, path)
        if name == "not_notified":
            users = [u for u, p in c.names(raw, path, "a user") if c.user(u, p) is not None]
            return tuple(users)
        if name == "tasks_open":
            ids = [] if raw is None else c.names(raw, path, "a task id")
            return tuple(sorted(t for t, p in ids if self.task_id(t, p)))
        if name == "tasks":
            return self.tasks(raw, path)
        if name == "history":
            return self.history(raw, path)
        if name == "effects":
            return self.effects(raw, path)
        if name == "timers":
            return self.timers(raw, path)
        if name == "progress":
            return self.progress(raw, path)
        if name == "costs":
            return self.costs(raw, path)
        raise AssertionError(name)  # pragma: no cover - EXPECTATIONS lists every name

    def notified(self, raw: Any, path: KeyPath) -> Any:
        c = self.c
        items = raw if isinstance(raw, list) else [raw]
        out = []
        for i, item in enumerate(items):
            ipath = (*path, i) if isinstance(raw, list) else path
            if isinstance(item, str):
                users = [(item, ipath)]
                item = {"to": item}
            elif not isinstance(item, dict):
                c.error(ipath, f"a notification must be a user or a mapping, not {_describe(item)}")
                continue
            elif not c.keys(item, ipath, _NOTIFIED_KEYS):
                continue
            elif not item:
                c.error(ipath, "say who is notified: {to: user, subject_contains: ...}")
                continue
            else:
                users = [(item[w], (*ipath, w)) for w in ("to", "intended") if w in item]
            if all(c.user(u, p) is not None for u, p in users):
                out.append({k: str(v) for k, v in item.items()})
        return tuple(out)

    def tasks(self, raw: Any, path: KeyPath) -> Any:
        spec = self.c.mapping(raw, path, "tasks")
        out = {}
        for task, status in (spec or {}).items():
            if not self.task_id(task, (*path, task), at_key=True):
                continue
            if status not in TASK_STATUSES:
                self.c.unknown((*path, task), "task status", status, TASK_STATUSES)
                continue
            out[task] = status
        return out

    def entry(self, raw: Any, path: KeyPath) -> dict[str, Any] | None:
        c = self.c
        spec = c.mapping(raw, path, "a history entry")
        if spec is None or not c.keys(spec, path, _ENTRY_KEYS):
            return None
        out: dict[str, Any] = {}
        for k, v in spec.items():
            p = (*path, k)
            if k == "kind" and v not in HISTORY_KINDS:
                c.unknown(p, "history kind", v, HISTORY_KINDS)
                continue
            if k == "trigger" and v not in (*self.defn.triggers, "reassign", "record_cost"):
                c.unknown(p, "trigger", v, self.defn.triggers)
                continue
            if k in ("from", "to") and v not in self.defn.states:
                c.unknown(p, "state", v, self.states())
                continue
            if k == "actor" and isinstance(v, str) and v.startswith("timer:"):
                timer = v.split(":", 1)[1]
                if timer not in self.timer_names():
                    c.unknown(p, "timer", timer, self.timer_names())
                    continue
            elif k == "actor" and v != "system" and c.user(v, p) is None:
                continue
            out[k] = str(v)
        return out

    def history(self, raw: Any, path: KeyPath) -> Any:
        c = self.c
        spec = c.mapping(raw, path, "history")
        if spec is None or not c.keys(spec, path, _HISTORY_KEYS):
            return _INVALID
        out: dict[str, Any] = {}
        if "last" in spec:
            out["last"] = self.entry(spec["last"], (*path, "last"))
        if "count" in spec:
            count = spec["count"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                c.error((*path, "count"), "count must be a whole number")
            else:
                out["count"] = count
        if "includes" in spec:
            items = spec["includes"]
            if not isinstance(items, list):
                c.error((*path, "includes"), "includes must be a list of entries")
            else:
                out["includes"] = [
                    e
                    for i, item in enumerate(items)
                    if (e := self.entry(item, (*path, "includes", i))) is not None
                ]
        return out

    def effects(self, raw: Any, path: KeyPath) -> Any:
        spec = self.c.mapping(raw, path, "effects")
        out = {}
        for name, value in (spec or {}).items():
            if name not in EFFECTS:
                self.c.unknown((*path, name), "effect", name, EFFECTS, at_key=True)
                continue
            names = [] if value is None else self.c.names(value, (*path, name), "a name")
            out[name] = tuple(sorted({n for n, _ in names}))
        return out

    def timers(self, raw: Any, path: KeyPath) -> Any:
        spec = self.c.mapping(raw, path, "timers")
        out: dict[str, Any] = {}
        for name, value in (spec or {}).items():
            if name not in self.timer_names():
                self.c.unknown((*path, name), "timer", name, self.timer_names(), at_key=True)
                continue
            if value is None or isinstance(value, bool):
                out[name] = bool(value)
            else:
                out[name] = self.c.moment(value, (*path, name))
        return out

    def progress(self, raw: Any, path: KeyPath) -> Any:
        spec = self.c.mapping(raw, path, "progress")
        out = {}
        for name, value in (spec or {}).items():
            if name not in _PROGRESS_KEYS:
                self.c.unknown((*path, name), "progress count", name, _PROGRESS_KEYS, at_key=True)
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.c.error((*path, name), f"{name} must be a number")
                continue
            out[name] = value
        return out

    def costs(self, raw: Any, path: KeyPath) -> Any:
        spec = self.c.mapping(raw, path, "costs")
        categories = list(self.defn.costs.categories) if self.defn.costs else []
        out = {}
        for name, value in (spec or {}).items():
            if name not in categories:
                self.c.unknown((*path, name), "cost category", name, categories, at_key=True)
                continue
            out[name] = self.c.typed("decimal", value, (*path, name), f"costs.{name}")
        return out


class _Invalid:
    """Marker: an expectation whose value was reported as wrong."""


_INVALID: Any = _Invalid()
