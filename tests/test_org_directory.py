"""The YAML org directory: structure, managers, visibility, delegation, recipients, errors."""

from __future__ import annotations

import re
from dataclasses import FrozenInstanceError, dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmflow import Actor, CrmflowError, DefinitionError
from crmflow.plugins.org_directory import (
    ROOT,
    OrgDirectory,
    Recipient,
    RecipientSpec,
    RecipientSpecError,
    UnknownUnit,
    UnknownUser,
    collect_org_errors,
    load_org_file,
    load_org_text,
)

ROOT_DIR = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "org" / "acme.yaml"
TEXT = FIXTURE.read_text(encoding="utf-8")
SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture(scope="module")
def acme() -> OrgDirectory:
    return load_org_file(FIXTURE)


def sh(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    """A moment in Shanghai time (the fixture's organisation time zone)."""
    return datetime(year, month, day, hour, minute, second, tzinfo=SHANGHAI)


# ---------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------


def test_loads_the_fixture(acme: OrgDirectory) -> None:
    assert acme.name == "ACME Trading"
    assert acme.source == str(FIXTURE)
    assert acme.units() == [
        "",
        "sales",
        "sales/east",
        "sales/west",
        "finance",
        "warehouse",
        "service",
    ]
    east = acme.unit("sales/east")
    assert (east.id, east.name, east.manager, east.parent) == (
        "east",
        "Sales East",
        "erin",
        "sales",
    )
    assert acme.unit("sales").children == ("sales/east", "sales/west")
    top = acme.unit(ROOT)
    assert (top.name, top.manager, top.parent) == ("ACME Trading", "grace", None)
    assert acme.unit("/sales/east/") == east
    assert repr(acme) == "OrgDirectory('ACME Trading', users=13, units=6, delegations=4)"


def test_users_and_defaults(acme: OrgDirectory) -> None:
    alice = acme.user("alice")
    assert alice.name == "Alice Chen"
    assert alice.email == "alice@acme.example"
    assert alice.unit == "sales/east"
    assert alice.roles == frozenset({"sales_rep"})
    # No time zone of her own: the organisation's applies.
    assert alice.timezone == "Asia/Shanghai"
    assert alice.active
    assert acme.user("wes").timezone == "Europe/Berlin"
    assert acme.user("grace").unit == ROOT
    # A user without roles or e-mail is allowed.
    nora = acme.user("nora")
    assert (nora.roles, nora.email) == (frozenset(), None)
    assert not acme.user("olga").active
    assert "olga" in acme
    assert "olga" not in acme.users()
    assert "olga" in acme.users(include_inactive=True)
    assert acme.roles() == [
        "customer_service",
        "finance",
        "general_manager",
        "sales_manager",
        "sales_rep",
        "warehouse",
    ]


def test_actor(acme: OrgDirectory) -> None:
    assert acme.actor("erin") == Actor("erin", {"sales_manager"}, org="sales/east")
    assert acme.actor("grace").org == ""


def test_unknown_user_and_unit(acme: OrgDirectory) -> None:
    with pytest.raises(UnknownUser) as caught:
        acme.user("alise")
    assert caught.value.user_id == "alise"
    assert caught.value.suggestions == ("alice",)
    assert isinstance(caught.value, LookupError)
    assert isinstance(caught.value, CrmflowError)
    assert "did you mean 'alice'?" in str(caught.value)
    with pytest.raises(UnknownUnit) as unit_error:
        acme.members("sales/eas")
    assert unit_error.value.suggestions[0] == "sales/east"
    with pytest.raises(UnknownUser):
        acme.manager_of("nobody")


def test_directory_is_immutable(acme: OrgDirectory) -> None:
    with pytest.raises(AttributeError):
        acme._users = {}
    with pytest.raises(AttributeError):
        del acme._units
    with pytest.raises(FrozenInstanceError):
        acme.user("alice").unit = "finance"  # type: ignore[misc]
    with pytest.raises(TypeError):
        acme._units["x"] = acme.unit("sales")  # type: ignore[index]
    acme.units().append("x")
    assert "x" not in acme.units()


# ---------------------------------------------------------------------------------------------
# Managers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "manager"),
    [
        ("alice", "erin"),  # a rep: the team manager
        ("erin", "sam"),  # a team manager: the department manager
        ("sam", "grace"),  # a department manager: the general manager
        ("grace", None),  # the general manager
        ("quinn", "grace"),  # a unit without a manager: the nearest one above
        ("olga", "wes"),  # inactive users still have a place in the tree
    ],
)
def test_manager_of(acme: OrgDirectory, user: str, manager: str | None) -> None:
    assert acme.manager_of(user) == manager


def test_managers_above_and_unit_manager(acme: OrgDirectory) -> None:
    assert acme.managers_above("alice") == ["erin", "sam", "grace"]
    assert acme.managers_above("wes") == ["sam", "grace"]
    assert acme.managers_above("grace") == []
    assert acme.unit_manager("sales/west") == "wes"
    assert acme.unit_manager("service") == "grace"
    assert acme.unit_manager("") == "grace"
    assert acme.managed_units("sam") == ["sales"]
    assert acme.managed_units("alice") == []


def test_a_manager_of_several_units() -> None:
    org = OrgDirectory.from_mapping(
        {
            "org": {
                "manager": "gm",
                "units": [
                    {"id": "a", "manager": "gm", "units": [{"id": "b", "manager": "lead"}]},
                ],
            },
            "users": {"gm": {}, "lead": {"unit": "a"}, "rep": {"unit": "a/b"}},
        }
    )
    # The general manager also runs unit a: the lead's manager is still the general manager.
    assert org.manager_of("lead") == "gm"
    assert org.manager_of("gm") is None
    assert org.managers_above("rep") == ["lead", "gm"]
    assert org.managed_units("gm") == ["", "a"]


def test_roles_and_members(acme: OrgDirectory) -> None:
    assert acme.users_with_role("sales_rep") == ["alice", "bob", "carol", "will"]
    assert acme.users_with_role("sales_rep", include_inactive=True) == [
        "alice",
        "bob",
        "carol",
        "olga",
        "will",
    ]
    assert acme.users_with_role("nobody_has_this") == []
    assert acme.members("sales") == ["alice", "bob", "carol", "erin", "sam", "wes", "will"]
    assert acme.members("sales", recursive=False) == ["sam"]
    assert acme.members("sales/west", include_inactive=True) == ["olga", "wes", "will"]
    assert len(acme.members("")) == 12


# ---------------------------------------------------------------------------------------------
# Visibility
# ---------------------------------------------------------------------------------------------


def test_is_below() -> None:
    assert OrgDirectory.is_below("sales/east", "sales")
    assert OrgDirectory.is_below("sales", "sales")
    assert OrgDirectory.is_below("sales/east", "")
    assert OrgDirectory.is_below("/sales/east/", "sales/")
    assert not OrgDirectory.is_below("sales", "sales/east")
    # A prefix of the text is not a parent.
    assert not OrgDirectory.is_below("salesforce", "sales")
    assert not OrgDirectory.is_below("", "sales")
    # Paths need not exist: records of a removed unit are still placed.
    assert OrgDirectory.is_below("sales/north", "sales")


def test_visible_units(acme: OrgDirectory) -> None:
    assert acme.visible_units("grace") == frozenset(acme.units())
    assert acme.visible_units("sam") == {"sales", "sales/east", "sales/west"}
    assert acme.visible_units("erin") == {"sales/east"}
    # Closed upward: a rep sees no unit, only their own records.
    assert acme.visible_units("alice") == frozenset()
    assert acme.visible_units("olga") == frozenset()


def test_can_see(acme: OrgDirectory) -> None:
    assert acme.can_see("sam", "sales/west")
    assert acme.can_see("sam", "sales/north")  # a unit that no longer exists
    assert not acme.can_see("erin", "sales/west")
    assert not acme.can_see("erin", "sales")
    assert not acme.can_see("alice", "sales/east")
    assert acme.can_see("grace", "anything/at/all")


def test_inactive_manager_sees_nothing() -> None:
    org = OrgDirectory.from_mapping(
        {
            "org": {"units": [{"id": "a", "manager": "old"}]},
            "users": {"old": {"unit": "a", "active": False}},
        }
    )
    assert org.visible_units("old") == frozenset()


# ---------------------------------------------------------------------------------------------
# Delegation and recipients
# ---------------------------------------------------------------------------------------------


def test_delegation_boundaries_are_inclusive(acme: OrgDirectory) -> None:
    # 2026-02-02T00:00 to 2026-02-06T23:59, written without offset: Shanghai time (org default).
    before = sh(2026, 2, 1, 23, 59, 59)
    start = sh(2026, 2, 2, 0, 0)
    end = sh(2026, 2, 6, 23, 59)
    after = end + timedelta(microseconds=1)
    assert acme.delegation_at("alice", before) is None
    assert acme.delegation_at("alice", start) is not None
    assert acme.delegation_at("alice", end) is not None
    assert acme.delegation_at("alice", after) is None
    # The same instant written in UTC.
    assert acme.delegation_at("alice", datetime(2026, 2, 1, 16, 0, tzinfo=UTC)) is not None
    assert acme.delegation_at("alice", datetime(2026, 2, 1, 15, 59, tzinfo=UTC)) is None


@pytest.mark.parametrize(
    ("at", "receiver"),
    [
        (sh(2026, 2, 1, 23, 59), "alice"),
        (sh(2026, 2, 2, 0, 0), "bob"),
        (sh(2026, 2, 4, 23, 59, 59), "bob"),
        (sh(2026, 2, 5, 0, 0), "carol"),  # bob is in training too: the chain goes on
        (sh(2026, 2, 5, 23, 59, 59), "carol"),  # a bare end date means the whole day
        (sh(2026, 2, 6, 0, 0), "bob"),
        (sh(2026, 2, 6, 23, 59), "bob"),
        (sh(2026, 2, 7, 0, 0), "alice"),
    ],
)
def test_owner_follows_delegations(acme: OrgDirectory, at: datetime, receiver: str) -> None:
    [recipient] = acme.resolve("owner", owner="alice", at=at)
    assert recipient.user == receiver
    assert recipient.intended == "alice"
    assert recipient.delegated == (receiver != "alice")


def test_chain_delegation_explains_each_step(acme: OrgDirectory) -> None:
    [recipient] = acme.resolve("owner", owner="alice", at=sh(2026, 2, 5, 10, 0))
    assert recipient == Recipient(
        user="carol",
        intended="alice",
        delegated=True,
        reason="alice delegates to bob until 2026-02-06 23:59 (annual leave); "
        "bob delegates to carol until 2026-02-05 23:59 (training)",
        email="carol@acme.example",
        timezone="Asia/Shanghai",
        spec="owner",
        chain=("alice", "bob", "carol"),
    )
    assert acme.acting_for("carol", sh(2026, 2, 5, 10, 0)) == ["alice", "bob"]
    assert acme.acting_for("bob", sh(2026, 2, 3, 10, 0)) == ["alice"]
    assert acme.acting_for("bob", sh(2026, 2, 5, 10, 0)) == []


def test_delegation_with_an_offset_is_shown_in_the_delegators_zone(acme: OrgDirectory) -> None:
    # start: 2026-02-02T08:00+00:00 is 09:00 in Berlin; end: 2026-02-03 is Berlin's whole day.
    delegation = acme.delegation_at("wes", datetime(2026, 2, 2, 8, 0, tzinfo=UTC))
    assert delegation is not None
    assert delegation.start == datetime(2026, 2, 2, 9, 0, tzinfo=BERLIN)
    assert acme.delegation_at("wes", datetime(2026, 2, 2, 7, 59, tzinfo=UTC)) is None
    assert acme.delegation_at("wes", datetime(2026, 2, 3, 22, 59, tzinfo=UTC)) is not None
    assert acme.delegation_at("wes", datetime(2026, 2, 3, 23, 0, tzinfo=UTC)) is None
    [recipient] = acme.resolve("manager", owner="will", at=datetime(2026, 2, 3, 12, tzinfo=UTC))
    assert recipient.user == "will"
    assert recipient.reason == "wes delegates to will until 2026-02-03 23:59"


def test_manager_on_leave(acme: OrgDirectory) -> None:
    at = sh(2026, 3, 2, 10, 0)
    [recipient] = acme.resolve("manager", owner="alice", at=at)
    assert (recipient.user, recipient.intended, recipient.delegated) == ("sam", "erin", True)
    assert recipient.reason == "erin delegates to sam until 2026-03-02 18:00"
    assert recipient.spec == "manager"
    [after] = acme.resolve("manager", owner="alice", at=sh(2026, 3, 2, 18, 1))
    assert (after.user, after.delegated, after.reason) == ("erin", False, "")


def test_role_resolution(acme: OrgDirectory) -> None:
    quiet = sh(2026, 1, 10, 9, 0)
    assert [r.user for r in acme.resolve("role:sales_rep", at=quiet)] == [
        "alice",
        "bob",
        "carol",
        "will",
    ]
    # Delegations fold the reps into fewer receivers, each once.
    busy = acme.resolve("role:sales_rep", at=sh(2026, 2, 5, 9, 0))
    assert [(r.user, r.intended) for r in busy] == [("carol", "alice"), ("will", "will")]
    [finance] = acme.resolve(" role:finance ", at=quiet)
    assert (finance.user, finance.email, finance.spec) == (
        "fay",
        "fay@acme.example",
        "role:finance",
    )


def test_inactive_user_is_replaced_by_their_manager(acme: OrgDirectory) -> None:
    [recipient] = acme.resolve("user:olga", at=sh(2026, 1, 10, 9, 0))
    assert (recipient.user, recipient.intended, recipient.delegated) == ("wes", "olga", True)
    assert recipient.reason == "olga is inactive; wes, the next manager up, stands in"
    assert recipient.timezone == "Europe/Berlin"
    assert recipient.email is None


def test_unit_and_managers_specs(acme: OrgDirectory) -> None:
    at = sh(2026, 1, 10, 9, 0)
    assert [r.user for r in acme.resolve("unit:sales/west", at=at)] == ["wes"]
    assert [r.user for r in acme.resolve("unit:service", at=at)] == ["grace"]
    assert [r.user for r in acme.resolve("unit:/", at=at)] == ["grace"]
    assert [r.user for r in acme.resolve("managers", owner="will", at=at)] == [
        "wes",
        "sam",
        "grace",
    ]
    assert acme.resolve("manager", owner="grace", at=at) == []


def test_resolve_many_deduplicates_in_spec_order(acme: OrgDirectory) -> None:
    at = sh(2026, 3, 2, 10, 0)  # erin delegates to sam
    result = acme.resolve_many(
        ["owner", "manager", "managers", "unit:sales", "role:finance"], owner="alice", at=at
    )
    assert [(r.user, r.intended, r.spec) for r in result] == [
        ("alice", "alice", "owner"),
        ("sam", "erin", "manager"),
        ("grace", "grace", "managers"),
        ("fay", "fay", "role:finance"),
    ]
    assert acme.resolve_many([], owner="alice", at=at) == []


@pytest.mark.parametrize(
    ("spec", "match", "suggestions"),
    [
        ("managr", "unknown recipient form", ("manager", "managers")),
        ("roles:sales_rep", "unknown recipient form 'roles:'", ("role:sales_rep",)),
        ("role:sales_rap", "nobody .* holds role 'sales_rap'", ("role:sales_rep",)),
        ("user:alise", "no user 'alise'", ("user:alice",)),
        ("unit:finanse", "no unit 'finanse'", ("unit:finance",)),
        ("role", "'role' needs a name", ()),
        ("user:", "'user' needs a name", ()),
        ("owner:alice", "'owner' takes no name", ("owner",)),
        ("", "unknown recipient form", ()),
    ],
)
def test_bad_specs(acme: OrgDirectory, spec: str, match: str, suggestions: tuple[str, ...]) -> None:
    with pytest.raises(RecipientSpecError, match=match) as caught:
        acme.resolve(spec, owner="alice", at=sh(2026, 1, 10))
    assert caught.value.suggestions == suggestions
    assert caught.value.spec == spec
    assert isinstance(caught.value, ValueError)


def test_resolve_misuse(acme: OrgDirectory) -> None:
    at = sh(2026, 1, 10)
    with pytest.raises(RecipientSpecError, match="needs an owner"):
        acme.resolve("manager", at=at)
    with pytest.raises(UnknownUser):
        acme.resolve("owner", owner="alise", at=at)
    with pytest.raises(ValueError, match="time-zone aware"):
        acme.resolve("owner", owner="alice", at=datetime(2026, 1, 10))
    with pytest.raises(TypeError):
        acme.resolve_many("owner", owner="alice", at=at)
    # One bad spec fails the call before anything is resolved.
    with pytest.raises(RecipientSpecError):
        acme.resolve_many(["owner", "role:nope"], owner="alice", at=at)


def test_spec_parsing_and_rendering() -> None:
    assert RecipientSpec.parse(" role : finance ") == RecipientSpec("role", "finance")
    assert str(RecipientSpec.parse("unit:/sales/east/")) == "unit:sales/east"
    assert str(RecipientSpec.parse("managers")) == "managers"


# ---------------------------------------------------------------------------------------------
# Building in code
# ---------------------------------------------------------------------------------------------


def test_from_mapping_accepts_objects() -> None:
    org = OrgDirectory.from_mapping(
        {
            "org": {"name": "Tiny", "manager": "boss", "timezone": "UTC"},
            "users": {
                "boss": {"roles": ("owner_role",)},
                "ann": {"roles": {"b_role", "a_role"}, "timezone": "Europe/Berlin"},
                "ben": None,
            },
            "delegations": [
                {"from": "ann", "to": "ben", "start": date(2026, 5, 1), "end": date(2026, 5, 1)},
                {
                    "from": "boss",
                    "to": "ann",
                    "start": datetime(2026, 5, 4, 9, 0),
                    "end": datetime(2026, 5, 4, 12, 0, tzinfo=timezone(timedelta(hours=2))),
                },
            ],
        }
    )
    assert org.user("ann").roles == {"a_role", "b_role"}
    assert org.user("ben").timezone == "UTC"
    # Naive: the delegator's time zone (boss: the organisation's UTC).
    assert org.delegations[1].start == datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    assert org.delegations[1].end == datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
    # A bare date is the delegator's (Berlin) whole day.
    assert org.delegations[0].start == datetime(2026, 5, 1, tzinfo=BERLIN)
    assert OrgDirectory({"users": {"x": {}}}, source="hr-system").source == "hr-system"


def test_from_mapping_errors_have_paths_but_no_positions() -> None:
    with pytest.raises(DefinitionError) as caught:
        OrgDirectory.from_mapping({"users": {"x": {"unit": "nowhere"}}}, source="hr")
    error = caught.value
    assert (error.source, error.line, error.column, error.path) == ("hr", 0, 0, "users.x.unit")
    assert str(error).startswith("hr: users.x.unit: unknown unit 'nowhere'")


def test_naive_times_without_any_zone_are_utc() -> None:
    org = load_org_text(
        "users: {a: {}, b: {}}\n"
        "delegations: [{from: a, to: b, start: 2026-01-01T10:00, end: 2026-01-01T11:00}]\n"
    )
    assert org.delegations[0].start == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)


def test_a_loop_in_periods_that_do_not_overlap_is_fine() -> None:
    text = TEXT.replace(
        "{from: bob, to: carol, start: 2026-02-05, end: 2026-02-05",
        "{from: bob, to: alice, start: 2026-02-10, end: 2026-02-12",
    )
    org = load_org_text(text)
    [back] = org.resolve("owner", owner="bob", at=sh(2026, 2, 11))
    assert back.user == "alice"


# ---------------------------------------------------------------------------------------------
# Errors, with exact positions in the fixture's text
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A change to the fixture text and where the error must point.

    The error must point at the first ``at`` on or after the start of the changed line.
    """

    id: str
    old: str
    new: str
    path: str
    match: str
    at: str
    suggestions: tuple[str, ...] = ()

    def text(self) -> str:
        assert TEXT.count(self.old) == 1, self.old
        return TEXT.replace(self.old, self.new)

    def where(self) -> tuple[int, int]:
        text = self.text()
        changed = TEXT.index(self.old)
        offset = text.index(self.at, text.rfind("\n", 0, changed) + 1)
        before = text[:offset]
        return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


CASES = [
    Case(
        "unknown top-level key",
        "delegations:\n",
        "delegation:\n",
        "delegation",
        "unknown key 'delegation' in the org directory",
        "delegation:",
        ("delegations",),
    ),
    Case(
        "unknown user key",
        "alice@acme.example, unit: sales/east, roles",
        "alice@acme.example, unit: sales/east, rolse",
        "users.alice.rolse",
        "unknown key 'rolse' in user 'alice'",
        "rolse",
        ("roles",),
    ),
    Case(
        "unknown unit key",
        "{id: finance, name: Finance",
        "{id: finance, nmae: Finance",
        "org.units[1].nmae",
        "unknown key 'nmae' in a unit",
        "nmae",
        ("name",),
    ),
    Case(
        "unknown unit of a user",
        "alice@acme.example, unit: sales/east",
        "alice@acme.example, unit: sales/eats",
        "users.alice.unit",
        "unknown unit 'sales/eats'",
        "sales/eats",
        ("sales/east", "sales/west"),
    ),
    Case(
        "unknown unit manager",
        "manager: erin}",
        "manager: erni}",
        "org.units[0].units[0].manager",
        "unknown user 'erni' as manager of unit 'sales/east'",
        "erni",
        ("erin",),
    ),
    Case(
        "unknown general manager",
        "manager: grace\n",
        "manager: grase\n",
        "org.manager",
        "unknown user 'grase' as manager of the top unit",
        "grase",
        ("grace",),
    ),
    Case(
        "manager from another unit",
        "name: Sales West, manager: wes}",
        "name: Sales West, manager: alice}",
        "org.units[0].units[1].manager",
        "'alice' cannot manage unit 'sales/west': they belong to unit 'sales/east'",
        "alice}",
    ),
    Case(
        "duplicate sibling unit id",
        "{id: west,",
        "{id: east,",
        "org.units[0].units[1].id",
        r"duplicate unit id 'east' in unit 'sales' \(first at line 12, column 16\)",
        "east",
    ),
    Case(
        "invalid unit id",
        "{id: warehouse,",
        "{id: ware house,",
        "org.units[2].id",
        "invalid unit id 'ware house'",
        "ware house",
    ),
    Case(
        "unit id that is a number",
        "{id: warehouse,",
        "{id: 7,",
        "org.units[2].id",
        "expected a unit id, got a number",
        "7,",
    ),
    Case(
        "invalid time zone",
        "timezone: Asia/Shanghai",
        "timezone: Asia/Shanghi",
        "org.timezone",
        "unknown time zone 'Asia/Shanghi'",
        "Asia/Shanghi",
        ("Asia/Shanghai",),
    ),
    Case(
        "invalid user time zone",
        "roles: [sales_manager], timezone: Europe/Berlin}",
        "roles: [sales_manager], timezone: Europe/Berln}",
        "users.wes.timezone",
        "unknown time zone 'Europe/Berln'",
        "Europe/Berln",
        ("Europe/Berlin",),
    ),
    Case(
        "e-mail without @",
        "email: bob@acme.example",
        "email: bob.acme.example",
        "users.bob.email",
        "'bob.acme.example' is not an e-mail address",
        "bob.acme.example",
    ),
    Case(
        "invalid role",
        "roles: [finance]",
        "roles: [Finance]",
        "users.fay.roles[0]",
        "invalid role 'Finance'",
        "Finance",
    ),
    Case(
        "active that is not a boolean",
        "active: false",
        "active: no",
        "users.olga.active",
        "expected true or false, got a string",
        "no}",
    ),
    Case(
        "invalid user id",
        "  nora: {",
        "  no ra: {",
        "users.no ra",
        "invalid user id 'no ra'",
        "no ra",
    ),
    Case(
        "delegation to an unknown user",
        "{from: erin, to: sam,",
        "{from: erin, to: sma,",
        "delegations[2].to",
        "unknown user 'sma'",
        "sma",
        ("sam",),
    ),
    Case(
        "delegation from an unknown user",
        "{from: erin, to: sam,",
        "{from: erim, to: sam,",
        "delegations[2].from",
        "unknown user 'erim'",
        "erim",
        ("erin",),
    ),
    Case(
        "delegation to oneself",
        "{from: erin, to: sam,",
        "{from: erin, to: erin,",
        "delegations[2].to",
        "'erin' delegates to themselves",
        "erin, start",
    ),
    Case(
        "delegation to an inactive user",
        "{from: wes, to: will,",
        "{from: wes, to: olga,",
        "delegations[3].to",
        "'olga' is inactive and cannot stand in for 'wes'",
        "olga,",
    ),
    Case(
        "delegation ending before it starts",
        "end: 2026-03-02T18:00",
        "end: 2026-03-01T18:00",
        "delegations[2].end",
        "end 2026-03-01 18:00 is before start 2026-03-02 09:00",
        "2026-03-01T18:00",
    ),
    Case(
        "delegation on an impossible date",
        "end: 2026-02-03}",
        "end: 2026-02-30}",
        "delegations[3].end",
        "'2026-02-30' is not a valid date",
        "2026-02-30",
    ),
    Case(
        "delegation time that is not a time",
        "end: 2026-02-03}",
        "end: next week}",
        "delegations[3].end",
        "'next week' is not a date-time",
        "next week",
    ),
    Case(
        "delegation without an end",
        ", end: 2026-02-03}",
        "}",
        "delegations[3].end",
        "missing required key 'end' in a delegation",
        "{from: wes",
    ),
    Case(
        "delegation loop in overlapping periods",
        "{from: bob, to: carol,",
        "{from: bob, to: alice,",
        "delegations[1].to",
        re.escape("delegations form a loop at 2026-02-05T00:00+08:00: alice -> bob -> alice"),
        "alice,",
    ),
    Case(
        "overlapping delegations of one user",
        "{from: bob, to: carol,",
        "{from: alice, to: carol,",
        "delegations[1].start",
        "'alice' already delegates to 'bob' from 2026-02-02 00:00 to 2026-02-06 23:59 "
        r"\(delegations\[0\]\)",
        "2026-02-05",
    ),
    Case(
        "users that are not a mapping",
        "users:\n  grace:",
        "users: []\nx:\n  grace:",
        "users",
        "expected a mapping of user id to user, got a list",
        "[]",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_errors_point_at_the_spot(case: Case) -> None:
    if case.id == "users that are not a mapping":
        # The leftover user entries become an unknown top-level key; the first error wins.
        errors = collect_org_errors(case.text(), "acme.yaml")
        error = next(e for e in errors if e.path == case.path)
    else:
        with pytest.raises(DefinitionError) as caught:
            load_org_text(case.text(), "acme.yaml")
        error = caught.value
    assert error.source == "acme.yaml"
    assert error.path == case.path
    assert re.search(case.match, error.reason), error.reason
    assert (error.line, error.column) == case.where(), str(error)
    assert error.suggestions == case.suggestions
    assert str(error).startswith(f"acme.yaml:{error.line}:{error.column}: {case.path}: ")


def test_every_problem_is_collected_in_file_order() -> None:
    text = TEXT.replace("manager: grace\n", "manager: grase\n").replace(
        "{from: erin, to: sam,", "{from: erin, to: sma,"
    )
    errors = collect_org_errors(text)
    assert [e.path for e in errors] == ["org.manager", "delegations[2].to"]
    assert collect_org_errors(TEXT) == []
    with pytest.raises(DefinitionError) as caught:
        load_org_text(text)
    assert caught.value.path == "org.manager"


@pytest.mark.parametrize(
    ("text", "match", "where"),
    [
        ("", "the org directory is empty", (0, 0)),
        ("- a\n- b\n", "expected a mapping with org, users, delegations, got a list", (1, 1)),
        ("org: {name: x}\n", "missing required key 'users'", (1, 1)),
        ("users:\n  a: &x {}\n  b: *x\n", "anchors are not allowed", (2, 6)),
        ("users: {a: {unit: [x]}}\n", "expected a unit path, got a list", (1, 19)),
    ],
)
def test_document_level_errors(text: str, match: str, where: tuple[int, int]) -> None:
    with pytest.raises(DefinitionError, match=match) as caught:
        load_org_text(text)
    assert (caught.value.line, caught.value.column) == where


@pytest.mark.parametrize(
    ("text", "path", "match"),
    [
        ("org: [x]\nusers: {}\n", "org", "expected a mapping, got a list"),
        ("org: {units: x}\nusers: {}\n", "org.units", "expected a list of units, got a string"),
        ("org: {units: [x]}\nusers: {}\n", "org.units[0]", "expected a unit"),
        ("org: {units: [{name: X}]}\nusers: {}\n", "org.units[0].id", "missing required key 'id'"),
        ("users: {a: {}, a: {}}\n", "users.a", "duplicate key 'a'"),
        ("users: {a: x}\n", "users.a", "expected a user"),
        ("users: {a: {roles: {x: y}}}\n", "users.a.roles", "expected a list of roles"),
        ("users: {a: {}}\ndelegations: {}\n", "delegations", "expected a list of delegations"),
        ("users: {a: {}}\ndelegations: [x]\n", "delegations[0]", "expected a delegation"),
        (
            "users: {a: {}, b: {}}\n"
            "delegations: [{form: a, to: b, start: 2026-01-01, end: 2026-01-01}]\n",
            "delegations[0].form",
            "unknown key 'form' in a delegation",
        ),
        (
            "users: {a: {}, b: {}}\ndelegations: [{from: a, to: b, start: 5, end: 2026-01-01}]\n",
            "delegations[0].start",
            "expected a date-time, got a number",
        ),
    ],
)
def test_more_shape_errors(text: str, path: str, match: str) -> None:
    with pytest.raises(DefinitionError, match=match) as caught:
        load_org_text(text)
    assert caught.value.path == path
    assert caught.value.line > 0


def test_roles_may_be_one_bare_name() -> None:
    org = load_org_text("users: {a: {roles: finance}}\n")
    assert org.user("a").roles == {"finance"}


def test_inactive_users_pass_work_up_the_tree() -> None:
    org = OrgDirectory.from_mapping(
        {
            "org": {"manager": "gm", "units": [{"id": "t", "manager": "lead"}]},
            "users": {
                "gm": {"active": False},
                "lead": {"unit": "t", "active": False},
                "rep": {"unit": "t"},
            },
        }
    )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    # The lead left, and so did the general manager: nobody is left to receive it.
    assert org.resolve("manager", owner="rep", at=at) == []
    assert org.resolve("user:lead", at=at) == []
    # An inactive owner's work goes to the nearest active manager above.
    org2 = OrgDirectory.from_mapping(
        {
            "org": {"manager": "gm", "units": [{"id": "t", "manager": "lead"}]},
            "users": {"gm": {}, "lead": {"unit": "t", "active": False}, "rep": {"unit": "t"}},
        }
    )
    [recipient] = org2.resolve("manager", owner="rep", at=at)
    assert recipient.chain == ("lead", "gm")
    assert recipient.reason == "lead is inactive; gm, the next manager up, stands in"


def test_missing_file() -> None:
    with pytest.raises(DefinitionError, match="cannot read file"):
        load_org_file(FIXTURE.parent / "missing.yaml")


# ---------------------------------------------------------------------------------------------
# The shipped example
# ---------------------------------------------------------------------------------------------


def test_the_shipped_example_is_valid() -> None:
    org = load_org_file(ROOT_DIR / "examples" / "org.yaml")
    assert org.name == "ACME Trading Co., Ltd."
    assert {u for u in org.units() if org.unit(u).manager is None} == set()
    assert org.manager_of("alice") == "erin"
    assert org.manager_of("erin") == "sam"
    assert org.manager_of("grace") is None
    assert org.members("sales/west") == ["victor", "wendy", "wes"]
    # Erin is away over the Spring Festival: her team's approvals go to Sam.
    [approver] = org.resolve("manager", owner="bob", at=datetime(2026, 2, 18, 10, tzinfo=SHANGHAI))
    assert (approver.user, approver.intended) == ("sam", "erin")
    # Every role the shipped workflows use is held by someone.
    for name in ("sales_order.yaml", "deal.yaml"):
        roles = yaml.safe_load((ROOT_DIR / "workflows" / name).read_text(encoding="utf-8"))["roles"]
        for role in roles:
            assert org.users_with_role(role), (name, role)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@st.composite
def org_trees(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """A random directory mapping, and whether every manager sits at or above their unit."""
    unit_count = draw(st.integers(0, 10))
    parents = [draw(st.integers(-1, i - 1)) for i in range(unit_count)]
    paths: list[str] = []
    for i, parent in enumerate(parents):
        paths.append(f"u{i}" if parent < 0 else f"{paths[parent]}/u{i}")
    all_paths = ["", *paths]
    user_count = draw(st.integers(1, 12))
    user_units = {f"p{j}": draw(st.sampled_from(all_paths)) for j in range(user_count)}
    users = sorted(user_units)
    managers: dict[str, str | None] = {
        path: draw(st.none() | st.sampled_from(users)) for path in all_paths
    }
    consistent = all(
        manager is None or OrgDirectory.is_below(path, user_units[manager])
        for path, manager in managers.items()
    )
    nodes: dict[str, dict[str, Any]] = {path: {"id": path.rsplit("/", 1)[-1]} for path in paths}
    top: list[dict[str, Any]] = []
    for i, path in enumerate(paths):
        node = nodes[path]
        if managers[path] is not None:
            node["manager"] = managers[path]
        siblings = top if parents[i] < 0 else nodes[paths[parents[i]]].setdefault("units", [])
        siblings.append(node)
    org: dict[str, Any] = {"units": top}
    if managers[""] is not None:
        org["manager"] = managers[""]
    data = {"org": org, "users": {u: {"unit": user_units[u]} for u in users}}
    return data, consistent


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(org_trees())
def test_manager_chains_terminate_and_visibility_is_consistent(
    tree: tuple[dict[str, Any], bool],
) -> None:
    data, consistent = tree
    if not consistent:
        with pytest.raises(DefinitionError, match="cannot manage"):
            OrgDirectory.from_mapping(data)
        return
    org = OrgDirectory.from_mapping(data)
    # The same document through YAML text gives the same answers.
    again = load_org_text(yaml.safe_dump(data))
    units = org.units()
    for user_id in org.users():
        chain = org.managers_above(user_id)
        assert len(chain) == len(set(chain)) and user_id not in chain
        assert chain == again.managers_above(user_id)
        if chain:
            assert org.manager_of(chain[-1]) is None
        unit = org.user(user_id).unit
        visible = org.visible_units(user_id)
        for manager in chain:
            # Open downward: everyone above a user sees the user's unit and all they see.
            assert unit in org.visible_units(manager)
            assert visible <= org.visible_units(manager)
        for path in units:
            expected = any(org.is_below(path, m) for m in org.managed_units(user_id))
            assert (path in visible) == expected == org.can_see(user_id, path)
    for path in units:
        ancestors = set()
        current: str | None = path
        while current is not None:
            ancestors.add(current)
            current = org.unit(current).parent
        for other in units:
            assert org.is_below(path, other) == (other in ancestors)


PEOPLE = ["a", "b", "c", "d"]


@st.composite
def delegation_sets(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(0, 6))
    result = []
    for _ in range(count):
        start = draw(st.integers(1, 10))
        result.append(
            {
                "from": draw(st.sampled_from(PEOPLE)),
                "to": draw(st.sampled_from(PEOPLE)),
                "start": date(2026, 3, start),
                "end": date(2026, 3, start + draw(st.integers(0, 4))),
            }
        )
    return result


@settings(max_examples=200, deadline=None)
@given(delegation_sets())
def test_delegation_routing_never_loops(delegations: list[dict[str, Any]]) -> None:
    data = {"users": {p: {} for p in PEOPLE}, "delegations": delegations}
    try:
        org = OrgDirectory.from_mapping(data)
    except DefinitionError as error:
        assert re.search("themselves|loop|already delegates", error.reason), error.reason
        return
    for day in range(1, 16):
        at = datetime(2026, 3, day, 12, tzinfo=UTC)
        for person in PEOPLE:
            [recipient] = org.resolve(f"user:{person}", at=at)
            assert len(recipient.chain) == len(set(recipient.chain))
            assert recipient.chain[0] == person and recipient.chain[-1] == recipient.user
            # The one who receives it is not away themselves.
            assert org.delegation_at(recipient.user, at) is None
