"""Checklists, gates, costs and reassignment in YAML: what loads, and every error's position."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmflow import DefinitionError, load_workflow_file, load_workflow_text
from crmflow.engine._loader import _build
from crmflow.engine._yaml import DEFAULT_LIMITS

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"

BASE = """\
workflow: onboarding_test
roles: [rep, manager, finance]
checklists:
  confirm:
    manager_roles: [manager]
    items:
      - {id: terms, title: Payment terms, due: 2d}
      - {id: prepaid, title: Prepayment, role: finance}
      - {id: ship, title: First shipment, depends_on: [prepaid], deferrable: true}
states:
  - {name: new, initial: true}
  - {name: confirming, checklists: [confirm]}
  - {name: active, final: true}
  - {name: dropped, final: true}
transitions:
  - {trigger: start, from: new, to: confirming}
  - {trigger: activate, from: confirming, to: active, requires: {checklist: confirm}}
  - {trigger: drop, from: confirming, to: dropped}
"""


def collect_errors(text: str, source: str) -> list[DefinitionError]:
    return _build(text, source, DEFAULT_LIMITS)[1]


def _error(text: str) -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        load_workflow_text(text, "client.yaml")
    return info.value


def _line_of(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def test_checklists_gates_costs_and_reassignment_load() -> None:
    defn = load_workflow_text(
        BASE
        + "costs: {categories: [samples, greetings], roles: [rep]}\n"
        + "reassignment: {roles: [manager]}\n"
    )
    checklist = defn.checklists["confirm"]
    assert [i.id for i in checklist.items] == ["terms", "prepaid", "ship"]
    assert checklist.items[0].due == timedelta(days=2)
    assert checklist.items[0].required and not checklist.items[0].deferrable
    assert checklist.items[1].role == "finance"
    assert checklist.items[2].depends_on == ("prepaid",)
    assert checklist.manager_roles == ("manager",)
    assert checklist.title == "confirm"
    assert defn.states["confirming"].checklists == ("confirm",)
    gate = next(t for t in defn.transitions if t.trigger == "activate").requires[0]
    assert (gate.checklist, gate.allow_deferred) == ("confirm", False)
    assert defn.costs is not None
    assert dict(defn.costs.categories) == {"samples": "samples", "greetings": "greetings"}
    assert defn.reassignment.roles == ("manager",)


def test_a_dependency_cycle_is_an_error_with_file_and_line() -> None:
    text = BASE.replace(
        "{id: terms, title: Payment terms, due: 2d}",
        "{id: terms, title: Payment terms, due: 2d, depends_on: [ship]}",
    ).replace("depends_on: [prepaid]", "depends_on: [prepaid, terms]")
    error = _error(text)
    assert error.source == "client.yaml"
    assert "dependency cycle" in error.reason
    assert "terms -> ship -> terms" in error.reason
    assert error.line == _line_of(text, "id: ship")
    assert error.column > 1
    assert error.path == "checklists.confirm.items[2].depends_on[1]"
    assert error.render().startswith(f"client.yaml:{error.line}:{error.column}: ")


def test_a_longer_cycle_is_found_too() -> None:
    text = BASE.replace(
        "{id: terms, title: Payment terms, due: 2d}",
        "{id: terms, title: Payment terms, depends_on: [ship]}",
    ).replace(
        "{id: prepaid, title: Prepayment, role: finance}",
        "{id: prepaid, title: P, depends_on: [terms]}",
    )
    assert "dependency cycle" in _error(text).reason


@pytest.mark.parametrize(
    ("old", "new", "reason", "suggestion", "anchor"),
    [
        (
            "depends_on: [prepaid]",
            "depends_on: [prepayd]",
            "unknown item 'prepayd'",
            "prepaid",
            "id: ship",
        ),
        ("depends_on: [prepaid]", "depends_on: [ship]", "depends on itself", None, "id: ship"),
        ("role: finance}", "role: financ}", "unknown role 'financ'", "finance", "id: prepaid"),
        (
            "checklists: [confirm]}",
            "checklists: [confirn]}",
            "unknown checklist 'confirn'",
            "confirm",
            "name: confirming",
        ),
        (
            "requires: {checklist: confirm}",
            "requires: {checklist: confrim}",
            "unknown checklist 'confrim'",
            "confirm",
            "trigger: activate",
        ),
        (
            "requires: {checklist: confirm}",
            "requires: {checklist: confirm, allow_defered: true}",
            "unknown key 'allow_defered'",
            "allow_deferred",
            "trigger: activate",
        ),
        ("due: 2d}", "due: 2 days}", "bad duration", None, "id: terms"),
        ("due: 2d}", "due: 0d}", "longer than zero", None, "id: terms"),
        (
            "{id: prepaid, title: Prepayment, role: finance}",
            "{id: terms, title: Again}",
            "already used",
            None,
            "title: Again",
        ),
        (
            "{id: terms, title: Payment terms, due: 2d}",
            "{id: terms, titel: Payment terms}",
            "unknown key 'titel'",
            "title",
            "id: terms",
        ),
        (
            "- {trigger: activate, from: confirming",
            "- {trigger: activate, from: new",
            "not opened in state 'new'",
            None,
            "trigger: activate",
        ),
        (
            "{name: active, final: true}",
            "{name: active, final: true, checklists: [confirm]}",
            "final state cannot open",
            None,
            "name: active",
        ),
    ],
)
def test_checklist_mistakes_point_at_the_spot(
    old: str, new: str, reason: str, suggestion: str | None, anchor: str
) -> None:
    text = BASE.replace(old, new)
    assert text != BASE
    error = _error(text)
    assert reason in error.reason, error.render()
    if suggestion is not None:
        assert error.suggestions[0] == suggestion
    assert error.line == _line_of(text, anchor), error.render()
    assert error.column > 0


def test_costs_and_reassignment_mistakes() -> None:
    error = _error(BASE + "costs: {categories: []}\n")
    assert "at least one cost category" in error.reason
    error = _error(BASE + "costs: {categories: [samples], roles: [repp]}\n")
    assert error.suggestions == ("rep",)
    error = _error(BASE + "reassignment: {rules: [locked]}\n")
    assert "unknown rule 'locked'" in error.reason
    assert error.line == BASE.count("\n") + 1
    error = _error(BASE + "reassignment: {role: [manager]}\n")
    assert error.suggestions == ("roles",)


def test_several_checklist_errors_are_collected_at_once() -> None:
    text = BASE.replace("depends_on: [prepaid]", "depends_on: [prepayd]").replace(
        "checklists: [confirm]}", "checklists: [confirn]}"
    )
    errors = collect_errors(text, "client.yaml")
    reasons = [e.reason for e in errors]
    assert any("prepayd" in r for r in reasons)
    assert any("confirn" in r for r in reasons)


def test_the_shipped_onboarding_has_the_promised_checklist() -> None:
    defn = load_workflow_file(WORKFLOWS / "onboarding.yaml")
    items = {i.id: i for i in defn.checklists["confirmation"].items}
    assert len(items) >= 10
    for wanted in (
        "payment_terms",
        "payment_method",
        "price_list",
        "packaging",
        "delivery_address",
        "invoice_details",
        "contact_person",
        "credit_limit",
        "quality_standard",
        "first_order_date",
    ):
        assert wanted in items
    assert items["first_shipment"].depends_on == ("prepayment_received",)
    assert items["price_list"].depends_on == ("credit_limit",)
    gate = next(t for t in defn.transitions if t.dest == "active" and t.requires)
    assert gate.requires[0].allow_deferred


@settings(max_examples=60, deadline=None)
@given(
    edges=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 5)).filter(lambda e: e[0] != e[1]),
        max_size=10,
    )
)
def test_any_dependency_graph_loads_exactly_when_it_has_no_cycle(
    edges: list[tuple[int, int]],
) -> None:
    depends: dict[int, list[int]] = {i: [] for i in range(6)}
    for a, b in edges:
        if b not in depends[a]:
            depends[a].append(b)
    items = "\n".join(
        f"      - {{id: i{i}, title: Item {i}"
        + (f", depends_on: [{', '.join(f'i{d}' for d in deps)}]" if deps else "")
        + "}"
        for i, deps in depends.items()
    )
    text = (
        "workflow: w\nchecklists:\n  c:\n    items:\n"
        + items
        + "\nstates:\n  - {name: a, initial: true, checklists: [c]}\n  - {name: b, final: true}\n"
        + "transitions:\n  - {trigger: go, from: a, to: b}\n"
    )

    def has_cycle() -> bool:
        seen: dict[int, int] = {}

        def visit(node: int) -> bool:
            seen[node] = 1
            for nxt in depends[node]:
                if seen.get(nxt) == 1 or (nxt not in seen and visit(nxt)):
                    return True
            seen[node] = 2
            return False

        return any(node not in seen and visit(node) for node in depends)

    errors = collect_errors(text, "w.yaml")
    if has_cycle():
        assert len(errors) == 1
        assert "dependency cycle" in errors[0].reason
        assert errors[0].line > 4
    else:
        assert errors == []


def test_a_broken_item_is_reported_once_not_again_by_its_dependents() -> None:
    text = BASE.replace("{id: prepaid, title: Prepayment, role: finance}", "{id: prepaid}")
    errors = collect_errors(text, "client.yaml")
    assert [e.reason for e in errors] == ["missing required key 'title' in a checklist item"]


def test_an_item_is_held_by_one_role_not_a_list() -> None:
    error = _error(BASE.replace("role: finance}", "role: [finance, rep]}"))
    assert error.path == "checklists.confirm.items[1].role"
    assert "role name" in error.reason
