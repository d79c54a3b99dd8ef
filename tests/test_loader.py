from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from crmflow._errors import DefinitionError
from crmflow.engine._loader import (
    FIELD_KEYS,
    RULE_KEYS,
    STATE_KEYS,
    TOP_LEVEL_KEYS,
    TRANSITION_KEYS,
    collect_errors,
    definition_files,
    load_definitions,
    load_workflow_file,
    load_workflow_text,
)
from crmflow.engine._model import WorkflowDef
from crmflow.engine._schema import build_schema, load_schema, render_schema, schema_path
from crmflow.engine._yaml import read_yaml_file

FIXTURES = Path(__file__).parent / "fixtures"
VALID = sorted(p for p in FIXTURES.glob("*.yaml") if not p.name.endswith(".scenario.yaml"))
BAD = sorted((FIXTURES / "bad").glob("*.yaml"))


def load(text: str) -> WorkflowDef:
    return load_workflow_text(textwrap.dedent(text))


@pytest.fixture
def sales_order() -> WorkflowDef:
    return load_workflow_file(FIXTURES / "sales_order.yaml")


@pytest.fixture
def deal() -> WorkflowDef:
    return load_workflow_file(FIXTURES / "deal.yaml")


MINIMAL = """\
workflow: tiny
states:
  - {name: open, initial: true}
  - {name: closed, final: true}
transitions:
  - {trigger: close, from: open, to: closed}
"""


# -- the valid fixtures -----------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_fixtures_load(path: Path) -> None:
    defn = load_workflow_file(path)
    assert defn.source == str(path)
    assert defn.initial_state in defn.states


def test_sales_order_shape(sales_order: WorkflowDef) -> None:
    assert sales_order.name == "sales_order"
    assert sales_order.version == 1
    assert sales_order.title == "Sales order"
    assert list(sales_order.states) == [
        "draft",
        "approved",
        "shipped",
        "invoiced",
        "paid",
        "cancelled",
    ]
    assert sales_order.initial_state == "draft"
    assert sales_order.final_states == ("paid", "cancelled")
    assert sales_order.roles == ("sales_rep", "sales_manager", "warehouse", "finance")
    assert sales_order.start_roles == ("sales_rep",)
    assert sales_order.triggers == ("approve", "ship", "invoice", "pay", "cancel")
    cancel = sales_order.transitions[-1]
    assert cancel.sources == ("draft", "approved")
    assert cancel.dest == "cancelled"
    assert sales_order.facts["customer"]["credit_limit"] == "decimal"


def test_fields_short_and_long_form(sales_order: WorkflowDef) -> None:
    fields = sales_order.fields
    assert fields["amount"].type == "decimal"
    assert not fields["amount"].required
    assert fields["customer_id"].required
    assert fields["customer_id"].description.startswith("The customer")
    assert fields["prepayment_received"].default is False
    # The decimal default comes from the text, not through a float.
    assert fields["discount"].default == Decimal("0.10")
    assert str(fields["discount"].default) == "0.10"
    assert fields["delivery_date"].default == dt.date(2026, 1, 31)


def test_rule_keeps_raw_expressions_and_positions(sales_order: WorkflowDef) -> None:
    rule = sales_order.rules["credit_limit"]
    assert rule.when == "order.amount + customer.open_balance > customer.credit_limit"
    assert rule.effect == "confirm"
    assert rule.override_roles == ("sales_manager",)
    assert rule.message.startswith("Credit limit of {customer.name}")
    when = rule.positions["when"]
    assert (when.line, when.column, when.path) == (31, 11, "rules.credit_limit.when")
    message = rule.positions["message"]
    # A quoted value's position is its first character inside the quotes.
    assert (message.line, message.column) == (34, 15)
    assert rule.positions["hint"].line == 35
    assert (rule.pos.line, rule.pos.column, rule.pos.path) == (30, 3, "rules.credit_limit")
    assert sales_order.rules["prepayment"].effect == "block"


def test_transition_positions(sales_order: WorkflowDef) -> None:
    approve = sales_order.transitions[0]
    assert set(approve.positions) == {"trigger", "from", "to", "roles", "rules"}
    to = approve.positions["to"]
    assert (to.source, to.line, to.column, to.path) == (
        str(FIXTURES / "sales_order.yaml"),
        24,
        41,
        "transitions[0].to",
    )
    assert approve.pos.path == "transitions[0]"


def test_digest_is_sha256_of_text() -> None:
    defn = load_workflow_text(MINIMAL)
    assert defn.digest == hashlib.sha256(MINIMAL.encode()).hexdigest()
    assert load_workflow_text(MINIMAL + "# changed\n").digest != defn.digest


def test_defaults_of_a_minimal_workflow() -> None:
    defn = load_workflow_text(MINIMAL)
    assert defn.version == 1
    assert defn.roles == ()
    assert defn.start_roles == ()
    assert dict(defn.fields) == {}
    assert dict(defn.rules) == {}
    assert defn.title == ""


def test_roles_default_to_sorted_union_of_used_roles() -> None:
    defn = load(
        """
        workflow: w
        start_roles: [zed]
        states: [{name: a, initial: true}, {name: b, final: true}]
        transitions:
          - {trigger: go, from: a, to: b, roles: [mid, alpha], rules: [r]}
        rules:
          r: {when: "true", message: m, override_roles: [boss]}
        """
    )
    assert defn.roles == ("alpha", "boss", "mid", "zed")


def test_on_is_a_plain_key(deal: WorkflowDef) -> None:
    assert "on" in deal.fields


# -- nested states --------------------------------------------------------------------------


def test_compound_state(deal: WorkflowDef) -> None:
    opportunity = deal.states["opportunity"]
    assert opportunity.children == (
        "opportunity.initial_contact",
        "opportunity.intent_confirmed",
        "opportunity.negotiation",
    )
    assert opportunity.initial_child == "opportunity.initial_contact"
    assert opportunity.description == "Working the deal"
    child = deal.states["opportunity.negotiation"]
    assert child.parent == "opportunity"
    assert child.short_name == "negotiation"
    assert deal.leaf_state("opportunity") == "opportunity.initial_contact"


def test_bare_sub_state_names_are_normalised(deal: WorkflowDef) -> None:
    by_trigger = {t.trigger: t for t in deal.transitions}
    assert by_trigger["confirm_intent"].sources == ("opportunity.initial_contact",)
    assert by_trigger["confirm_intent"].dest == "opportunity.intent_confirmed"
    assert by_trigger["negotiate"].dest == "opportunity.negotiation"
    assert by_trigger["qualify"].dest == "opportunity"
    assert by_trigger["lose"].sources == ("opportunity",)


def test_star_means_every_non_final_leaf(deal: WorkflowDef) -> None:
    disqualify = next(t for t in deal.transitions if t.trigger == "disqualify")
    assert disqualify.sources == (
        "lead",
        "opportunity.initial_contact",
        "opportunity.intent_confirmed",
        "opportunity.negotiation",
    )


def test_star_excludes_the_destination_and_its_sub_states() -> None:
    defn = load(
        """
        workflow: w
        states:
          - {name: a, initial: true}
          - name: b
            states: [b1, b2]
          - {name: z, final: true}
        transitions:
          - {trigger: reset, from: "*", to: b}
          - {trigger: end, from: b, to: z}
        """
    )
    assert defn.transitions[0].sources == ("a",)


def test_explicit_initial_child_and_deeper_nesting() -> None:
    defn = load(
        """
        workflow: w
        states:
          - name: outer
            initial: true
            states:
              - first
              - name: inner
                initial: true
                states: [x, {name: y, initial: true}]
          - {name: done, final: true}
        transitions:
          - {trigger: finish, from: outer, to: done}
        """
    )
    assert defn.states["outer"].initial_child == "outer.inner"
    assert defn.states["outer.inner"].initial_child == "outer.inner.y"
    assert defn.leaf_state(defn.initial_state) == "outer.inner.y"
    assert defn.ancestors("outer.inner.x") == ("outer.inner.x", "outer.inner", "outer")


def test_same_short_name_under_two_parents_needs_full_path() -> None:
    text = """
        workflow: w
        states:
          - {name: a, initial: true, states: [review]}
          - {name: b, states: [review]}
          - {name: z, final: true}
        transitions:
          - {trigger: go, from: a.review, to: b.review}
          - {trigger: end, from: b, to: z}
        """
    defn = load(text)
    assert defn.transitions[0].sources == ("a.review",)
    with pytest.raises(DefinitionError, match="ambiguous") as info:
        load(text.replace("to: b.review", "to: review"))
    assert info.value.suggestions == ("a.review", "b.review")


def test_transition_without_to_stays_in_each_leaf() -> None:
    defn = load(
        """
        workflow: w
        states:
          - {name: a, initial: true}
          - name: b
            states: [b1, {name: b2, final: true}]
          - {name: z, final: true}
        transitions:
          - {trigger: go, from: a, to: b}
          - {trigger: note, from: [a, b], roles: [clerk]}
          - {trigger: touch, from: "*"}
          - {trigger: end, from: b, to: z}
        """
    )
    internal = [(t.trigger, t.sources, t.dest) for t in defn.transitions if t.internal]
    assert internal == [
        ("note", ("a",), "a"),
        ("note", ("b.b1",), "b.b1"),
        ("touch", ("a",), "a"),
        ("touch", ("b.b1",), "b.b1"),
    ]
    note = next(t for t in defn.transitions if t.trigger == "note")
    assert note.roles == ("clerk",)
    assert "to" not in note.positions
    assert not defn.transitions[0].internal


# -- files and directories ------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_load_definitions_walks_a_directory(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", MINIMAL)
    write(tmp_path / "sub" / "b.yml", MINIMAL.replace("tiny", "other"))
    write(tmp_path / "sub" / "b.scenario.yaml", "not: a workflow\n")
    write(tmp_path / ".hidden" / "c.yaml", "broken: [\n")
    write(tmp_path / "notes.txt", "ignored")
    defs = load_definitions(tmp_path)
    assert [d.name for d in defs] == ["tiny", "other"]
    assert definition_files(tmp_path) == [tmp_path / "a.yaml", tmp_path / "sub" / "b.yml"]


def test_load_definitions_accepts_a_single_file() -> None:
    defs = load_definitions(FIXTURES / "deal.yaml")
    assert [(d.name, d.version) for d in defs] == [("deal", 2)]


def test_same_name_and_version_twice_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", MINIMAL)
    second = write(tmp_path / "b.yaml", "# copy\n" + MINIMAL)
    with pytest.raises(DefinitionError, match="already defined") as info:
        load_definitions(tmp_path)
    err = info.value
    assert (err.source, err.line, err.column, err.path) == (str(second), 2, 11, "workflow")
    assert [e.source for e in collect_errors(tmp_path)] == [str(second)]


def test_same_name_different_versions_is_allowed(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", MINIMAL)
    write(tmp_path / "b.yaml", "version: 2\n" + MINIMAL)
    assert [(d.name, d.version) for d in load_definitions(tmp_path)] == [("tiny", 1), ("tiny", 2)]


def test_missing_path_is_a_definition_error(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="no such file"):
        load_definitions(tmp_path / "nope")
    assert len(collect_errors(tmp_path / "nope")) == 1


def test_collect_errors_keeps_going_across_files() -> None:
    errors = collect_errors(FIXTURES / "bad")
    sources = {Path(e.source).name for e in errors}
    assert sources == {p.name for p in BAD}
    several = [e for e in errors if e.source.endswith("several_errors.yaml")]
    assert [(e.line, e.path) for e in several] == [
        (2, "version"),
        (7, "transitions[0].to"),
        (7, "transitions[0].rules[0]"),
        (9, "rules.strict.effect"),
    ]
    assert several[3].suggestions == ()
    assert collect_errors(FIXTURES / "deal.yaml") == []


def test_load_raises_the_first_error_of_a_file() -> None:
    with pytest.raises(DefinitionError) as info:
        load_workflow_file(FIXTURES / "bad" / "several_errors.yaml")
    assert info.value.path == "version"


def test_the_misspelled_state_example_renders_as_documented() -> None:
    path = FIXTURES / "bad" / "misspelled_state.yaml"
    with pytest.raises(DefinitionError) as info:
        load_workflow_file(path)
    assert str(info.value) == (
        f"{path}:7:41: transitions[0].to: unknown state 'aproved' (did you mean 'approved'?)"
    )


# -- the JSON Schema ------------------------------------------------------------------------


def test_shipped_schema_is_generated_from_the_loader() -> None:
    assert schema_path().read_text(encoding="utf-8") == render_schema(), (
        "regenerate with: python -m crmflow.engine._schema"
    )
    assert load_schema() == json.loads(render_schema())


def test_schema_and_loader_agree_on_keys() -> None:
    schema = build_schema()
    defs = schema["$defs"]
    tables = {
        "top": (schema, TOP_LEVEL_KEYS),
        "state": (defs["state"]["oneOf"][1], STATE_KEYS),
        "transition": (defs["transition"], TRANSITION_KEYS),
        "rule": (defs["rule"], RULE_KEYS),
        "field": (defs["field"]["oneOf"][1], FIELD_KEYS),
    }
    for name, (part, table) in tables.items():
        assert list(part["properties"]) == list(table), name
        assert part["required"] == [k for k, req in table.items() if req], name
        assert part["additionalProperties"] is False, name


@pytest.mark.skipif(importlib.util.find_spec("jsonschema") is None, reason="needs jsonschema")
@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_fixtures_match_the_schema(path: Path) -> None:
    import jsonschema

    # Validate what our reader sees (YAML 1.2 scalars), not what yaml.safe_load would make.
    jsonschema.validate(read_yaml_file(path).data, load_schema())


@pytest.mark.skipif(importlib.util.find_spec("jsonschema") is None, reason="needs jsonschema")
def test_schema_rejects_an_unknown_key() -> None:
    import jsonschema

    data = {"workflow": "w", "states": ["a"], "trigers": []}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, load_schema())
