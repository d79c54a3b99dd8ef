"""Plain data the engine returns to hosts and passes to plugins."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "Actor",
    "FireResult",
    "Instance",
    "Override",
    "Refusal",
    "TransitionContext",
    "TriggerOption",
]


@dataclass(frozen=True, init=False)
class Actor:
    """Who is acting: a user id, the roles they hold, and where they sit in the org tree."""

    id: str
    roles: frozenset[str] = frozenset()
    org: str = ""

    def __init__(
        self,
        id: str,
        roles: str | set[str] | frozenset[str] | tuple[str, ...] | list[str] = (),
        org: str = "",
    ) -> None:
        object.__setattr__(self, "id", id)
        # A bare string is one role, not a set of characters.
        object.__setattr__(self, "roles", frozenset({roles} if isinstance(roles, str) else roles))
        object.__setattr__(self, "org", org)

    def has_any_role(self, roles: tuple[str, ...] | frozenset[str]) -> bool:
        """Whether the actor holds at least one of ``roles`` (an empty requirement always holds)."""
        return not roles or not self.roles.isdisjoint(roles)


@dataclass(frozen=True)
class Refusal:
    """Why a trigger did not (or would not) fire.

    Attributes:
        rule: the rule's name, or ``"roles"`` / ``"state"`` for refusals that no rule made.
        effect: ``block`` or ``confirm`` (``confirm`` can be overridden by ``override_roles``).
        message: the rule's message rendered with the actual values.
        hint: what would make it pass.
        override_roles: roles that may override a ``confirm``.
        items: the task ids the refusal is about (the open items of a checklist gate, the
            unfinished tasks a task depends on), so that a host can link to them.

    """

    rule: str
    effect: str
    message: str
    hint: str = ""
    override_roles: tuple[str, ...] = ()
    items: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-compatible form."""
        result: dict[str, Any] = {
            "rule": self.rule,
            "effect": self.effect,
            "message": self.message,
            "hint": self.hint,
            "override_roles": list(self.override_roles),
        }
        if self.items:
            result["items"] = list(self.items)
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Refusal:
        """Rebuild a refusal stored by :meth:`as_dict`."""
        return cls(
            rule=data["rule"],
            effect=data["effect"],
            message=data["message"],
            hint=data.get("hint", ""),
            override_roles=tuple(data.get("override_roles", ())),
            items=tuple(data.get("items", ())),
        )


@dataclass(frozen=True)
class Override:
    """A ``confirm`` refusal that an allowed actor overrode with a reason."""

    rule: str
    actor: str
    reason: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-compatible form."""
        return {
            "rule": self.rule,
            "actor": self.actor,
            "reason": self.reason,
            "message": self.message,
        }


@dataclass(frozen=True)
class Instance:
    """A workflow instance as the host sees it."""

    key: str
    workflow: str
    workflow_version: int
    state: str
    data: Mapping[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime
    owner: str | None = None
    final: bool = False


@dataclass(frozen=True)
class TriggerOption:
    """One trigger of an instance's current state, for one actor.

    ``allowed`` is true when firing it now would succeed; otherwise ``reasons`` says why not
    (missing role, blocking rules, ``confirm`` rules that need an override).
    ``warnings`` lists rules that would warn but not stop it.
    """

    trigger: str
    dest: str
    allowed: bool
    reasons: tuple[Refusal, ...] = ()
    warnings: tuple[Refusal, ...] = ()
    needs_override: bool = False


@dataclass(frozen=True)
class FireResult:
    """What a ``fire`` (or ``start``) did.

    Attributes:
        ok: whether the transition happened.
        key: the instance key.
        trigger: the trigger fired.
        state: the instance's state after the call (unchanged when refused).
        previous_state: the state before the call.
        version: the instance's version after the call.
        refusals: why it did not happen (empty when ``ok``).
        warnings: rules with effect ``warn`` that held.
        overrides: ``confirm`` refusals overridden by the actor.
        effects: what else happened: ``{"data_changed": {...}, ...}``.
        replayed: true when an idempotency key returned an earlier result.

    """

    ok: bool
    key: str
    trigger: str
    state: str
    previous_state: str
    version: int
    refusals: tuple[Refusal, ...] = ()
    warnings: tuple[Refusal, ...] = ()
    overrides: tuple[Override, ...] = ()
    effects: Mapping[str, Any] = field(default_factory=dict)
    replayed: bool = False

    def explain(self) -> str:
        """A short human-readable account of the result."""
        if self.ok:
            text = f"{self.key}: {self.trigger} done, {self.previous_state} -> {self.state}"
        else:
            text = f"{self.key}: {self.trigger} refused, still {self.state}"
        lines = [text]
        for refusal in self.refusals:
            line = f"  - {refusal.rule} ({refusal.effect}): {refusal.message}"
            if refusal.hint:
                line += f" Hint: {refusal.hint}"
            lines.append(line)
        lines.extend(f"  ! {w.rule}: {w.message}" for w in self.warnings)
        lines.extend(f"  * {o.rule} overridden by {o.actor}: {o.reason}" for o in self.overrides)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-compatible form (used for idempotent replays)."""
        return {
            "ok": self.ok,
            "key": self.key,
            "trigger": self.trigger,
            "state": self.state,
            "previous_state": self.previous_state,
            "version": self.version,
            "refusals": [r.as_dict() for r in self.refusals],
            "warnings": [w.as_dict() for w in self.warnings],
            "overrides": [o.as_dict() for o in self.overrides],
            "effects": dict(self.effects),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, replayed: bool = False) -> FireResult:
        """Rebuild a result stored by :meth:`as_dict`."""
        refusal = Refusal.from_dict
        return cls(
            ok=bool(data["ok"]),
            key=data["key"],
            trigger=data["trigger"],
            state=data["state"],
            previous_state=data["previous_state"],
            version=int(data["version"]),
            refusals=tuple(refusal(r) for r in data.get("refusals", ())),
            warnings=tuple(refusal(w) for w in data.get("warnings", ())),
            overrides=tuple(Override(**o) for o in data.get("overrides", ())),
            effects=dict(data.get("effects", {})),
            replayed=replayed,
        )


@dataclass(frozen=True)
class TransitionContext:
    """What a transition is doing, as observers and actions see it."""

    engine_name: str
    key: str
    workflow: str
    workflow_version: int
    trigger: str
    from_state: str
    to_state: str
    actor: Actor
    data_before: Mapping[str, Any]
    data_after: Mapping[str, Any]
    at: datetime
    reason: str = ""
