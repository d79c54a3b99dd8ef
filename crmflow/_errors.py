"""The exceptions crmflow raises.

A refusal by a rule is not an exception: ``Engine.fire`` returns a result with ``ok=False``.
Exceptions are for misuse and faults, and all derive from :class:`CrmflowError`::

    CrmflowError
    ├── DefinitionError          a workflow, rule or field definition is wrong (file:line:column)
    ├── ExpressionError          a rule expression is wrong (column inside the expression)
    ├── UnknownInstance          no instance has that key
    ├── UnknownTrigger           the workflow has no such trigger, or not from the current state
    ├── InstanceExists           ``start`` with a key that is already taken
    ├── PermissionDenied         the actor's roles do not allow the operation
    ├── ConcurrencyConflict      another writer changed the instance first
    ├── MissingFact              a rule needs a fact that neither the caller nor a provider gave
    ├── InvalidData              instance data does not match the declared fields
    ├── PluginError              a plugin is misconfigured (unknown hook, no storage, ...)
    └── StorageError             the storage back end failed

Context lives in attributes, never only in the message text.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConcurrencyConflict",
    "CrmflowError",
    "DefinitionError",
    "ExpressionError",
    "InstanceExists",
    "InvalidData",
    "MissingFact",
    "PermissionDenied",
    "PluginError",
    "StorageError",
    "UnknownInstance",
    "UnknownTask",
    "UnknownTrigger",
]


def _did_you_mean(suggestions: Sequence[str]) -> str:
    if not suggestions:
        return ""
    quoted = " or ".join(f"'{s}'" for s in suggestions)
    return f" (did you mean {quoted}?)"


class CrmflowError(Exception):
    """Base class of every exception crmflow raises on purpose."""


class DefinitionError(CrmflowError):
    """A definition (YAML workflow, rule, field, scenario) is invalid.

    Attributes:
        source: the file the definition came from (``"<string>"`` when loaded from text).
        line: 1-based line of the offending value, or 0 when unknown.
        column: 1-based column of the offending value, or 0 when unknown.
        path: the key path inside the document, e.g. ``transitions[2].to``.
        reason: the message without location and suggestions.
        suggestions: the nearest valid names, best first.
        hint: an optional sentence on how to fix it.

    """

    def __init__(
        self,
        reason: str,
        *,
        source: str = "<string>",
        line: int = 0,
        column: int = 0,
        path: str = "",
        suggestions: Sequence[str] = (),
        hint: str = "",
    ) -> None:
        self.reason = reason
        self.source = source
        self.line = line
        self.column = column
        self.path = path
        self.suggestions = tuple(suggestions)
        self.hint = hint
        super().__init__(self.render())

    @property
    def key(self) -> str:
        """The last component of :attr:`path` (the offending key)."""
        return self.path.rsplit(".", 1)[-1] if self.path else ""

    def render(self) -> str:
        """Render as ``file:line:column: path: message (did you mean ...?)``."""
        where = self.source
        if self.line:
            where += f":{self.line}:{self.column}"
        text = f"{where}: "
        if self.path:
            text += f"{self.path}: "
        text += self.reason + _did_you_mean(self.suggestions)
        if self.hint:
            text += f"; hint: {self.hint}"
        return text


class ExpressionError(CrmflowError):
    """A rule expression or message template is invalid.

    Attributes:
        expression: the text that was parsed.
        reason: what is wrong.
        line: 1-based line inside the expression.
        column: 1-based column inside the expression.
        suggestions: nearest valid names.
        hint: an optional sentence on how to fix it.

    """

    def __init__(
        self,
        reason: str,
        *,
        expression: str = "",
        line: int = 1,
        column: int = 1,
        suggestions: Sequence[str] = (),
        hint: str = "",
    ) -> None:
        self.reason = reason
        self.expression = expression
        self.line = line
        self.column = column
        self.suggestions = tuple(suggestions)
        self.hint = hint
        super().__init__(f"{reason}{_did_you_mean(self.suggestions)} at column {column}")


class UnknownInstance(CrmflowError):
    """No instance with that key exists (or it is outside the actor's scope)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no instance with key {key!r}")


class UnknownTrigger(CrmflowError):
    """The trigger does not exist in the workflow, or not from the instance's current state.

    Attributes:
        trigger: the trigger asked for.
        state: the instance's current state ("" when the trigger is unknown everywhere).
        suggestions: nearest valid triggers.

    """

    def __init__(
        self, trigger: str, *, workflow: str, state: str = "", suggestions: Sequence[str] = ()
    ) -> None:
        self.trigger = trigger
        self.workflow = workflow
        self.state = state
        self.suggestions = tuple(suggestions)
        if state:
            msg = f"trigger {trigger!r} cannot fire from state {state!r} in workflow {workflow!r}"
        else:
            msg = f"workflow {workflow!r} has no trigger {trigger!r}"
        super().__init__(msg + _did_you_mean(self.suggestions))


class UnknownTask(CrmflowError):
    """The instance has no task with that id.

    Attributes:
        key: the instance key.
        task_id: the task id asked for.
        suggestions: the nearest task ids of the instance.

    """

    def __init__(self, key: str, task_id: str, suggestions: Sequence[str] = ()) -> None:
        self.key = key
        self.task_id = task_id
        self.suggestions = tuple(suggestions)
        super().__init__(
            f"instance {key!r} has no task {task_id!r}" + _did_you_mean(self.suggestions)
        )


class InstanceExists(CrmflowError):
    """``start`` was called with a key that already names an instance."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"an instance with key {key!r} already exists")


class PermissionDenied(CrmflowError):
    """The actor may not perform the operation.

    Attributes:
        actor: the actor's id.
        operation: what was attempted (a trigger name, ``start``, ``override`` ...).
        required_roles: roles any of which would have been enough.
        actor_roles: the roles the actor holds.
        reason: why, when no role would be enough (empty otherwise).

    """

    def __init__(
        self,
        actor: str,
        operation: str,
        required_roles: Sequence[str],
        actor_roles: Sequence[str] = (),
        reason: str = "",
    ) -> None:
        self.actor = actor
        self.operation = operation
        self.required_roles = tuple(required_roles)
        self.actor_roles = tuple(sorted(actor_roles))
        self.reason = reason
        roles = ", ".join(self.required_roles) or "(none)"
        held = ", ".join(self.actor_roles) or "none"
        why = reason or f"requires one of the roles {roles}"
        super().__init__(f"{actor!r} (roles: {held}) may not {operation}: {why}")


class ConcurrencyConflict(CrmflowError):
    """Another writer changed the instance after it was read; nothing was written.

    Attributes:
        key: the instance key.
        expected_version: the version this writer read.
        actual_version: the version found when writing (``None`` when unknown).

    """

    def __init__(self, key: str, expected_version: int, actual_version: int | None = None) -> None:
        self.key = key
        self.expected_version = expected_version
        self.actual_version = actual_version
        found = "" if actual_version is None else f", found {actual_version}"
        super().__init__(
            f"instance {key!r} changed concurrently: expected version {expected_version}{found}"
        )


class MissingFact(CrmflowError):
    """A rule needs a fact that neither the caller nor any fact provider supplied.

    Attributes:
        namespace: the fact namespace, e.g. ``customer``.
        attribute: the attribute, e.g. ``open_balance`` ("" when the whole namespace is missing).
        rule: the rule that needed it.

    """

    def __init__(self, namespace: str, attribute: str, rule: str) -> None:
        self.namespace = namespace
        self.attribute = attribute
        self.rule = rule
        name = f"{namespace}.{attribute}" if attribute else namespace
        super().__init__(
            f"rule {rule!r} needs fact {name!r}: pass it in facts= or register a "
            "crmflow_provide_facts plugin"
        )


class InvalidData(CrmflowError):
    """Instance data does not match the workflow's declared fields.

    Attributes:
        field: the offending field.
        reason: what is wrong.
        suggestions: nearest declared field names.

    """

    def __init__(self, field: str, reason: str, suggestions: Sequence[str] = ()) -> None:
        self.field = field
        self.reason = reason
        self.suggestions = tuple(suggestions)
        super().__init__(f"field {field!r}: {reason}{_did_you_mean(self.suggestions)}")


class PluginError(CrmflowError):
    """A plugin is misconfigured: an unknown hook, no storage back end, a bad store URL."""


class StorageError(CrmflowError):
    """The storage back end failed (connection lost, schema mismatch, disk full)."""
