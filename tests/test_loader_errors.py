"""Each bad document fails with a DefinitionError that points at the exact spot."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from crmflow._errors import DefinitionError
from crmflow.engine._loader import load_workflow_text

BASE = """\
workflow: quote
roles: [sales_rep, sales_manager]
start_roles: [sales_rep]
fields:
  amount: decimal
facts:
  customer: {credit_limit: decimal}
states:
  - {name: draft, initial: true}
  - approved
  - name: opportunity
    states: [contact, negotiation]
  - {name: done, final: true}
transitions:
  - {trigger: approve, from: draft, to: approved, roles: [sales_manager], rules: [limit]}
  - {trigger: open, from: approved, to: opportunity}
  - {trigger: finish, from: opportunity, to: done}
rules:
  limit: {when: "order.amount > 10", effect: confirm, message: Too much}
"""


@dataclass(frozen=True)
class Case:
    """A change to BASE and where the error must point.

    ``at`` is a snippet of the changed text; the error's line and column are where it starts
    (``nth`` picks a later occurrence). ``at=None`` expects line 0 (no position).
    """

    id: str
    old: str
    new: str
    path: str
    match: str
    at: str | None
    suggestions: tuple[str, ...] = ()
    nth: int = 0

    def text(self) -> str:
        assert self.old in BASE, self.old
        return BASE.replace(self.old, self.new, 1)

    def where(self) -> tuple[int, int]:
        if self.at is None:
            return (0, 0)
        text = self.text()
        offset = -1
        for _ in range(self.nth + 1):
            offset = text.index(self.at, offset + 1)
        line = text.count("\n", 0, offset) + 1
        column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        return line, column


CASES = [
    Case(
        "unknown-destination",
        "to: approved,",
        "to: aproved,",
        "transitions[0].to",
        "unknown state 'aproved'",
        "aproved",
        ("approved",),
    ),
    Case(
        "unknown-source",
        "from: approved,",
        "from: aproved,",
        "transitions[1].from",
        "unknown state 'aproved'",
        "aproved",
        ("approved",),
    ),
    Case(
        "unknown-source-in-list",
        "from: draft,",
        "from: [draft, drfat],",
        "transitions[0].from[1]",
        "unknown state 'drfat'",
        "drfat",
        ("draft",),
    ),
    Case(
        "unknown-dotted-state",
        "to: opportunity}",
        "to: opportunity.negociation}",
        "transitions[1].to",
        "unknown state",
        "opportunity.negociation",
        ("opportunity.negotiation",),
    ),
    Case(
        "star-combined",
        "from: draft,",
        'from: ["*", draft],',
        "transitions[0].from",
        "cannot be combined",
        '["*"',
    ),
    Case(
        "outgoing-from-final",
        "from: opportunity, to: done",
        "from: done, to: opportunity",
        "transitions[2].from",
        "final state 'done' cannot have outgoing",
        "done, to",
    ),
    Case(
        "unknown-top-level-key",
        "transitions:",
        "trasitions:",
        "trasitions",
        "unknown key 'trasitions'",
        "trasitions",
        ("transitions",),
    ),
    Case(
        "reserved-top-level-key",
        "rules:\n",
        "tasks: []\nrules:\n",
        "tasks",
        "reserved for a later version",
        "tasks",
    ),
    Case(
        "misspelled-trigger-key",
        "{trigger: open,",
        "{triger: open,",
        "transitions[1].triger",
        "unknown key 'triger'",
        "triger",
        ("trigger",),
    ),
    Case(
        "missing-source",
        "{trigger: open, from: approved, to: opportunity}",
        "{trigger: open, to: opportunity}",
        "transitions[1].from",
        "missing required key 'from'",
        "{trigger: open",
    ),
    Case(
        "comma-in-flow-text",
        "  - approved\n",
        "  - {name: approved, description: a, b}\n",
        "states[1].b",
        "unknown key 'b'",
        "b}",
    ),
    Case(
        "unknown-state-key",
        "    states: [contact",
        "    sub_states: [contact",
        "states[2].sub_states",
        "unknown key 'sub_states'",
        "sub_states",
        ("states",),
    ),
    Case(
        "unknown-effect",
        "effect: confirm",
        "effect: confrim",
        "rules.limit.effect",
        "unknown effect 'confrim'",
        "confrim",
        ("confirm",),
    ),
    Case(
        "unknown-rule",
        "rules: [limit]",
        "rules: [limt]",
        "transitions[0].rules[0]",
        "unknown rule 'limt'",
        "limt",
        ("limit",),
    ),
    Case(
        "rule-without-message",
        ", message: Too much}",
        "}",
        "rules.limit.message",
        "missing required key 'message'",
        "{when",
    ),
    Case(
        "text-read-as-list",
        "workflow: quote\n",
        "workflow: quote\ntitle: [Quote]\n",
        "title",
        "expected a string, got a list",
        "[Quote]",
    ),
    Case(
        "unknown-transition-role",
        "roles: [sales_manager]",
        "roles: [sales_manger]",
        "transitions[0].roles[0]",
        "unknown role 'sales_manger'",
        "sales_manger",
        ("sales_manager",),
    ),
    Case(
        "unknown-start-role",
        "start_roles: [sales_rep]",
        "start_roles: [sales_reps]",
        "start_roles[0]",
        "unknown role",
        "sales_reps",
        ("sales_rep",),
    ),
    Case(
        "role-declared-twice",
        "roles: [sales_rep, sales_manager]",
        "roles: [sales_rep, sales_rep]",
        "roles[1]",
        "declared twice",
        "sales_rep",
        nth=1,
    ),
    Case(
        "unknown-override-role",
        "message: Too much}",
        "message: Too much, override_roles: [boss]}",
        "rules.limit.override_roles[0]",
        "unknown role 'boss'",
        "boss",
    ),
    Case(
        "unknown-field-type",
        "amount: decimal",
        "amount: decimel",
        "fields.amount",
        "unknown field type 'decimel'",
        "decimel",
        ("decimal",),
    ),
    Case(
        "field-default-wrong-type",
        "amount: decimal",
        "amount: {type: int, default: many}",
        "fields.amount.default",
        "expected an integer",
        "many",
    ),
    Case(
        "field-default-bad-decimal",
        "amount: decimal",
        "amount: {type: decimal, default: 1x}",
        "fields.amount.default",
        "not a decimal",
        "1x",
    ),
    Case(
        "field-default-bad-date",
        "amount: decimal",
        "amount: {type: date, default: 2026-13-01}",
        "fields.amount.default",
        "not an ISO date",
        "2026-13-01",
    ),
    Case(
        "unknown-fact-type",
        "{credit_limit: decimal}",
        "{credit_limit: money}",
        "facts.customer.credit_limit",
        "unknown field type 'money'",
        "money",
    ),
    Case(
        "invalid-workflow-name",
        "workflow: quote",
        "workflow: Quote-1",
        "workflow",
        "invalid workflow name 'Quote-1'",
        "Quote-1",
    ),
    Case(
        "version-not-integer",
        "workflow: quote\n",
        "workflow: quote\nversion: one\n",
        "version",
        "expected an integer version",
        "one",
    ),
    Case(
        "version-zero",
        "workflow: quote\n",
        "workflow: quote\nversion: 0\n",
        "version",
        "must be 1 or more",
        "0\n",
    ),
    Case(
        "no-initial-state",
        "{name: draft, initial: true}",
        "{name: draft}",
        "states",
        "no initial state",
        "- {name: draft}",
    ),
    Case(
        "two-initial-states",
        "  - approved\n",
        "  - {name: approved, initial: true}\n",
        "states[1].initial",
        "more than one initial state",
        "true}",
        nth=1,
    ),
    Case(
        "yes-is-not-a-boolean",
        "initial: true}",
        "initial: yes}",
        "states[0].initial",
        "expected true or false",
        "yes",
    ),
    Case(
        "final-with-sub-states",
        "{name: done, final: true}",
        "{name: done, final: true, states: [a]}",
        "states[3].states",
        "final state cannot have sub-states",
        "[a]",
    ),
    Case(
        "duplicate-state",
        "  - approved\n",
        "  - draft\n",
        "states[1]",
        "defined twice",
        "draft",
        nth=1,
    ),
    Case(
        "duplicate-key",
        "  amount: decimal\n",
        "  amount: decimal\n  amount: int\n",
        "fields.amount",
        "duplicate key 'amount'",
        "amount",
        nth=1,
    ),
    Case(
        "invalid-state-name",
        "  - approved\n",
        "  - Approved!\n",
        "states[1]",
        "invalid state name",
        "Approved!",
    ),
    Case(
        "yaml-syntax-error",
        "  - approved\n",
        "  - [approved\n",
        "",
        "invalid YAML",
        ": opportunity",
    ),
    Case("alias", "  - approved\n", "  - &a approved\n", "", "anchors are not allowed", "&a"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_document(case: Case) -> None:
    with pytest.raises(DefinitionError, match=case.match) as info:
        load_workflow_text(case.text(), source="quote.yaml")
    err = info.value
    assert err.source == "quote.yaml"
    assert err.path == case.path
    if case.at is not None:
        assert (err.line, err.column) == case.where()
    assert err.suggestions == case.suggestions
    assert str(err).startswith(f"quote.yaml:{err.line}:{err.column}: " if err.line else "quote")


def test_base_document_is_valid() -> None:
    assert load_workflow_text(BASE).name == "quote"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("", "empty document", id="empty"),
        pytest.param("- a\n- b\n", "got a list", id="list-root"),
        pytest.param("just text", "got a string", id="scalar-root"),
        pytest.param("workflow: w\n", "missing required key 'states'", id="no-states"),
        pytest.param("workflow: w\nstates: []\n", "at least one state", id="empty-states"),
        pytest.param("a: 1\n---\nb: 2\n", "invalid YAML", id="two-documents"),
    ],
)
def test_bad_document_shapes(text: str, match: str) -> None:
    with pytest.raises(DefinitionError, match=match):
        load_workflow_text(text)


def test_rendering_with_suggestion_and_hint() -> None:
    err = DefinitionError(
        "unknown state 'aproved'",
        source="workflows/quote.yaml",
        line=14,
        column=11,
        path="transitions[2].to",
        suggestions=("approved",),
    )
    assert str(err) == (
        "workflows/quote.yaml:14:11: transitions[2].to: unknown state 'aproved' "
        "(did you mean 'approved'?)"
    )
    assert err.key == "to"


def test_several_errors_in_one_document_are_all_collected(tmp_path: pytest.TempPathFactory) -> None:
    from crmflow.engine._loader import collect_errors

    text = BASE.replace("to: approved,", "to: aproved,").replace("effect: confirm", "effect: x")
    path = tmp_path / "quote.yaml"  # type: ignore[operator]
    path.write_text(text)
    errors = collect_errors(path)
    assert [e.path for e in errors] == ["transitions[0].to", "rules.limit.effect"]
