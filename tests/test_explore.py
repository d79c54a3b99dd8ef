"""Exploration: seeded random walks, invariants, shortest sequences to a violation."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from crmflow import ChainReport, Engine, hookimpl, load_workflow_file, load_workflow_text
from crmflow.engine._explore import (
    ExplorationReport,
    Step,
    explore,
    format_exploration,
    replay,
)
from crmflow.rules import FunctionSpec

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "explore"
# Loaded file by file: the workflow directory also holds scenarios and forecasts.
SHIPPED = sorted(WORKFLOWS.glob("*.yaml"))


def _load(path: Path) -> Any:
    return load_workflow_file(path)


@functools.cache
def _shipped_report(path: Path) -> ExplorationReport:
    return explore(_load(path), walks=200, seed=11)


@pytest.fixture(scope="module")
def deal() -> Any:
    return _load(WORKFLOWS / "deal.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_workflows_have_no_violation(path: Path) -> None:
    report = _shipped_report(path)
    assert report.ok, format_exploration(report)
    assert report.walks == 200
    assert report.steps >= 200
    # Starts, fires and misuse all happened; nothing raised that should not have.
    assert report.outcomes["starts"] == 200
    assert report.outcomes["fired"] > 0
    assert report.outcomes["misuse refused"] > 0
    assert "errors" not in report.outcomes


def test_same_seed_same_report(deal: Any) -> None:
    first = explore(deal, walks=60, seed=3)
    second = explore(deal, walks=60, seed=3)
    assert first == second
    assert format_exploration(replace(first, elapsed=0)) == format_exploration(
        replace(second, elapsed=0)
    )


def test_another_seed_other_walks(deal: Any) -> None:
    assert explore(deal, walks=60, seed=3) != explore(deal, walks=60, seed=4)


def test_reports_are_equal_whatever_the_time_taken(deal: Any) -> None:
    report = explore(deal, walks=5, seed=1)
    assert replace(report, elapsed=report.elapsed + 10) == report


def test_walks_cover_the_deal_funnel(deal: Any) -> None:
    report = explore(deal, walks=200, seed=5)
    assert report.states_not_visited == ()
    assert set(report.states_visited) == set(deal.states)
    assert report.triggers_not_fired == ()
    assert report.warnings == ()


def test_checklists_are_worked_through() -> None:
    report = _shipped_report(WORKFLOWS / "onboarding.yaml")
    assert report.outcomes["task operations"] > 0
    # 'active' is only reached once every required confirmation item is done or deferred.
    assert "active" in report.states_visited


def test_structural_dead_end_is_reported_with_the_shortest_way_in() -> None:
    defn = _load(FIXTURES / "dead_end.yaml")
    report = explore(defn, walks=100, seed=1)
    assert not report.ok
    [violation] = report.violations
    assert violation.kind == "stuck"
    assert violation.state == "on_hold"
    assert violation.confirmed
    assert violation.walks >= 1
    assert "no transition leaves 'on_hold'" in violation.detail[0]
    # new -take-> triage -hold-> on_hold: the start and two fires.
    assert [(s.action, s.name) for s in violation.sequence] == [
        ("start", ""),
        ("fire", "take"),
        ("fire", "hold"),
    ]
    assert violation.sequence[-1].state == "on_hold"
    replayed = replay(defn, violation.sequence)
    assert replayed.violation is not None
    assert replayed.violation.kind == "stuck"
    assert replayed.violation.state == "on_hold"
    assert [s.state for s in replayed.steps] == ["new", "triage", "on_hold"]


def test_an_exit_a_rule_always_refuses_is_a_dead_end_lint_cannot_see() -> None:
    from crmflow import lint

    defn = _load(FIXTURES / "dead_end_rule.yaml")
    assert [i for i in lint(defn) if i.severity == "error"] == []
    report = explore(defn, walks=100, seed=2)
    [violation] = report.violations
    assert violation.kind == "stuck"
    assert violation.state == "review"
    assert violation.confirmed
    assert any("amount_checked" in line for line in violation.detail)
    assert [(s.action, s.name) for s in violation.sequence] == [
        ("start", ""),
        ("fire", "submit"),
        ("fire", "start_review"),
    ]
    # The staying trigger ('comment') is available in review, but it is no way out.
    assert replay(defn, violation.sequence).violation is not None
    # Never reached, so listed; a warning unless every state is required.
    assert report.states_not_visited == ("approved",)
    assert report.triggers_not_fired == ("approve",)
    assert report.warnings == ("state 'approved' was never visited in 100 walks",)


def test_require_all_states_turns_unvisited_states_into_violations() -> None:
    defn = _load(FIXTURES / "dead_end_rule.yaml")
    report = explore(defn, walks=50, seed=2, require_all_states=True)
    kinds = [v.kind for v in report.violations]
    assert kinds == ["stuck", "unvisited-state"]
    assert report.violations[1].state == "approved"
    assert report.warnings == ()


def test_the_shortest_sequence_is_printed() -> None:
    report = explore(_load(FIXTURES / "dead_end.yaml"), walks=100, seed=1)
    text = format_exploration(report)
    assert "1 violation:" in text
    assert "[stuck] in 'on_hold'" in text
    assert "shortest sequence, 3 step(s):" in text
    assert "fire hold as supervisor-user [supervisor]" in text
    assert "-> ok, on_hold" in text


def test_no_violation_prints_so(deal: Any) -> None:
    text = format_exploration(explore(deal, walks=20, seed=1))
    assert text.splitlines()[0].startswith("Explored deal v1: 20 walks (seed 1")
    assert text.endswith("No violation.")


_ROLE_GAP = """
workflow: audit
version: 1
roles: [clerk, auditor]
start_roles: [clerk]
states:
  - {name: open, initial: true}
  - {name: checked}
  - {name: done, final: true}
transitions:
  - {trigger: check, from: open, to: checked, roles: [clerk]}
  - {trigger: sign_off, from: checked, to: done, roles: [auditor]}
"""


def test_a_state_only_a_missing_role_can_leave_is_stuck() -> None:
    defn = load_workflow_text(_ROLE_GAP)
    assert explore(defn, walks=30, seed=1).ok
    report = explore(defn, walks=30, seed=1, roles=["clerk"])
    [violation] = report.violations
    assert violation.kind == "stuck"
    assert violation.state == "checked"
    assert "requires one of the roles auditor" in violation.detail[0]
    assert len(violation.sequence) == 2


def test_an_org_directory_supplies_the_actors(tmp_path: Path) -> None:
    org = tmp_path / "org.yaml"
    org.write_text(
        "org:\n  name: Test\n  manager: cleo\nusers:\n  cleo: {name: Cleo, roles: [clerk]}\n",
        encoding="utf-8",
    )
    report = explore(load_workflow_text(_ROLE_GAP), walks=20, seed=1, org=org)
    [violation] = report.violations
    assert violation.kind == "stuck"
    assert all(s.actor == "cleo" for s in violation.sequence)


class _Boom:
    """A plugin failing in a way no caller can expect."""

    @hookimpl
    def crmflow_before_commit(self, context: Any, tx: Any) -> None:
        if context.trigger == "negotiate":
            raise RuntimeError("the ERP connection dropped")


def test_an_unhandled_error_is_reported_with_its_shortest_sequence(deal: Any) -> None:
    report = explore(deal, walks=100, seed=1, plugins=[_Boom()])
    [violation] = report.violations
    assert violation.kind == "unhandled-error"
    assert violation.message == "fire negotiate raised RuntimeError"
    assert violation.state == "opportunity.intent_confirmed"
    assert violation.detail == ("RuntimeError: the ERP connection dropped",)
    steps = violation.sequence
    assert [s.name for s in steps] == ["", "qualify", "confirm_intent", "negotiate"]
    # Simplified: nothing the failure does not need (no clock moves, overrides or data).
    assert all(s.advance.total_seconds() == 0 and s.override is None for s in steps)
    assert steps[-1].outcome == "raised RuntimeError"
    assert replay(deal, steps).violation is None  # without the plugin, all is well
    again = replay(deal, steps, plugins=[_Boom()]).violation
    assert again is not None
    assert again.signature == violation.signature
    # The walks that did not reach negotiate still count, and the report says what broke.
    assert "opportunity.negotiation" in report.states_not_visited
    assert "[unhandled-error]" in format_exploration(report)


_RISKY = """
workflow: lookup
version: 1
roles: [clerk]
start_roles: [clerk]
fields:
  code: str
states:
  - {name: open, initial: true}
  - {name: done, final: true}
transitions:
  - {trigger: set_code, from: open, roles: [clerk], writes: [code]}
  - {trigger: finish, from: open, to: done, roles: [clerk], rules: [known_code]}
rules:
  known_code: {when: "unknown(code) and code != 'boom'", effect: block, message: "unknown"}
"""


class _Lookup:
    """A rule function that fails for one value, as a host's lookup might."""

    @hookimpl
    def crmflow_rule_functions(self) -> list[FunctionSpec]:
        def unknown(code: str) -> bool:
            if code == "boom":
                raise ValueError("lookup service down")
            return False

        return [FunctionSpec("unknown", ("str",), "bool", unknown)]


def test_a_failing_rule_function_is_an_unhandled_error() -> None:
    defn = load_workflow_text(_RISKY)
    report = explore(defn, walks=100, seed=1, plugins=[_Lookup()])
    assert report.violations, format_exploration(report)
    violation = report.violations[0]
    assert violation.kind == "unhandled-error"
    assert "raised RuleEvaluationError" in violation.message
    assert "lookup service down" in violation.detail[0]
    assert violation.confirmed
    # 'boom' came from the rule's own literal; the sequence sets it and trips the rule.
    assert any(s.data.get("code") == "boom" for s in violation.sequence)
    replayed = replay(defn, violation.sequence, plugins=[_Lookup()])
    assert replayed.violation is not None
    assert replayed.violation.signature == violation.signature


def test_a_broken_history_is_reported(monkeypatch: pytest.MonkeyPatch, deal: Any) -> None:
    real = Engine.verify

    def verify(self: Engine, key: str) -> ChainReport:
        if self.get(key).state == "lost":
            return ChainReport(ok=False, checked=1, first_bad_seq=2, reason="row 2 was edited")
        return real(self, key)

    monkeypatch.setattr(Engine, "verify", verify)
    report = explore(deal, walks=30, seed=1)
    [violation] = report.violations
    assert violation.kind == "history"
    assert "row 2 was edited" in violation.message
    assert violation.confirmed
    assert [s.name for s in violation.sequence] == ["", "lose"]


def test_refused_misuse_is_no_violation(deal: Any) -> None:
    # Every step misuses the API on purpose; every one must be refused as documented.
    report = explore(deal, walks=50, seed=9, misuse=1.0)
    assert report.ok, format_exploration(report)
    assert report.outcomes["misuse refused"] >= 50


def test_steps_describe_themselves() -> None:
    from datetime import timedelta
    from decimal import Decimal

    step = Step(
        "fire",
        "qualify",
        actor="ann",
        roles=("sales_rep",),
        data={"expected_value": Decimal("12.50")},
        advance=timedelta(days=2),
        outcome="ok",
        state="opportunity.initial_contact",
    )
    assert step.describe() == (
        "+2d fire qualify as ann [sales_rep] data(expected_value=12.50) -> ok, "
        "opportunity.initial_contact"
    )


def test_arguments_are_checked(deal: Any) -> None:
    with pytest.raises(ValueError, match="verify"):
        explore(deal, walks=1, seed=1, verify="sometimes")
    with pytest.raises(ValueError, match="walks"):
        explore(deal, walks=-1, seed=1)


@pytest.mark.parametrize("verify", ["step", "change", "end"])
def test_every_verify_mode_gives_the_same_walks(deal: Any, verify: str) -> None:
    report = explore(deal, walks=30, seed=4, verify=verify)
    assert report.ok
    assert report == explore(deal, walks=30, seed=4)
