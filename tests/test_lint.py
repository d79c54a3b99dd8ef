from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from crmflow.engine._lint import LintIssue, lint
from crmflow.engine._loader import load_workflow_file, load_workflow_text
from crmflow.engine._model import SourcePos

FIXTURES = Path(__file__).parent / "fixtures"


def issues(text: str) -> list[LintIssue]:
    return lint(load_workflow_text(textwrap.dedent(text), source="w.yaml"))


def codes(found: list[LintIssue]) -> list[tuple[str, str]]:
    return [(i.severity, i.code) for i in found]


@pytest.mark.parametrize("name", ["sales_order.yaml", "deal.yaml"])
def test_fixtures_are_clean(name: str) -> None:
    assert lint(load_workflow_file(FIXTURES / name)) == []


def test_unreachable_state_points_at_its_name() -> None:
    found = issues(
        """
        workflow: w
        states:
          - {name: a, initial: true}
          - {name: orphan}
          - {name: z, final: true}
        transitions:
          - {trigger: go, from: a, to: z}
          - {trigger: leave, from: orphan, to: z}
        """
    )
    assert codes(found) == [("error", "unreachable-state")]
    assert (found[0].pos.line, found[0].pos.column, found[0].pos.path) == (5, 12, "states[1].name")
    assert "'orphan'" in found[0].message


def test_unreachable_compound_is_reported_once_and_children_follow_initial_child() -> None:
    found = issues(
        """
        workflow: w
        states:
          - {name: a, initial: true}
          - name: b
            states: [b1, b2]
          - name: c
            states: [c1]
          - {name: z, final: true}
        transitions:
          - {trigger: go, from: a, to: b}
          - {trigger: done, from: b, to: z}
          - {trigger: leave, from: c, to: z}
        """
    )
    # b2 is never entered (b enters b1, nothing moves to b2); c is unreachable as a whole.
    assert [i.message for i in found if i.code == "unreachable-state"] == [
        "state 'b.b2' cannot be reached from 'a'",
        "state 'c' cannot be reached from 'a'",
    ]


def test_dead_end_state() -> None:
    found = issues(
        """
        workflow: w
        states:
          - {name: a, initial: true}
          - stuck
          - {name: z, final: true}
        transitions:
          - {trigger: go, from: a, to: stuck}
          - {trigger: skip, from: a, to: z}
        """
    )
    assert codes(found) == [("error", "dead-end")]
    assert found[0].pos.path == "states[1]"


def test_sub_state_with_a_way_out_through_its_parent_is_no_dead_end() -> None:
    found = issues(
        """
        workflow: w
        states:
          - {name: a, initial: true, states: [a1, a2]}
          - {name: z, final: true}
        transitions:
          - {trigger: next, from: a1, to: a2}
          - {trigger: done, from: a, to: z}
        """
    )
    assert found == []


def test_a_sub_state_overriding_its_parent_is_not_ambiguous() -> None:
    found = issues(
        """
        workflow: w
        states:
          - {name: a, initial: true, states: [a1, a2]}
          - {name: y, final: true}
          - {name: z, final: true}
        transitions:
          - {trigger: next, from: a1, to: a2}
          - {trigger: done, from: a, to: y}
          - {trigger: done, from: a2, to: z}
        """
    )
    assert codes(found) == []


def test_two_transitions_on_one_level_are_ambiguous_even_through_a_parent() -> None:
    found = issues(
        """
        workflow: w
        states:
          - {name: a, initial: true, states: [a1, a2]}
          - {name: y, final: true}
          - {name: z, final: true}
        transitions:
          - {trigger: next, from: a1, to: a2}
          - {trigger: done, from: a, to: y}
          - {trigger: done, from: [a], to: z}
        """
    )
    assert ("error", "ambiguous-trigger") in codes(found)
    issue = next(i for i in found if i.code == "ambiguous-trigger")
    assert issue.pos.path == "transitions[2].trigger"
    assert issue.pos.line == 10
    assert "transitions[1]" in issue.message


def test_duplicate_trigger_is_reported_once_per_pair() -> None:
    found = issues(
        """
        workflow: w
        states:
          - {name: a, initial: true, states: [a1, a2]}
          - {name: z, final: true}
        transitions:
          - {trigger: next, from: a1, to: a2}
          - {trigger: done, from: a, to: z}
          - {trigger: done, from: a, to: z}
        """
    )
    assert codes(found) == [("error", "ambiguous-trigger")]


def test_unused_rule_and_role_are_warnings() -> None:
    found = issues(
        """
        workflow: w
        roles: [clerk, auditor]
        states:
          - {name: a, initial: true}
          - {name: z, final: true}
        transitions:
          - {trigger: go, from: a, to: z, roles: [clerk]}
        rules:
          spare: {when: "true", message: never used}
        """
    )
    assert codes(found) == [("warning", "unused-rule"), ("warning", "unused-role")]
    rule, role = found
    assert rule.pos.path == "rules.spare"
    assert (role.pos.line, role.pos.column, role.pos.path) == (3, 16, "roles[1]")


def test_self_transition_is_a_warning() -> None:
    found = issues(
        """
        workflow: w
        states:
          - {name: a, initial: true}
          - {name: z, final: true}
        transitions:
          - {trigger: touch, from: a, to: a}
          - {trigger: go, from: a, to: z}
        """
    )
    assert codes(found) == [("warning", "self-transition")]
    assert found[0].pos.path == "transitions[0].to"


def test_errors_come_before_warnings() -> None:
    found = issues(
        """
        workflow: w
        states:
          - {name: a, initial: true}
          - {name: lost}
          - {name: z, final: true}
        transitions:
          - {trigger: touch, from: a, to: a}
          - {trigger: go, from: a, to: z}
        """
    )
    assert [i.severity for i in found] == ["error", "error", "warning"]


def test_render() -> None:
    issue = LintIssue(
        "warning",
        "unused-rule",
        "rule 'x' is not used",
        SourcePos("w.yaml", 3, 5, "rules.x"),
        suggestions=("y",),
    )
    assert issue.render() == (
        "w.yaml:3:5: rules.x: warning: rule 'x' is not used (did you mean 'y'?) [unused-rule]"
    )
    assert LintIssue("error", "c", "m", SourcePos()).render() == "<string>: error: m [c]"


def test_internal_transition_is_not_a_self_transition() -> None:
    found = issues(
        """
        workflow: w
        states:
          - {name: a, initial: true}
          - {name: z, final: true}
        transitions:
          - {trigger: note, from: a}
          - {trigger: go, from: a, to: z}
        """
    )
    assert found == []
