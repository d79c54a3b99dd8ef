"""A built-in org directory: users, roles, the unit tree, managers and delegations, from YAML.

The directory answers the questions a workflow asks about people: who is this user's manager,
who holds the role ``finance``, which units may a manager see, and who should receive a
notification addressed to ``manager`` while that manager is on leave.

A directory is read from YAML (:func:`load_org_text`, :func:`load_org_file`) or built from a
mapping of the same shape (:meth:`OrgDirectory.from_mapping`). The document format is described
in ``docs/org-directory.md``; in short::

    org:
      name: ACME Trading
      manager: grace
      timezone: Asia/Shanghai
      units:
        - id: sales
          manager: sam
          units:
            - {id: east, name: Sales East, manager: erin}
    users:
      grace: {name: Grace Liu, email: grace@acme.example, roles: [general_manager]}
      sam:   {unit: sales, roles: [sales_manager]}
      erin:  {unit: sales/east, roles: [sales_manager]}
      alice: {unit: sales/east, roles: [sales_rep], timezone: Europe/Berlin}
    delegations:
      - {from: alice, to: erin, start: 2026-02-02, end: 2026-02-06, reason: annual leave}

Units are addressed by slash paths (``sales/east``), the same paths as :attr:`crmflow.Actor.org`;
the top of the tree is the empty path ``""``. Everything is checked when the directory is built,
and every problem is a :class:`~crmflow.DefinitionError` with file, line, column, key path and,
where a name is misspelled, the nearest valid names. A built directory never changes and keeps
no global state; every method is a pure read.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from crmflow._errors import CrmflowError, DefinitionError
from crmflow._suggest import suggest
from crmflow._types import Actor
from crmflow.engine._loader import IDENTIFIER
from crmflow.engine._yaml import (
    DEFAULT_LIMITS,
    KeyPath,
    YamlDocument,
    YamlLimits,
    format_path,
    read_yaml_file,
    read_yaml_text,
)

__all__ = [
    "DELEGATION_KEYS",
    "ORG_KEYS",
    "ROOT",
    "SPEC_KINDS",
    "TOP_LEVEL_KEYS",
    "UNIT_KEYS",
    "USER_KEYS",
    "Delegation",
    "OrgDirectory",
    "Recipient",
    "RecipientSpec",
    "RecipientSpecError",
    "Unit",
    "UnknownUnit",
    "UnknownUser",
    "User",
    "collect_org_errors",
    "load_org_file",
    "load_org_text",
]

#: The path of the top of the unit tree (the whole organisation).
ROOT = ""

# The key tables: key -> required.
TOP_LEVEL_KEYS: Mapping[str, bool] = MappingProxyType(
    {"org": False, "users": True, "delegations": False}
)
ORG_KEYS: Mapping[str, bool] = MappingProxyType(
    {"name": False, "manager": False, "timezone": False, "description": False, "units": False}
)
UNIT_KEYS: Mapping[str, bool] = MappingProxyType(
    {"id": True, "name": False, "manager": False, "description": False, "units": False}
)
USER_KEYS: Mapping[str, bool] = MappingProxyType(
    {
        "name": False,
        "email": False,
        "unit": False,
        "roles": False,
        "timezone": False,
        "active": False,
    }
)
DELEGATION_KEYS: Mapping[str, bool] = MappingProxyType(
    {"from": True, "to": True, "start": True, "end": True, "reason": False}
)

#: Recipient spec forms: the bare ones, then those that take ``:NAME``.
SPEC_KINDS: tuple[str, ...] = ("owner", "manager", "managers", "role", "user", "unit")
_BARE_KINDS = frozenset({"owner", "manager", "managers"})
_NAMED_KINDS = frozenset({"role", "user", "unit"})

_UNIT_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# User ids come from the host (logins, employee numbers, e-mail addresses): anything readable.
_USER_ID = re.compile(r"[^\s/]+")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
_KIND_NAMES = {str: "a string", bool: "true or false", list: "a list", dict: "a mapping"}


def _did_you_mean(suggestions: Sequence[str]) -> str:
    if not suggestions:
        return ""
    return " (did you mean " + " or ".join(f"'{s}'" for s in suggestions) + "?)"


def _unit_label(path: str) -> str:
    return f"unit {path!r}" if path else "the top unit"


def _normalize(path: str) -> str:
    return path.strip().strip("/")


def _minutes(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class UnknownUser(CrmflowError, LookupError):
    """The directory has no user with that id.

    Attributes:
        user_id: the id asked for.
        suggestions: the nearest user ids, best first.

    """

    def __init__(self, user_id: str, suggestions: Sequence[str] = ()) -> None:
        self.user_id = user_id
        self.suggestions = tuple(suggestions)
        super().__init__(f"no user {user_id!r} in the org directory{_did_you_mean(suggestions)}")


class UnknownUnit(CrmflowError, LookupError):
    """The directory has no unit with that path.

    Attributes:
        path: the path asked for.
        suggestions: the nearest unit paths, best first.

    """

    def __init__(self, path: str, suggestions: Sequence[str] = ()) -> None:
        self.path = path
        self.suggestions = tuple(suggestions)
        super().__init__(f"no unit {path!r} in the org directory{_did_you_mean(suggestions)}")


class RecipientSpecError(CrmflowError, ValueError):
    """A recipient spec is malformed or names nothing in the directory.

    Attributes:
        spec: the spec as given.
        reason: what is wrong.
        suggestions: the nearest valid specs, best first.
        hint: an optional sentence on how to fix it.

    """

    def __init__(
        self, spec: str, reason: str, *, suggestions: Sequence[str] = (), hint: str = ""
    ) -> None:
        self.spec = spec
        self.reason = reason
        self.suggestions = tuple(suggestions)
        self.hint = hint
        text = f"recipient {spec!r}: {reason}{_did_you_mean(self.suggestions)}"
        if hint:
            text += f"; hint: {hint}"
        super().__init__(text)


# ---------------------------------------------------------------------------------------------
# Plain data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """One person in the directory.

    Attributes:
        id: the host's user id (the key under ``users:``).
        name: the display name (the id when none is given).
        email: the e-mail address, or ``None``.
        unit: the path of the unit the user belongs to (``""`` for the top unit).
        roles: the roles the user holds (may be empty).
        timezone: the user's IANA time zone, else the organisation's, else ``None``.
        active: ``False`` for users who left; they receive nothing and see nothing.

    """

    id: str
    name: str
    email: str | None
    unit: str
    roles: frozenset[str]
    timezone: str | None
    active: bool = True


@dataclass(frozen=True)
class Unit:
    """One unit of the org tree.

    Attributes:
        path: the slash path, e.g. ``sales/east`` (``""`` for the top unit).
        id: the last component of the path.
        name: the display name (the id when none is given; the org's name for the top unit).
        manager: the user who manages this unit, or ``None``.
        parent: the parent's path, or ``None`` for the top unit.
        children: the paths of the units directly below, in document order.
        description: free text.

    """

    path: str
    id: str
    name: str
    manager: str | None
    parent: str | None
    children: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Delegation:
    """While ``start <= moment <= end``, what is addressed to ``delegator`` goes to ``delegate``.

    ``start`` and ``end`` are time-zone aware, expressed in the delegator's time zone (UTC when
    the delegator has none), and both ends are included.
    """

    delegator: str
    delegate: str
    start: datetime
    end: datetime
    reason: str = ""

    def active_at(self, moment: datetime) -> bool:
        """Whether the delegation is in effect at ``moment`` (time-zone aware)."""
        return self.start <= moment <= self.end

    def describe(self) -> str:
        """E.g. ``alice delegates to bob until 2026-02-06 23:59 (annual leave)``."""
        text = f"{self.delegator} delegates to {self.delegate} until {_minutes(self.end)}"
        return f"{text} ({self.reason})" if self.reason else text


@dataclass(frozen=True)
class Recipient:
    """Who receives something addressed through a recipient spec, and why.

    Attributes:
        user: the user who receives it.
        intended: the user it was addressed to.
        delegated: ``True`` when ``user`` is not ``intended`` (a delegation, or an inactive
            user's manager standing in).
        reason: why someone else receives it, e.g. ``alice delegates to bob until
            2026-02-06 23:59 (annual leave)``; several steps are joined by ``"; "``.
            Empty when ``user`` is ``intended``.
        email: the receiving user's e-mail address, or ``None``.
        timezone: the receiving user's time zone, or ``None``.
        spec: the (normalised) spec that addressed it, e.g. ``role:finance``.
        chain: every user on the way, from ``intended`` to ``user``.

    """

    user: str
    intended: str
    delegated: bool
    reason: str
    email: str | None
    timezone: str | None
    spec: str = ""
    chain: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class RecipientSpec:
    """A parsed recipient spec.

    The forms are:

    ``owner``
        the owner passed to :meth:`OrgDirectory.resolve`;
    ``manager``
        the owner's manager (see :meth:`OrgDirectory.manager_of`);
    ``managers``
        every manager above the owner, nearest first;
    ``role:NAME``
        every active user holding the role;
    ``user:ID``
        that user;
    ``unit:PATH``
        the manager responsible for the unit (the nearest manager at or above it;
        ``unit:`` or ``unit:/`` is the top unit).
    """

    kind: str
    argument: str = ""

    @classmethod
    def parse(cls, spec: str) -> RecipientSpec:
        """Parse ``spec``; surrounding spaces are ignored.

        Raises:
            RecipientSpecError: for an unknown form, a missing name, or a name where none
                belongs (with the nearest valid forms as suggestions).

        """
        if not isinstance(spec, str):
            raise RecipientSpecError(repr(spec), "a recipient spec must be a string")
        kind, colon, argument = spec.strip().partition(":")
        kind, argument = kind.strip(), argument.strip()
        if not colon:
            if kind in _BARE_KINDS:
                return cls(kind)
            if kind in _NAMED_KINDS:
                raise RecipientSpecError(spec, f"{kind!r} needs a name", hint=f"write {kind}:NAME")
            near = suggest(kind, SPEC_KINDS)
            raise RecipientSpecError(
                spec,
                "unknown recipient form",
                suggestions=[n if n in _BARE_KINDS else f"{n}:NAME" for n in near],
                hint="use owner, manager, managers, role:NAME, user:ID or unit:PATH",
            )
        if kind in _NAMED_KINDS:
            if kind == "unit":
                return cls(kind, _normalize(argument))
            if not argument:
                raise RecipientSpecError(
                    spec, f"{kind!r} needs a name after ':'", hint=f"write {kind}:NAME"
                )
            return cls(kind, argument)
        if kind in _BARE_KINDS:
            raise RecipientSpecError(
                spec, f"{kind!r} takes no name", suggestions=[kind], hint=f"write just {kind}"
            )
        near = suggest(kind, SPEC_KINDS)
        raise RecipientSpecError(
            spec,
            f"unknown recipient form {kind + ':'!r}",
            suggestions=[f"{n}:{argument}" if n in _NAMED_KINDS else n for n in near],
            hint="use owner, manager, managers, role:NAME, user:ID or unit:PATH",
        )

    def __str__(self) -> str:
        if self.kind in _BARE_KINDS:
            return self.kind
        return f"{self.kind}:{self.argument}"


# ---------------------------------------------------------------------------------------------
# The directory
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parts:
    name: str
    source: str
    units: Mapping[str, Unit]
    users: Mapping[str, User]
    delegations: tuple[Delegation, ...]


def _require_aware(at: datetime) -> datetime:
    if not isinstance(at, datetime):
        raise TypeError(f"at must be a datetime, got {type(at).__name__}")
    if at.tzinfo is None or at.utcoffset() is None:
        # A naive time means something different for every user in a multi-zone directory.
        raise ValueError("at must be time-zone aware, e.g. datetime.now(UTC)")
    return at


class OrgDirectory:
    """Users, roles, units, managers and delegations; immutable once built.

    Build it with :func:`load_org_text`, :func:`load_org_file`, :meth:`from_mapping` or
    ``OrgDirectory(mapping)``; all of them validate everything and raise
    :class:`~crmflow.DefinitionError` for the first problem in the document.

    Lookups of an unknown user raise :class:`UnknownUser`, of an unknown unit
    :class:`UnknownUnit`; both are :class:`LookupError` and :class:`~crmflow.CrmflowError`
    and carry "did you mean" suggestions.
    """

    __slots__ = (
        "_by_delegator",
        "_delegations",
        "_managed",
        "_name",
        "_roles",
        "_source",
        "_subtree",
        "_units",
        "_users",
    )

    _by_delegator: Mapping[str, tuple[Delegation, ...]]
    _delegations: tuple[Delegation, ...]
    _managed: Mapping[str, tuple[str, ...]]
    _name: str
    _roles: Mapping[str, tuple[str, ...]]
    _source: str
    _subtree: Mapping[str, frozenset[str]]
    _units: Mapping[str, Unit]
    _users: Mapping[str, User]

    def __init__(self, data: Mapping[str, Any], *, source: str = "<mapping>") -> None:
        """Build from a mapping shaped like the YAML document (see :meth:`from_mapping`)."""
        self._setup(_build(data, source, None))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "<mapping>") -> OrgDirectory:
        """Build a directory in code from a mapping shaped like the YAML document.

        Besides the text forms, ``start`` and ``end`` of a delegation may be :class:`datetime`
        or :class:`date` objects, and ``roles`` a list, tuple or set of strings. Errors carry
        ``source`` and the key path but no line or column.

        Raises:
            DefinitionError: for the first problem found.

        """
        return cls(data, source=source)

    @classmethod
    def _from_parts(cls, parts: _Parts) -> OrgDirectory:
        directory = cls.__new__(cls)
        directory._setup(parts)
        return directory

    def _setup(self, parts: _Parts) -> None:
        assign = object.__setattr__
        assign(self, "_name", parts.name)
        assign(self, "_source", parts.source)
        assign(self, "_units", MappingProxyType(dict(parts.units)))
        assign(self, "_users", MappingProxyType(dict(parts.users)))
        assign(self, "_delegations", parts.delegations)
        by_delegator: dict[str, list[Delegation]] = {}
        for delegation in parts.delegations:
            by_delegator.setdefault(delegation.delegator, []).append(delegation)
        assign(
            self,
            "_by_delegator",
            MappingProxyType(
                {k: tuple(sorted(v, key=lambda d: d.start)) for k, v in by_delegator.items()}
            ),
        )
        managed: dict[str, list[str]] = {}
        for unit in parts.units.values():
            if unit.manager is not None:
                managed.setdefault(unit.manager, []).append(unit.path)
        assign(self, "_managed", MappingProxyType({k: tuple(v) for k, v in managed.items()}))
        subtree: dict[str, frozenset[str]] = {}

        def collect(path: str) -> frozenset[str]:
            below = {path}
            for child in parts.units[path].children:
                below |= collect(child)
            subtree[path] = frozenset(below)
            return subtree[path]

        collect(ROOT)
        assign(self, "_subtree", MappingProxyType(subtree))
        roles: dict[str, list[str]] = {}
        for user in parts.users.values():
            for role in user.roles:
                roles.setdefault(role, []).append(user.id)
        assign(self, "_roles", MappingProxyType({k: tuple(sorted(v)) for k, v in roles.items()}))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"an OrgDirectory cannot be changed (tried to set {name!r})")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"an OrgDirectory cannot be changed (tried to delete {name!r})")

    def __repr__(self) -> str:
        return (
            f"OrgDirectory({self._name!r}, users={len(self._users)}, "
            f"units={len(self._units) - 1}, delegations={len(self._delegations)})"
        )

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    # -- plain lookups -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The organisation's name (``org.name``; ``""`` when not given)."""
        return self._name

    @property
    def source(self) -> str:
        """The file the directory was read from (``"<string>"`` or ``"<mapping>"`` otherwise)."""
        return self._source

    @property
    def delegations(self) -> tuple[Delegation, ...]:
        """Every delegation, in document order."""
        return self._delegations

    def users(self, *, include_inactive: bool = False) -> list[str]:
        """The ids of the active users (of every user with ``include_inactive``), sorted."""
        return sorted(u.id for u in self._users.values() if include_inactive or u.active)

    def user(self, user_id: str) -> User:
        """The user with ``user_id``.

        Raises:
            UnknownUser: when there is none (with suggestions).

        """
        try:
            return self._users[user_id]
        except (KeyError, TypeError):
            raise UnknownUser(user_id, suggest(str(user_id), self._users)) from None

    def actor(self, user_id: str) -> Actor:
        """A :class:`~crmflow.Actor` for the user: id, roles, and ``org`` = the unit path.

        Raises:
            UnknownUser: when there is no such user.

        """
        user = self.user(user_id)
        return Actor(user.id, user.roles, org=user.unit)

    def units(self) -> list[str]:
        """Every unit path, parents before children (the top unit ``""`` first)."""
        return list(self._units)

    def unit(self, path: str) -> Unit:
        """The unit at ``path`` (leading and trailing slashes are ignored).

        Raises:
            UnknownUnit: when there is none (with suggestions).

        """
        key = _normalize(path) if isinstance(path, str) else path
        try:
            return self._units[key]
        except (KeyError, TypeError):
            raise UnknownUnit(path, suggest(str(key), [p for p in self._units if p])) from None

    def roles(self) -> list[str]:
        """Every role some user holds (active or not), sorted."""
        return sorted(self._roles)

    def users_with_role(self, role: str, *, include_inactive: bool = False) -> list[str]:
        """The ids of the users holding ``role``, sorted; ``[]`` when nobody holds it."""
        return [
            uid for uid in self._roles.get(role, ()) if include_inactive or self._users[uid].active
        ]

    def members(
        self, unit_path: str, recursive: bool = True, *, include_inactive: bool = False
    ) -> list[str]:
        """The ids of the users in the unit (and, when ``recursive``, every unit below), sorted.

        Raises:
            UnknownUnit: when there is no such unit.

        """
        unit = self.unit(unit_path)
        paths = self._subtree[unit.path] if recursive else frozenset({unit.path})
        return sorted(
            u.id for u in self._users.values() if u.unit in paths and (include_inactive or u.active)
        )

    # -- the manager chain ---------------------------------------------------------------

    def _manager_from(self, path: str, skip: str | None) -> str | None:
        current: str | None = path
        while current is not None:
            unit = self._units[current]
            if unit.manager is not None and unit.manager != skip:
                return unit.manager
            current = unit.parent
        return None

    def manager_of(self, user_id: str) -> str | None:
        """The user's manager; ``None`` for the top manager.

        That is the manager of the user's unit, or, when the user manages that unit themselves
        (or it has no manager), the nearest manager above it.

        Raises:
            UnknownUser: when there is no such user.

        """
        user = self.user(user_id)
        return self._manager_from(user.unit, user.id)

    def managers_above(self, user_id: str) -> list[str]:
        """The chain of managers above the user, nearest first (empty at the top).

        Raises:
            UnknownUser: when there is no such user.

        """
        chain: list[str] = []
        seen = {user_id}
        current = self.manager_of(user_id)
        # Load-time checks make every step go strictly up the tree; the guard is a backstop.
        while current is not None and current not in seen:
            chain.append(current)
            seen.add(current)
            current = self.manager_of(current)
        return chain

    def unit_manager(self, unit_path: str) -> str | None:
        """The manager responsible for the unit: its own, else the nearest one above it.

        Raises:
            UnknownUnit: when there is no such unit.

        """
        return self._manager_from(self.unit(unit_path).path, None)

    def managed_units(self, user_id: str) -> list[str]:
        """The paths of the units the user is the manager of, in tree order.

        Raises:
            UnknownUser: when there is no such user.

        """
        self.user(user_id)
        return list(self._managed.get(user_id, ()))

    # -- visibility ----------------------------------------------------------------------

    @staticmethod
    def is_below(unit_path: str, ancestor_path: str) -> bool:
        """Whether ``unit_path`` is ``ancestor_path`` or inside it (``""`` contains every path).

        This compares paths only; neither needs to exist in the directory, so records filed
        under a unit that has since been removed are still placed correctly.
        """
        unit, ancestor = _normalize(unit_path), _normalize(ancestor_path)
        return not ancestor or unit == ancestor or unit.startswith(ancestor + "/")

    def visible_units(self, user_id: str) -> frozenset[str]:
        """The unit paths whose records the user may see: open downward, closed upward.

        A manager sees every unit at or below each unit they manage. A user who manages
        nothing gets the empty set: they see only records they own themselves, which the host
        checks by owner, not by unit. An inactive user sees nothing.

        Raises:
            UnknownUser: when there is no such user.

        """
        if not self.user(user_id).active:
            return frozenset()
        visible: set[str] = set()
        for path in self._managed.get(user_id, ()):
            visible |= self._subtree[path]
        return frozenset(visible)

    def can_see(self, user_id: str, unit_path: str) -> bool:
        """Whether the user may see records filed under ``unit_path`` (see :meth:`visible_units`).

        Unlike a lookup in :meth:`visible_units`, this also places paths the directory does not
        (or no longer) contain: a record under ``sales/north`` is visible to the manager of
        ``sales``.

        Raises:
            UnknownUser: when there is no such user.

        """
        if not self.user(user_id).active:
            return False
        return any(self.is_below(unit_path, path) for path in self._managed.get(user_id, ()))

    # -- delegation ----------------------------------------------------------------------

    def delegation_at(self, user_id: str, at: datetime) -> Delegation | None:
        """The user's delegation in effect at ``at`` (time-zone aware), or ``None``.

        Raises:
            UnknownUser: when there is no such user.
            ValueError: when ``at`` is naive.

        """
        self.user(user_id)
        _require_aware(at)
        for delegation in self._by_delegator.get(user_id, ()):
            if delegation.active_at(at):
                return delegation
        return None

    def _route(self, intended: str, at: datetime) -> tuple[tuple[str, ...], list[str]] | None:
        """Follow inactivity and delegations from ``intended``: the chain and the reasons."""
        chain = [intended]
        reasons: list[str] = []
        current = intended
        while True:
            user = self._users[current]
            if not user.active:
                step = self._manager_from(user.unit, user.id)
                if step is None:
                    return None
                reasons.append(f"{current} is inactive; {step}, the next manager up, stands in")
            else:
                delegation = next(
                    (d for d in self._by_delegator.get(current, ()) if d.active_at(at)), None
                )
                if delegation is None:
                    return tuple(chain), reasons
                step = delegation.delegate
                reasons.append(delegation.describe())
            if step in chain:
                # Load-time checks rule loops out; stopping here keeps a bad mapping harmless.
                return (tuple(chain), reasons) if user.active else None
            chain.append(step)
            current = step

    def acting_for(self, user_id: str, at: datetime) -> list[str]:
        """The users whose work reaches ``user_id`` through delegations at ``at``, sorted.

        Raises:
            UnknownUser: when there is no such user.
            ValueError: when ``at`` is naive.

        """
        self.user(user_id)
        _require_aware(at)
        found = []
        for delegator in self._by_delegator:
            if delegator == user_id:
                continue
            routed = self._route(delegator, at)
            if routed is not None and routed[0][-1] == user_id and len(routed[0]) > 1:
                found.append(delegator)
        return sorted(found)

    # -- recipients ----------------------------------------------------------------------

    def check_spec(self, spec: str) -> RecipientSpec:
        """Parse ``spec`` and check that the role, user or unit it names exists.

        A role counts as existing when at least one user (active or not) holds it.

        Raises:
            RecipientSpecError: for a malformed spec or an unknown name (with suggestions).

        """
        parsed = RecipientSpec.parse(spec)
        if parsed.kind == "role" and parsed.argument not in self._roles:
            raise RecipientSpecError(
                spec,
                f"nobody in the org directory holds role {parsed.argument!r}",
                suggestions=[f"role:{r}" for r in suggest(parsed.argument, self._roles)],
            )
        if parsed.kind == "user" and parsed.argument not in self._users:
            raise RecipientSpecError(
                spec,
                f"no user {parsed.argument!r} in the org directory",
                suggestions=[f"user:{u}" for u in suggest(parsed.argument, self._users)],
            )
        if parsed.kind == "unit" and parsed.argument not in self._units:
            near = suggest(parsed.argument, [p for p in self._units if p])
            raise RecipientSpecError(
                spec,
                f"no unit {parsed.argument!r} in the org directory",
                suggestions=[f"unit:{p}" for p in near],
            )
        return parsed

    def _intended(self, parsed: RecipientSpec, owner: str | None) -> list[str]:
        if parsed.kind in _BARE_KINDS:
            assert owner is not None  # resolve_many checked it
            if parsed.kind == "owner":
                return [owner]
            if parsed.kind == "manager":
                manager = self.manager_of(owner)
                return [] if manager is None else [manager]
            return self.managers_above(owner)
        if parsed.kind == "role":
            return self.users_with_role(parsed.argument)
        if parsed.kind == "user":
            return [parsed.argument]
        manager = self.unit_manager(parsed.argument)
        return [] if manager is None else [manager]

    def resolve(self, spec: str, *, owner: str | None = None, at: datetime) -> list[Recipient]:
        """Who receives what is addressed to ``spec`` at the moment ``at``.

        Each addressed user is followed through delegations in effect at ``at`` (and through
        chains of them: alice to bob, bob to carol when bob is away too); an inactive user is
        replaced by the nearest manager above them. ``role:NAME`` addresses only active
        holders. The result is de-duplicated by receiving user, first occurrence kept, in a
        stable order (roles by user id, ``managers`` nearest first). It may be empty, e.g.
        for ``manager`` of the general manager.

        Args:
            spec: a recipient spec (see :class:`RecipientSpec`).
            owner: the user the record belongs to; needed by ``owner``, ``manager`` and
                ``managers``.
            at: the moment that decides which delegations apply (time-zone aware).

        Raises:
            RecipientSpecError: for a malformed spec, an unknown role, user or unit, or a
                spec that needs an owner when none is given.
            UnknownUser: when ``owner`` is not in the directory.
            ValueError: when ``at`` is naive.

        """
        return self.resolve_many([spec], owner=owner, at=at)

    def resolve_many(
        self, specs: Iterable[str], *, owner: str | None = None, at: datetime
    ) -> list[Recipient]:
        """:meth:`resolve` for several specs, de-duplicated across all of them, in spec order.

        Every spec (and the owner, when a spec needs one) is checked before any is resolved,
        so one bad spec fails the whole call.
        """
        if isinstance(specs, str):
            raise TypeError("resolve_many takes a list of specs; use resolve for one spec")
        _require_aware(at)
        parsed = [(spec, self.check_spec(spec)) for spec in specs]
        for spec, one in parsed:
            if one.kind in _BARE_KINDS:
                if owner is None:
                    raise RecipientSpecError(
                        spec, "needs an owner", hint="pass owner= (the record's owner) to resolve"
                    )
                self.user(owner)
        recipients: list[Recipient] = []
        seen: set[str] = set()
        for _, one in parsed:
            for intended in self._intended(one, owner):
                routed = self._route(intended, at)
                if routed is None:
                    continue
                chain, reasons = routed
                receiver = self._users[chain[-1]]
                if receiver.id in seen:
                    continue
                seen.add(receiver.id)
                recipients.append(
                    Recipient(
                        user=receiver.id,
                        intended=intended,
                        delegated=receiver.id != intended,
                        reason="; ".join(reasons),
                        email=receiver.email,
                        timezone=receiver.timezone,
                        spec=str(one),
                        chain=chain,
                    )
                )
        return recipients


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


class _Skip(Exception):
    """Internal: the current item had an error already recorded; move on to the next one."""


@dataclass
class _UnitDraft:
    path: str
    id: str
    name: str
    manager: str | None
    manager_at: KeyPath
    parent: str | None
    description: str = ""
    children: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _DelegationDraft:
    index: int
    delegation: Delegation


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return _KIND_NAMES.get(type(value), type(value).__name__)


class _Builder:
    """Builds the parts of one directory from plain data, collecting every error."""

    def __init__(self, data: Any, source: str, doc: YamlDocument | None) -> None:
        self.data = data
        self.source = source
        self.doc = doc
        self.errors: list[DefinitionError] = []
        self.org_name = ""
        self.org_zone: str | None = None
        self.units: dict[str, _UnitDraft] = {}
        self.declared_users: set[str] = set()
        self.users: dict[str, User] = {}
        self.delegations: list[_DelegationDraft] = []

    # -- error helpers -------------------------------------------------------------------

    def where(self, path: KeyPath, *, at_key: bool = False) -> tuple[int, int]:
        if self.doc is None:
            return 0, 0
        pos = self.doc.key_pos(path) if at_key else self.doc.pos(path)
        return pos.line, pos.column

    def error(
        self,
        reason: str,
        path: KeyPath,
        *,
        at_key: bool = False,
        suggestions: Sequence[str] = (),
        hint: str = "",
    ) -> _Skip:
        line, column = self.where(path, at_key=at_key)
        self.errors.append(
            DefinitionError(
                reason,
                source=self.source,
                line=line,
                column=column,
                path=format_path(path),
                suggestions=suggestions,
                hint=hint,
            )
        )
        return _Skip()

    def expect(self, value: Any, kind: type, path: KeyPath, what: str = "") -> Any:
        # Hosts building a directory in code may hand over any mapping or sequence.
        if kind is dict and isinstance(value, Mapping):
            return value
        if kind is list and isinstance(value, list | tuple):
            return value
        if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
            return value
        hint = ""
        if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
            hint = "quote it to make it text"
        elif kind is bool and isinstance(value, str):
            hint = "only true and false are booleans"
        raise self.error(
            f"expected {what or _KIND_NAMES[kind]}, got {_kind(value)}", path, hint=hint
        )

    def check_keys(
        self, mapping: Mapping[str, Any], path: KeyPath, allowed: Mapping[str, bool], what: str
    ) -> bool:
        """Record unknown and missing keys; return whether every required key is present."""
        misspelled: set[str] = set()
        for key in mapping:
            if key in allowed:
                continue
            near = suggest(str(key), [k for k in allowed if k not in mapping] or allowed)
            misspelled.update(near[:1])
            self.error(
                f"unknown key {key!r} in {what}",
                (*path, key),
                at_key=True,
                suggestions=near,
                hint="" if near else "allowed keys: " + ", ".join(allowed),
            )
        complete = True
        for key, required in allowed.items():
            if required and key not in mapping:
                complete = False
                if key not in misspelled:
                    self.error(f"missing required key {key!r} in {what}", (*path, key))
        return complete

    def optional_text(self, mapping: Mapping[str, Any], key: str, path: KeyPath) -> str | None:
        if mapping.get(key) is None:
            return None
        try:
            return str(self.expect(mapping[key], str, (*path, key)))
        except _Skip:
            return None

    def zone(self, mapping: Mapping[str, Any], key: str, path: KeyPath) -> str | None:
        name = self.optional_text(mapping, key, path)
        if name is None:
            return None
        try:
            zoneinfo.ZoneInfo(name)
        except (ValueError, LookupError, OSError):
            self.error(
                f"unknown time zone {name!r}",
                (*path, key),
                suggestions=suggest(name, zoneinfo.available_timezones()),
                hint="use an IANA name such as Asia/Shanghai, Europe/Berlin or UTC",
            )
            return None
        return name

    # -- the document --------------------------------------------------------------------

    def build(self) -> _Parts | None:
        data = self.data
        if data is None:
            self.error("the org directory is empty", (), hint="it needs at least 'users:'")
            return None
        if not isinstance(data, Mapping):
            self.error(f"expected a mapping with org, users, delegations, got {_kind(data)}", ())
            return None
        self.check_keys(data, (), TOP_LEVEL_KEYS, "the org directory")
        self.read_org(data.get("org"))
        self.read_users(data.get("users"))
        self.check_managers()
        self.read_delegations(data.get("delegations"))
        self.check_overlaps()
        if self.errors:
            return None
        units: dict[str, Unit] = {}
        for draft in self.units.values():
            units[draft.path] = Unit(
                path=draft.path,
                id=draft.id,
                name=draft.name,
                manager=draft.manager,
                parent=draft.parent,
                children=tuple(draft.children),
                description=draft.description,
            )
        return _Parts(
            name=self.org_name,
            source=self.source,
            units=units,
            users=self.users,
            delegations=tuple(d.delegation for d in self.delegations),
        )

    def read_org(self, org: Any) -> None:
        path: KeyPath = ("org",)
        root = _UnitDraft(ROOT, "", "", None, (*path, "manager"), None)
        self.units[ROOT] = root
        if org is None:
            return
        try:
            self.expect(org, dict, path, "a mapping")
        except _Skip:
            return
        self.check_keys(org, path, ORG_KEYS, "org")
        self.org_name = self.optional_text(org, "name", path) or ""
        root.name = self.org_name
        root.description = self.optional_text(org, "description", path) or ""
        root.manager = self.optional_text(org, "manager", path)
        self.org_zone = self.zone(org, "timezone", path)
        self.read_units(org.get("units"), (*path, "units"), ROOT)

    def read_units(self, value: Any, path: KeyPath, parent: str) -> None:
        if value is None:
            return
        try:
            self.expect(value, list, path, "a list of units")
        except _Skip:
            return
        siblings: dict[str, KeyPath] = {}
        for index, item in enumerate(value):
            item_path = (*path, index)
            try:
                self.expect(item, dict, item_path, "a unit (a mapping with id, name, manager)")
                if not self.check_keys(item, item_path, UNIT_KEYS, "a unit"):
                    raise _Skip()
                id_path = (*item_path, "id")
                unit_id = self.expect(item["id"], str, id_path, "a unit id")
                if not _UNIT_ID.fullmatch(unit_id):
                    raise self.error(
                        f"invalid unit id {unit_id!r}",
                        id_path,
                        hint="use letters, digits, '_', '-' and '.'; '/' separates levels "
                        "and comes from nesting units",
                    )
                if unit_id in siblings:
                    line, column = self.where(siblings[unit_id])
                    first = f" (first at line {line}, column {column})" if line else ""
                    raise self.error(
                        f"duplicate unit id {unit_id!r} in {_unit_label(parent)}{first}",
                        id_path,
                    )
                siblings[unit_id] = id_path
                unit_path = f"{parent}/{unit_id}" if parent else unit_id
                draft = _UnitDraft(
                    path=unit_path,
                    id=unit_id,
                    name=self.optional_text(item, "name", item_path) or unit_id,
                    manager=self.optional_text(item, "manager", item_path),
                    manager_at=(*item_path, "manager"),
                    parent=parent,
                    description=self.optional_text(item, "description", item_path) or "",
                )
                self.units[unit_path] = draft
                self.units[parent].children.append(unit_path)
                self.read_units(item.get("units"), (*item_path, "units"), unit_path)
            except _Skip:
                continue

    def read_users(self, value: Any) -> None:
        path: KeyPath = ("users",)
        if value is None:
            return
        try:
            self.expect(value, dict, path, "a mapping of user id to user")
        except _Skip:
            return
        self.declared_users.update(value)
        for user_id, item in value.items():
            try:
                self.read_user(user_id, {} if item is None else item, (*path, user_id))
            except _Skip:
                continue

    def read_user(self, user_id: str, item: Any, path: KeyPath) -> None:
        if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
            raise self.error(
                f"invalid user id {user_id!r}", path, at_key=True, hint="no spaces or '/'"
            )
        self.expect(item, dict, path, "a user (a mapping with name, email, unit, roles)")
        self.check_keys(item, path, USER_KEYS, f"user {user_id!r}")
        valid = True
        email = self.optional_text(item, "email", path)
        if email is not None and not _EMAIL.fullmatch(email):
            valid = False
            self.error(
                f"{email!r} is not an e-mail address",
                (*path, "email"),
                hint="write it as name@domain",
            )
        unit = ROOT
        if "unit" in item:
            try:
                written = self.expect(item["unit"], str, (*path, "unit"), "a unit path")
                unit = _normalize(written)
                if unit not in self.units:
                    raise self.error(
                        f"unknown unit {written!r}",
                        (*path, "unit"),
                        suggestions=suggest(unit, [p for p in self.units if p]),
                        hint="units are written as paths of ids from the top, e.g. sales/east",
                    )
            except _Skip:
                valid = False
        roles = self.read_roles(item.get("roles"), (*path, "roles"))
        zone = self.zone(item, "timezone", path)
        if zone is None and item.get("timezone") is not None:
            valid = False
        active = True
        if "active" in item:
            try:
                active = self.expect(item["active"], bool, (*path, "active"))
            except _Skip:
                valid = False
        if roles is None or not valid:
            return
        self.users[user_id] = User(
            id=user_id,
            name=self.optional_text(item, "name", path) or user_id,
            email=email,
            unit=unit,
            roles=roles,
            timezone=zone or self.org_zone,
            active=active,
        )

    def read_roles(self, value: Any, path: KeyPath) -> frozenset[str] | None:
        if value is None:
            return frozenset()
        if isinstance(value, str):
            items: list[tuple[Any, KeyPath]] = [(value, path)]
        elif isinstance(value, list | tuple | set | frozenset):
            ordered = value if isinstance(value, list | tuple) else sorted(value, key=str)
            items = [(role, (*path, i)) for i, role in enumerate(ordered)]
        else:
            self.error(f"expected a list of roles, got {_kind(value)}", path)
            return None
        roles: set[str] = set()
        ok = True
        for role, role_path in items:
            if not isinstance(role, str) or not IDENTIFIER.fullmatch(role):
                ok = False
                self.error(
                    f"invalid role {role!r}",
                    role_path,
                    hint="use lower-case letters, digits and '_', not starting with a digit",
                )
            else:
                roles.add(role)
        return frozenset(roles) if ok else None

    def check_managers(self) -> None:
        for unit in self.units.values():
            manager = unit.manager
            if manager is None:
                continue
            if manager not in self.declared_users:
                self.error(
                    f"unknown user {manager!r} as manager of {_unit_label(unit.path)}",
                    unit.manager_at,
                    suggestions=suggest(manager, self.declared_users),
                )
                continue
            user = self.users.get(manager)
            if user is not None and not OrgDirectory.is_below(unit.path, user.unit):
                self.error(
                    f"{manager!r} cannot manage {_unit_label(unit.path)}: they belong to "
                    f"{_unit_label(user.unit)}, which is not that unit or above it",
                    unit.manager_at,
                    hint=f"a manager belongs to the unit they manage or one above it; set "
                    f"users.{manager}.unit",
                )

    # -- delegations ---------------------------------------------------------------------

    def read_delegations(self, value: Any) -> None:
        path: KeyPath = ("delegations",)
        if value is None:
            return
        try:
            self.expect(value, list, path, "a list of delegations")
        except _Skip:
            return
        for index, item in enumerate(value):
            try:
                self.read_delegation(index, item, (*path, index))
            except _Skip:
                continue

    def user_ref(self, item: Mapping[str, Any], key: str, path: KeyPath) -> str:
        user_id = self.expect(item[key], str, (*path, key), "a user id")
        if user_id not in self.declared_users:
            raise self.error(
                f"unknown user {user_id!r}",
                (*path, key),
                suggestions=suggest(user_id, self.declared_users),
            )
        return str(user_id)

    def read_delegation(self, index: int, item: Any, path: KeyPath) -> None:
        self.expect(item, dict, path, "a delegation (a mapping with from, to, start, end)")
        if not self.check_keys(item, path, DELEGATION_KEYS, "a delegation"):
            raise _Skip()
        delegator = self.user_ref(item, "from", path)
        delegate = self.user_ref(item, "to", path)
        if delegate == delegator:
            raise self.error(
                f"{delegator!r} delegates to themselves",
                (*path, "to"),
                hint="name the colleague who stands in",
            )
        to_user = self.users.get(delegate)
        if to_user is not None and not to_user.active:
            raise self.error(
                f"{delegate!r} is inactive and cannot stand in for {delegator!r}",
                (*path, "to"),
            )
        from_user = self.users.get(delegator)
        if from_user is None:
            raise _Skip()
        zone: tzinfo = UTC if from_user.timezone is None else zoneinfo.ZoneInfo(from_user.timezone)
        start = self.moment(item["start"], (*path, "start"), zone, end=False)
        end = self.moment(item["end"], (*path, "end"), zone, end=True)
        if start is None or end is None:
            raise _Skip()
        if end < start:
            raise self.error(
                f"end {_minutes(end)} is before start {_minutes(start)}", (*path, "end")
            )
        reason = self.optional_text(item, "reason", path) or ""
        self.delegations.append(
            _DelegationDraft(index, Delegation(delegator, delegate, start, end, reason))
        )

    def moment(self, value: Any, path: KeyPath, zone: tzinfo, *, end: bool) -> datetime | None:
        """A delegation bound: date-times as given, a bare date is the whole day."""
        if isinstance(value, datetime):
            moment = value
        elif isinstance(value, date):
            moment = datetime.combine(value, time.max if end else time.min)
        elif isinstance(value, str) and _DATE_ONLY.fullmatch(value.strip()):
            try:
                day = date.fromisoformat(value.strip())
            except ValueError:
                self.error(f"{value!r} is not a valid date", path)
                return None
            moment = datetime.combine(day, time.max if end else time.min)
        elif isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.strip())
            except ValueError:
                self.error(
                    f"{value!r} is not a date-time",
                    path,
                    hint="write 2026-02-02T09:00, 2026-02-02T09:00+08:00 or a date 2026-02-02",
                )
                return None
        else:
            self.error(f"expected a date-time, got {_kind(value)}", path)
            return None
        if moment.tzinfo is None or moment.utcoffset() is None:
            moment = moment.replace(tzinfo=zone)
        return moment.astimezone(zone)

    def check_overlaps(self) -> None:
        """One delegation per user at a time, and no loops among those in effect together."""
        kept: list[_DelegationDraft] = []
        for draft in self.delegations:
            one = draft.delegation
            clash = next(
                (
                    k
                    for k in kept
                    if k.delegation.delegator == one.delegator
                    and k.delegation.start <= one.end
                    and one.start <= k.delegation.end
                ),
                None,
            )
            if clash is None:
                kept.append(draft)
                continue
            other = clash.delegation
            self.error(
                f"{one.delegator!r} already delegates to {other.delegate!r} from "
                f"{_minutes(other.start)} to {_minutes(other.end)} (delegations[{clash.index}])",
                ("delegations", draft.index, "start"),
                hint="one user's delegations must not overlap; end one before the next starts",
            )
        # Intervals that overlap pairwise share a moment, and the latest start is one such
        # moment, so checking at every start finds every loop.
        reported: set[frozenset[int]] = set()
        for probe in kept:
            moment = probe.delegation.start
            edges = {k.delegation.delegator: k for k in kept if k.delegation.active_at(moment)}
            for first in edges:
                walk: list[str] = []
                node = first
                while node in edges and node not in walk:
                    walk.append(node)
                    node = edges[node].delegation.delegate
                if node not in walk:
                    continue
                loop = walk[walk.index(node) :]
                members = frozenset(edges[n].index for n in loop)
                if members in reported:
                    continue
                reported.add(members)
                closing = max((edges[n] for n in loop), key=lambda d: d.index)
                opening = min((edges[n] for n in loop), key=lambda d: d.index)
                # Name the loop from the delegation written first, as the reader meets it.
                at = loop.index(opening.delegation.delegator)
                ordered = [*loop[at:], *loop[:at], opening.delegation.delegator]
                self.error(
                    "delegations form a loop at "
                    f"{moment.isoformat(timespec='minutes')}: " + " -> ".join(ordered),
                    ("delegations", closing.index, "to"),
                    hint="someone in the loop must stay, or the periods must not overlap",
                )


def _first(errors: list[DefinitionError]) -> DefinitionError:
    # Report the earliest problem in the file; without positions keep the order found.
    return min(errors, key=lambda e: (e.line == 0, e.line, e.column))


def _build(data: Any, source: str, doc: YamlDocument | None) -> _Parts:
    builder = _Builder(data, source, doc)
    parts = builder.build()
    if parts is None:
        raise _first(builder.errors)
    return parts


def collect_org_errors(
    text: str, source: str = "<string>", *, limits: YamlLimits = DEFAULT_LIMITS
) -> list[DefinitionError]:
    """Every problem in an org directory text, in file order; empty when it loads.

    A YAML syntax error stops reading, so it is the only one reported.
    """
    try:
        doc = read_yaml_text(text, source, limits)
    except DefinitionError as exc:
        return [exc]
    builder = _Builder(doc.data, source, doc)
    builder.build()
    return sorted(builder.errors, key=lambda e: (e.line == 0, e.line, e.column))


def load_org_text(
    text: str, source: str = "<string>", *, limits: YamlLimits = DEFAULT_LIMITS
) -> OrgDirectory:
    """Build a directory from YAML text.

    Raises:
        DefinitionError: for the first problem in the text (by position).

    """
    doc = read_yaml_text(text, source, limits)
    return OrgDirectory._from_parts(_build(doc.data, source, doc))


def load_org_file(path: str | Path, *, limits: YamlLimits = DEFAULT_LIMITS) -> OrgDirectory:
    """Build a directory from a YAML file.

    Raises:
        DefinitionError: when the file cannot be read, or for its first problem.

    """
    doc = read_yaml_file(path, limits)
    return OrgDirectory._from_parts(_build(doc.data, doc.source, doc))
