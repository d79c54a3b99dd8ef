"""Scenario files: loading with positions and suggestions, every expectation kind passing and
failing with expected against actual, timers through ``tick``, and the pytest plugin on a client
repository that holds only YAML.
"""

from __future__ import annotations

import shutil
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crmflow import DefinitionError, Engine
from crmflow.engine._loader import definition_files, load_definitions
from crmflow.engine._scenario import (
    collect_scenario_errors,
    default_workflows_path,
    is_scenario_file,
    load_scenario_file,
    scenario_files,
)
from crmflow.engine._simulate import ScenarioResult, run_scenario, simulate

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
ORG = ROOT / "examples" / "org.yaml"
CLIENT_REPO = Path(__file__).resolve().parent / "fixtures" / "client_repo"

SALES_FACTS = """\
facts:
  customer: {name: ACME, credit_limit: 10000, open_balance: 5000, payment_terms: prepaid}
"""


def scenario_file(
    tmp_path: Path,
    body: str,
    *,
    workflow: str = "sales_order",
    header: str = "",
    workflows: Path = WORKFLOWS,
    org: Path | None = ORG,
) -> Path:
    """Write a scenario file; ``body`` is the ``scenarios:`` list (dedented)."""
    lines = [f"workflow: {workflow}", f"workflows: {workflows}"]
    if org is not None:
        lines.append(f"org: {org}")
    lines.append("timezone: Asia/Shanghai")
    text = "\n".join(lines) + "\n" + textwrap.dedent(header) + "scenarios:\n"
    text += textwrap.indent(textwrap.dedent(body), "  ")
    target = tmp_path / "scenarios" / f"{workflow}.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


def steps(text: str, *, start: str = "2026-01-05T09:00", name: str = "story") -> str:
    """One scenario named ``name`` with the given steps (a YAML list, dedented)."""
    return f"- name: {name}\n  start: {start}\n  steps:\n" + textwrap.indent(
        textwrap.dedent(text), "    "
    )


def run_all(path: Path) -> list[ScenarioResult]:
    loaded = load_scenario_file(path)
    return [run_scenario(loaded, s, load_entry_points=False) for s in loaded.scenarios]


def run_one(path: Path) -> ScenarioResult:
    (result,) = run_all(path)
    return result


def line_of(path: Path, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the ``occurrence``-th ``needle`` in the file."""
    seen = 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number, line.index(needle) + 1
    raise AssertionError(f"{needle!r} not in {path}")


ORDER = "start: {key: SO-1, as: alice, data: {customer_id: C1, amount: 8000}}"


# -- finding files and the workflow loader ----------------------------------------------------


def test_workflow_loader_skips_scenario_directories(tmp_path: Path) -> None:
    shutil.copy(WORKFLOWS / "deal.yaml", tmp_path / "deal.yaml")
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "deal.yaml").write_text("workflow: deal\nscenarios: []\n")
    (tmp_path / "sub" / "scenarios" / "nested").mkdir(parents=True)
    (tmp_path / "sub" / "scenarios" / "nested" / "x.yaml").write_text("not: a workflow\n")
    (tmp_path / "deal.scenario.yaml").write_text("workflow: deal\nscenarios: []\n")
    assert definition_files(tmp_path) == [tmp_path / "deal.yaml"]
    assert [d.name for d in load_definitions(tmp_path)] == ["deal"]
    # A workflow file that happens to be named like the directory is still a workflow.
    shutil.copy(WORKFLOWS / "complaint.yaml", tmp_path / "scenarios.yaml")
    assert tmp_path / "scenarios.yaml" in definition_files(tmp_path)


def test_the_shipped_workflow_directory_still_loads_its_five_workflows() -> None:
    names = sorted(d.name for d in load_definitions(WORKFLOWS))
    assert names == ["complaint", "deal", "onboarding", "receivable", "sales_order"]


def test_collection_rule(tmp_path: Path) -> None:
    story = "workflow: deal\nscenarios: []\n"
    (tmp_path / "scenarios" / "deep").mkdir(parents=True)
    (tmp_path / "scenarios" / "a.yaml").write_text(story)
    (tmp_path / "scenarios" / "deep" / "b.yml").write_text(story)
    (tmp_path / "scenarios" / "notes.yaml").write_text("workflow: deal\ntitle: not scenarios\n")
    (tmp_path / "elsewhere.yaml").write_text(story)
    (tmp_path / "c.scenario.yaml").write_text("anything: at all\n")
    assert is_scenario_file(tmp_path / "scenarios" / "a.yaml")
    assert is_scenario_file(tmp_path / "scenarios" / "deep" / "b.yml")
    assert not is_scenario_file(tmp_path / "scenarios" / "notes.yaml")
    assert not is_scenario_file(tmp_path / "elsewhere.yaml")
    assert is_scenario_file(tmp_path / "c.scenario.yaml")
    assert scenario_files(tmp_path) == [
        tmp_path / "c.scenario.yaml",
        tmp_path / "scenarios" / "a.yaml",
        tmp_path / "scenarios" / "deep" / "b.yml",
    ]
    assert default_workflows_path(tmp_path / "w" / "scenarios" / "x.yaml") == tmp_path / "w"
    assert default_workflows_path(tmp_path / "w" / "x.scenario.yaml") == tmp_path / "w"


# -- loading errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "needle", "message", "suggestion"),
    [
        ("fire: {trigger: aprove, as: alice}", "aprove", "unknown trigger 'aprove'", "approve"),
        ("fire: {trigger: approve, as: alcie}", "alcie", "unknown user 'alcie'", "alice"),
        ("fires: {trigger: approve, as: alice}", "fires", "unknown key 'fires'", "fire"),
        ("fire: {trigger: approve, as: alice, overide: x}", "overide", "unknown key", "override"),
        (
            "fire: {trigger: approve, as: alice}\n  expect: {state: aproved}",
            "aproved",
            "workflow 'sales_order' has no state 'aproved'",
            "approved",
        ),
        (
            "fire: {trigger: approve, as: alice}\n  expect: {refused_by: credit_limt}",
            "credit_limt",
            "unknown rule 'credit_limt'",
            "credit_limit",
        ),
        (
            "fire: {trigger: approve, as: alice}\n  expect: {data: {amout: 5}}",
            "amout",
            "'amout' is not a field of workflow 'sales_order'",
            "amount",
        ),
        (
            "fire: {trigger: approve, as: alice}\n  expect: {stat: draft}",
            "stat",
            "unknown key 'stat'",
            "state",
        ),
        (
            "fire: {trigger: approve, as: alice}\n  expect: {notified: [erni]}",
            "erni",
            "unknown user 'erni'",
            "erin",
        ),
        (
            "fire: {trigger: approve, as: alice}\n  expect: {error: PermisionDenied}",
            "PermisionDenied",
            "unknown error",
            "PermissionDenied",
        ),
        (
            "fire: {trigger: approve, as: alice}\n  expect: {history: {last: {kind: overide}}}",
            "overide",
            "unknown history kind",
            "override",
        ),
        (
            "fire: {trigger: approve, as: alice}\n  expect: {effects: {timer_set: []}}",
            "timer_set",
            "unknown effect",
            "timers_set",
        ),
        (
            "fire: {trigger: approve, as: alice, facts: {customer: {credit_limt: 1}}}",
            "credit_limt",
            "customer has no attribute 'credit_limt'",
            "credit_limit",
        ),
        (
            "fire: {key: SO-2, trigger: approve, as: alice}",
            "SO-2",
            "no instance 'SO-2' is started before this step",
            "SO-1",
        ),
    ],
)
def test_mistakes_point_at_line_and_column_with_suggestions(
    tmp_path: Path, step: str, needle: str, message: str, suggestion: str
) -> None:
    path = scenario_file(tmp_path, steps(f"- {ORDER}\n- {step}\n"), header=SALES_FACTS)
    with pytest.raises(DefinitionError) as info:
        load_scenario_file(path)
    error = info.value
    assert message in error.reason
    assert error.suggestions[0] == suggestion
    assert (error.line, error.column) == line_of(path, needle)
    assert error.source == str(path)
    assert f"did you mean '{suggestion}'" in error.render()
    assert error.render().startswith(f"{path}:{error.line}:{error.column}: scenarios[0].steps[1]")


def test_every_mistake_of_a_file_is_collected_in_order(tmp_path: Path) -> None:
    path = scenario_file(
        tmp_path,
        steps(
            f"""\
            - {ORDER}
            - fire: {{trigger: aprove, as: alcie}}
              expect: {{state: aproved, tasks_open: [payment_terms]}}
            - after: 2 days
            - at: 2026-01-01T09:00
            """
        ),
    )
    errors = collect_scenario_errors(path)
    reasons = [e.reason for e in errors]
    assert [e.line for e in errors] == sorted(e.line for e in errors)
    assert any("unknown user 'alcie'" in r for r in reasons)
    assert any("unknown trigger 'aprove'" in r for r in reasons)
    assert any("no state 'aproved'" in r for r in reasons)
    assert any("unknown task 'payment_terms'" in r for r in reasons)
    assert any("bad duration '2'" in r for r in reasons)
    assert any("the clock cannot go back" in r for r in reasons)


def test_a_trigger_may_only_write_the_fields_it_declares(tmp_path: Path) -> None:
    path = scenario_file(
        tmp_path,
        steps(f"- {ORDER}\n- fire: {{trigger: approve, as: alice, data: {{amount: 1}}}}\n"),
    )
    with pytest.raises(DefinitionError, match=r"trigger 'approve' may not change 'amount'"):
        load_scenario_file(path)


def test_values_are_checked_against_field_types(tmp_path: Path) -> None:
    path = scenario_file(
        tmp_path,
        steps("- start: {key: SO-1, as: alice, data: {customer_id: C1, amount: lots}}\n"),
    )
    with pytest.raises(DefinitionError, match="amount: expected decimal") as info:
        load_scenario_file(path)
    assert info.value.line == line_of(path, "lots")[0]


def test_file_level_mistakes(tmp_path: Path) -> None:
    target = tmp_path / "scenarios" / "x.yaml"
    target.parent.mkdir()
    target.write_text(f"workflow: sales_ordr\nworkflows: {WORKFLOWS}\nscenarios: []\n")
    with pytest.raises(DefinitionError, match="no workflow named 'sales_ordr'") as info:
        load_scenario_file(target)
    assert info.value.suggestions == ("sales_order",)
    assert (info.value.line, info.value.column) == (1, 11)

    shutil.copy(WORKFLOWS / "deal.yaml", target)
    with pytest.raises(DefinitionError, match="missing required key") as info:
        load_scenario_file(target, workflows=WORKFLOWS)
    assert "looks like a workflow file" in info.value.hint

    target.write_text(f"workflow: deal\nworkflows: {WORKFLOWS}\norg: nowhere.yaml\nscenarios: []\n")
    errors = collect_scenario_errors(target)
    assert "'nowhere.yaml' does not exist" in errors[0].reason
    assert "relative to the scenario file" in errors[0].hint
    assert any("non-empty list of scenarios" in e.reason for e in errors)

    target.write_text("workflow: deal\nworkflow: deal\n")
    with pytest.raises(DefinitionError, match="duplicate key") as info:
        load_scenario_file(target, workflows=WORKFLOWS)
    assert info.value.line == 2


def test_users_need_an_org_or_declared_actors(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, steps(f"- {ORDER}\n"), org=None)
    with pytest.raises(DefinitionError, match="no org directory and no actors") as info:
        load_scenario_file(path)
    assert "{id: x, roles: [...]}" in info.value.hint

    inline = (
        "start: {key: SO-1, as: {id: ann, roles: [sales_rep]}, data: {customer_id: C1, amount: 8}}"
    )
    path = scenario_file(tmp_path, steps(f"- {inline}\n"), org=None)
    assert run_one(path).passed

    header = "actors:\n  ann: {roles: [sales_rep]}\n  max: {roles: [sales_manger]}\n"
    path = scenario_file(tmp_path, steps(f"- {ORDER}\n"), org=None, header=header)
    errors = collect_scenario_errors(path)
    assert [e.reason for e in errors] == [
        "workflow 'sales_order' has no role 'sales_manger'",
        "unknown user 'alice'",
    ]
    assert errors[0].suggestions == ("sales_manager",)
    assert errors[1].suggestions == ()


def test_two_scenarios_may_not_share_a_name(tmp_path: Path) -> None:
    body = steps(f"- {ORDER}\n") + steps(f"- {ORDER}\n")
    path = scenario_file(tmp_path, body)
    with pytest.raises(DefinitionError, match="two scenarios are named 'story'"):
        load_scenario_file(path)


# -- expectations: passing and failing --------------------------------------------------------


def check(tmp_path: Path, step_lines: str, *, header: str = SALES_FACTS) -> ScenarioResult:
    path = scenario_file(tmp_path, steps(step_lines), header=header)
    return run_one(path)


def only_mismatch(result: ScenarioResult) -> tuple[str, str, str, int]:
    failed = result.failed_step
    assert failed is not None, result.timeline()
    (m,) = failed.mismatches
    return m.what, m.expected, m.actual, m.pos.line


def test_state_refusal_and_history_expectations_pass(tmp_path: Path) -> None:
    result = check(
        tmp_path,
        f"""\
        - {ORDER}
          expect: {{state: draft, owner: alice, history: {{count: 1, last: {{kind: start}}}}}}
        - fire: {{trigger: approve, as: alice}}
          expect:
            ok: false
            refused: true
            refused_by: credit_limit
            message_contains: "Credit limit of ACME exceeded by 3,000"
            state: draft
            history: {{last: {{kind: refused, actor: alice, trigger: approve, from: draft}}}}
        - after: 1h
          fire: {{trigger: approve, as: sam, override: pays on time}}
          expect:
            ok: true
            state: approved
            history:
              count: 3
              last: {{kind: override, actor: sam, reason_contains: on time, to: approved}}
              includes: [{{kind: refused, actor: alice}}, {{kind: start}}]
        """,
    )
    assert result.passed, result.timeline()
    assert [len(r.entries) for r in result.steps] == [1, 1, 1]


@pytest.mark.parametrize(
    ("expect", "what", "expected", "actual"),
    [
        ("{state: approved}", "state", "'approved'", "'draft'"),
        ("{owner: sam}", "owner", "'sam'", "'alice'"),
        ("{ok: true}", "ok", "true", "false (refused by credit_limit"),
        ("{refused: false}", "refused", "false", "true (refused by credit_limit"),
        ("{refused_by: prepayment}", "refused_by", "refused by prepayment", "credit_limit"),
        ("{message_contains: sunshine}", "message_contains", "'sunshine'", "Credit limit of"),
        ("{history: {count: 5}}", "history.count", "5", "2"),
        ("{history: {last: {actor: sam}}}", "history.last.actor", "'sam'", "'alice'"),
        ("{history: {last: {kind: override}}}", "history.last.kind", "'override'", "'refused'"),
        (
            "{history: {includes: [{kind: override}]}}",
            "history.includes",
            "an entry {kind: 'override'}",
            "start by alice; refused approve by alice",
        ),
        ("{data: {amount: 8000.01}}", "data.amount", "8000.01", "8000"),
        ("{error: PermissionDenied}", "error", "PermissionDenied", "refused by credit_limit"),
    ],
)
def test_a_failed_expectation_says_expected_and_actual_at_its_line(
    tmp_path: Path, expect: str, what: str, expected: str, actual: str
) -> None:
    result = check(
        tmp_path, f"- {ORDER}\n- fire: {{trigger: approve, as: alice}}\n  expect: {expect}\n"
    )
    assert not result.passed
    failed = result.failed_step
    assert failed is not None
    found = {m.what: m for m in failed.mismatches}
    # Expecting anything but a refusal also reports the unexpected refusal ("ok").
    assert set(found) - {what} <= {"ok"}
    got_expected, got_actual, line = found[what].expected, found[what].actual, found[what].pos.line
    assert expected in got_expected
    assert actual in got_actual
    path = Path(result.scenario.source)
    assert line == line_of(path, "expect:")[0]
    message = result.failure_message()
    assert f"failed at step 2 (fire approve on SO-1 as alice, line {line - 1})" in message
    assert f"{path}:{line}:" in message
    assert f"expected {got_expected}, got {got_actual}" in message


def test_a_broken_scenario_reports_the_wrong_state_and_stops_there(tmp_path: Path) -> None:
    result = check(
        tmp_path,
        f"""\
        - {ORDER}
        - fire: {{trigger: approve, as: sam, override: fine}}
          expect: {{state: shipped}}
        - fire: {{trigger: ship, as: wang}}
        """,
    )
    assert not result.passed
    assert len(result.steps) == 2  # the third step never ran
    path = Path(result.scenario.source)
    line, column = line_of(path, "shipped")
    assert result.failure_message().splitlines() == [
        f"scenario 'story' failed at step 2 (fire approve on SO-1 as sam, line {line - 1})",
        f"{path}:{line}:{column}: expect.state: expected 'shipped', got 'approved'",
    ]
    assert "FAIL (2 steps" in result.timeline()


def test_an_unexpected_refusal_or_error_fails_the_step(tmp_path: Path) -> None:
    result = check(tmp_path, f"- {ORDER}\n- fire: {{trigger: approve, as: alice}}\n")
    what, expected, actual, line = only_mismatch(result)
    assert (what, expected) == ("ok", "success")
    assert actual.startswith("refused by credit_limit (Credit limit of ACME exceeded")
    assert line == line_of(Path(result.scenario.source), "- fire")[0]

    result = check(
        tmp_path,
        f"- {ORDER}\n- fire: {{trigger: ship, as: wang}}\n  expect: {{state: draft}}\n",
    )
    failed = result.failed_step
    assert failed is not None
    assert [m.what for m in failed.mismatches] == ["ok"]
    assert (
        "UnknownTrigger: trigger 'ship' cannot fire from state 'draft'"
        in failed.mismatches[0].actual
    )


def test_an_error_where_a_refusal_was_expected_fails(tmp_path: Path) -> None:
    result = check(
        tmp_path,
        f"- {ORDER}\n"
        "- fire: {trigger: approve, as: wang}\n"
        "  expect: {refused_by: credit_limit}\n",
    )
    what, expected, actual, _ = only_mismatch(result)
    assert (what, expected) == ("ok", "a refusal")
    assert actual.startswith("PermissionDenied: 'wang' (roles: warehouse) may not approve")


def test_expected_errors(tmp_path: Path) -> None:
    result = check(
        tmp_path,
        f"""\
        - {ORDER}
        - fire: {{trigger: approve, as: wang}}
          expect: {{error: PermissionDenied, error_contains: "may not approve", state: draft}}
        - fire: {{trigger: ship, as: wang}}
          expect: {{error: CrmflowError, error_contains: "cannot fire from state 'draft'"}}
        - start: {{key: SO-9, as: alice, data: {{customer_id: C1, amount: 1}}}}
          expect: {{error: InstanceExists}}
        """,
    )
    # SO-9 starts fine, so expecting InstanceExists fails; the two errors before were expected.
    what, expected, actual, _ = only_mismatch(result)
    assert (what, expected, actual) == ("error", "InstanceExists", "success")
    assert result.failed_step is not None and result.failed_step.step.number == 4


def test_typed_data_comparison(tmp_path: Path) -> None:
    body = """\
    - start:
        key: AR-1
        as: frank
        data: {customer_name: Ningbo Paper, invoice_no: I-1, amount: 36000.50, due_date: 2026-01-20}
      expect: {data: {amount: 36000.5, due_date: 2026-01-20, paid_amount: null}}
    - fire: {trigger: record_payment, as: fay, data: {paid_amount: "36000.500"}}
      expect: {data: {paid_amount: 36000.50, due_date: 2026-01-21}}
    """
    path = scenario_file(tmp_path, steps(body), workflow="receivable")
    what, expected, actual, _ = only_mismatch(run_one(path))
    assert (what, expected, actual) == ("data.due_date", "2026-01-21", "2026-01-20")


def test_datetime_fields_compare_as_instants(tmp_path: Path) -> None:
    body = """\
    - start:
        key: CP-1
        as: cora
        data: {customer_name: X, category: quality, promised_reply_date: 2026-01-16T17:00}
      expect: {data: {promised_reply_date: "2026-01-16T09:00:00+00:00"}}
    - fire: {trigger: promise_reply, as: cora, data: {promised_reply_date: 2026-01-20T12:00}}
      expect: {data: {promised_reply_date: 2026-01-20T12:01}}
    """
    path = scenario_file(tmp_path, steps(body), workflow="complaint")
    what, expected, actual, _ = only_mismatch(run_one(path))
    assert what == "data.promised_reply_date"
    assert (expected, actual) == ("2026-01-20T12:01:00+08:00", "2026-01-20T12:00:00+08:00")


def test_notifications_sent_and_not_sent(tmp_path: Path) -> None:
    passing = f"""\
    - {ORDER}
    - fire: {{trigger: approve, as: sam, override: ok}}
    - fire: {{trigger: confirm_prepayment, as: frank, data: {{prepayment_received: true}}}}
      expect:
        notified:
          - {{to: alice, subject_contains: "Prepayment for order SO-1", channel: inbox}}
          - {{to: sam, event: "transition:confirm_prepayment"}}
          - erin
          - grace
        not_notified: [wang, frank]
    """
    result = check(tmp_path, passing)
    assert result.passed, result.timeline()
    step = result.steps[2]
    assert "-> alice [inbox]: Prepayment for order SO-1 received" in step.entries[0].details

    failing = passing.replace("not_notified: [wang, frank]", "not_notified: [grace]").replace(
        "- erin\n", "- {to: erin, subject_contains: shipped}\n"
    )
    result = check(tmp_path, failing)
    failed = result.failed_step
    assert failed is not None
    found = {m.what: m for m in failed.mismatches}
    assert found["notified"].expected == "{to: 'erin', subject_contains: 'shipped'}"
    assert "-> erin [inbox]: Prepayment for order SO-1 received" in found["notified"].actual
    assert found["not_notified"].expected == "nothing to grace"
    assert found["not_notified"].actual == "-> grace [inbox]: Prepayment for order SO-1 received"


def test_tasks_progress_costs_and_effects(tmp_path: Path) -> None:
    body = """\
    - start: {key: C-1, as: alice, data: {company: Hangzhou Tea Co.}}
    - fire: {trigger: start_confirmation, as: alice}
      expect:
        effects:
          tasks_opened: [payment_terms, payment_method, credit_limit, price_list, packaging,
                         delivery_address, invoice_details, contact_person, quality_standard,
                         first_order_date, prepayment_received, first_shipment, welcome_gift]
    - complete_task: {task: credit_limit, as: sam, result: 50000}
      expect: {tasks: {credit_limit: done, price_list: open}, progress: {done: 1, open: 12}}
    - defer_task: {task: packaging, as: alice, reason: after the fair}
      expect: {tasks: {packaging: deferred}, progress: {deferred: 1}}
    - record_cost: {category: greetings, amount: 120.50, as: alice}
      expect: {costs: {greetings: 120.5}}
    - reassign_task: {task: payment_terms, to: bob, as: sam}
      expect:
        tasks_open: [payment_terms, payment_method, price_list, delivery_address,
                     invoice_details, contact_person, quality_standard, first_order_date,
                     prepayment_received, first_shipment, welcome_gift]
    """
    path = scenario_file(tmp_path, steps(body), workflow="onboarding")
    result = run_one(path)
    assert result.passed, result.timeline()

    broken = (
        body.replace("progress: {done: 1, open: 12}", "progress: {done: 2, open: 12}")
        .replace("costs: {greetings: 120.5}", "costs: {greetings: 120.05, samples: 1}")
        .replace("tasks_open: [payment_terms, ", "tasks_open: [")
    )
    path = scenario_file(tmp_path, steps(broken), workflow="onboarding")
    result = run_one(path)
    failed = result.failed_step
    assert failed is not None and failed.step.number == 3
    assert [(m.what, m.expected, m.actual) for m in failed.mismatches] == [
        ("progress.done", "2", "1")
    ]


def test_each_failing_collection_expectation(tmp_path: Path) -> None:
    body = """\
    - start: {key: C-1, as: alice, data: {company: Hangzhou Tea Co.}}
    - fire: {trigger: start_confirmation, as: alice}
    - record_cost: {category: greetings, amount: 120.50, as: alice}
      expect: {costs: {greetings: 120.05, samples: 1}}
    """
    result = run_one(scenario_file(tmp_path, steps(body), workflow="onboarding"))
    failed = result.failed_step
    assert failed is not None
    assert [(m.what, m.expected, m.actual) for m in failed.mismatches] == [
        ("costs.greetings", "120.05", "120.50"),
        ("costs.samples", "1", "0"),
    ]

    body = """\
    - start: {key: C-1, as: alice, data: {company: Hangzhou Tea Co.}}
    - fire: {trigger: start_confirmation, as: alice}
      expect:
        tasks_open: [payment_terms]
        tasks: {welcome_gift: done}
        effects: {tasks_opened: [payment_terms], timers_set: []}
    """
    result = run_one(scenario_file(tmp_path, steps(body), workflow="onboarding"))
    failed = result.failed_step
    assert failed is not None
    found = {m.what: m for m in failed.mismatches}
    assert found["tasks_open"].expected == "['payment_terms']"
    assert "also open: contact_person, credit_limit" in found["tasks_open"].actual
    assert (found["tasks.welcome_gift"].expected, found["tasks.welcome_gift"].actual) == (
        "'done'",
        "'open'",
    )
    assert found["effects.tasks_opened"].expected == "['payment_terms']"
    assert "'welcome_gift'" in found["effects.tasks_opened"].actual
    assert "effects.timers_set" not in found  # none were set, as expected


def test_warnings_from_a_warn_rule(tmp_path: Path) -> None:
    body = """\
    - start: {key: Q-1, as: linda, data: {customer: Foshan Tiles, amount: 800}}
    - fire: {trigger: send, as: linda}
      expect: {state: sent, warned_by: small_quote}
    """
    header = "actors:\n  linda: {roles: [sales_rep]}\n"
    workflows = CLIENT_REPO / "workflows"
    path = scenario_file(
        tmp_path, steps(body), workflow="quote", workflows=workflows, org=None, header=header
    )
    result = run_one(path)
    assert result.passed, result.timeline()
    assert "warning small_quote: A quote under 1,000 (800)" in "\n".join(
        result.steps[1].entries[0].details
    )
    path = scenario_file(
        tmp_path,
        steps(body.replace("amount: 800", "amount: 8000")),
        workflow="quote",
        workflows=workflows,
        org=None,
        header=header,
    )
    what, expected, actual, _ = only_mismatch(run_one(path))
    assert (what, expected, actual) == ("warned_by", "warnings from small_quote", "no warning")


def test_expectations_about_another_instance(tmp_path: Path) -> None:
    result = check(
        tmp_path,
        f"""\
        - {ORDER}
        - start: {{key: SO-2, as: bob, data: {{customer_id: C2, amount: 100}}}}
        - fire: {{key: SO-2, trigger: approve, as: bob}}
          expect: {{state: approved, owner: bob}}
        - fire: {{trigger: cancel, as: bob}}
          expect: {{key: SO-1, state: draft, owner: alice}}
        """,
    )
    assert result.passed, result.timeline()


# -- time: at, after, tick, timers ------------------------------------------------------------


def test_timers_fire_when_the_scenario_ticks(tmp_path: Path) -> None:
    body = """\
    - start:
        key: CP-1
        as: cora
        data:
          customer_name: Hangzhou Tea Co.
          category: quality
          promised_reply_date: 2026-01-16T17:00
      expect: {timers: {reply_deadline: 2026-01-14T12:00, reply_reminder: true}}
    - tick: {at: 2026-01-14T11:59}
      expect: {state: received, data: {escalated: false}, not_notified: [quinn]}
    - after: 1m
      tick: {}
      expect:
        data: {escalated: true}
        notified: [{to: quinn, subject_contains: overdue (quality)}]
        history: {last: {actor: "timer:reply_deadline", trigger: escalate, kind: transition}}
        timers: {reply_deadline: false}
    """
    path = scenario_file(tmp_path, steps(body, start="2026-01-09T15:00"), workflow="complaint")
    result = run_one(path)
    assert result.passed, result.timeline()
    tick = result.steps[2].entries[0]
    assert tick.actor == "clock"
    assert tick.text.startswith("tick: 1 fired")
    assert "timer:reply_deadline on CP-1: escalate, received -> received" in tick.details
    assert tick.at == datetime(2026, 1, 14, 4, 0, tzinfo=UTC)
    assert "Wed 2026-01-14 12:00  clock    tick: 1 fired" in result.timeline()

    late = body.replace("reply_deadline: 2026-01-14T12:00", "reply_deadline: 2026-01-14T13:00")
    path = scenario_file(tmp_path, steps(late, start="2026-01-09T15:00"), workflow="complaint")
    what, expected, actual, _ = only_mismatch(run_one(path))
    assert what == "timers.reply_deadline"
    assert (expected, actual) == (
        "due 2026-01-14T13:00:00+08:00",
        "[2026-01-14T12:00:00+08:00]",
    )


def test_times_without_an_offset_are_read_in_the_start_time_zone(tmp_path: Path) -> None:
    text = f"""\
    workflow: sales_order
    workflows: {WORKFLOWS}
    org: {ORG}
    {SALES_FACTS.replace(chr(10), chr(10) + "    ")}
    scenarios:
      - name: offsets
        start: 2026-01-05T09:00+08:00
        steps:
          - {ORDER}
          - at: 2026-01-05T10:00
    """
    target = tmp_path / "s.scenario.yaml"
    target.write_text(textwrap.dedent(text))
    loaded = load_scenario_file(target)
    (scenario,) = loaded.scenarios
    assert scenario.steps[1].at.isoformat() == "2026-01-05T10:00:00+08:00"
    assert str(scenario.timezone) == "UTC+08:00"


def test_scenario_facts_reach_timers(tmp_path: Path) -> None:
    # A timer fires a trigger whose rule reads a host fact: the scenario's facts answer it.
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "hold.yaml").write_text(
        textwrap.dedent(
            """\
            workflow: hold
            roles: [finance]
            fields: {customer_id: {type: str, required: true}}
            facts: {customer: {name: str, blocked: bool}}
            states:
              - {name: held, initial: true}
              - {name: released, final: true}
            transitions:
              - {trigger: release, from: held, to: released, roles: [finance], rules: [not_blocked]}
            rules:
              not_blocked:
                when: customer.blocked
                effect: block
                message: "{customer.name} is blocked"
            timers:
              - {name: auto_release, in_state: held, after: 1d, fire: release}
            """
        )
    )
    body = """\
    - start: {key: H-1, as: fay, data: {customer_id: C1}}
    - tick: {after: 1d}
      expect: {state: held, history: {last: {kind: refused, actor: "timer:auto_release"}}}
    """
    header = "actors:\n  fay: {roles: [finance]}\nfacts: {customer: {name: Wuxi, blocked: true}}\n"
    path = scenario_file(
        tmp_path, steps(body), workflow="hold", workflows=workflows, org=None, header=header
    )
    result = run_one(path)
    assert result.passed, result.timeline()
    assert "timer:auto_release on H-1: release REFUSED: Wuxi is blocked" in result.timeline()
    assert result.refusals[str(workflows / "hold.yaml")] == {"not_blocked"}


# -- coverage, shared stores, many files ------------------------------------------------------


def test_coverage_counts_transitions_as_written_and_rule_refusals(tmp_path: Path) -> None:
    result = check(
        tmp_path,
        f"""\
        - {ORDER}
        - fire: {{trigger: approve, as: alice}}
          expect: {{refused_by: credit_limit}}
        - fire: {{trigger: cancel, as: alice}}
        """,
    )
    report = simulate([result.scenario.source], load_entry_points=False)
    (cov,) = [c for c in report.coverage.workflows.values() if c.workflow.name == "sales_order"]
    assert cov.line() == (
        "sales_order: 1/7 transitions, 1/2 rule refusals (1 scenarios): 7 missing"
    )
    assert "transition approve (draft -> approved)" in cov.missing
    assert "transition revise (draft -> (stays))" in cov.missing
    assert "refusal by rule prepayment" in cov.missing
    assert not report.coverage.complete


def test_a_shared_sqlite_store_keeps_the_instances_but_not_their_timers(tmp_path: Path) -> None:
    body = """\
    - start:
        key: CP-9
        as: cora
        data: {customer_name: X, category: quality, promised_reply_date: 2026-01-16T17:00}
    """
    path = scenario_file(tmp_path, steps(body), workflow="complaint")
    url = f"sqlite:///{tmp_path / 'sim.db'}"
    loaded = load_scenario_file(path)
    result = run_scenario(loaded, loaded.scenarios[0], store=url, load_entry_points=False)
    assert result.passed, result.timeline()
    with Engine.from_path(WORKFLOWS, store=url, load_entry_points=False) as engine:
        assert engine.get("CP-9").state == "received"
        assert engine.timers(key="CP-9") == []
    # The same key again in the same store: the start step says why it failed.
    again = run_scenario(loaded, loaded.scenarios[0], store=url, load_entry_points=False)
    assert "InstanceExists" in again.failure_message()


def test_simulate_reports_files_with_mistakes_and_runs_the_others(tmp_path: Path) -> None:
    good = scenario_file(tmp_path, steps(f"- {ORDER}\n"), header=SALES_FACTS)
    bad = tmp_path / "scenarios" / "broken.yaml"
    bad.write_text(
        f"workflow: deal\nworkflows: {WORKFLOWS}\nscenarios:\n  - name: x\n    steps: 3\n"
    )
    seen: list[str] = []
    report = simulate([tmp_path / "scenarios"], on_result=lambda r: seen.append(r.scenario.name))
    assert seen == ["story"]
    assert report.passed == 1 and report.failed == 0
    assert [e.source for e in report.errors] == [str(bad)]
    assert not report.ok
    assert report.summary().startswith(
        "simulate: 1 scenarios in 2 files: 1 passed, 0 failed, 1 errors in 1 files"
    )
    assert good.exists()


# -- the pytest plugin on a client repository -------------------------------------------------


@pytest.fixture
def client_repo(pytester: pytest.Pytester) -> Path:
    shutil.copytree(CLIENT_REPO, pytester.path, dirs_exist_ok=True)
    return pytester.path


def test_client_repository_passes_with_plain_pytest(
    pytester: pytest.Pytester, client_repo: Path
) -> None:
    assert not list(client_repo.rglob("*.py"))  # only YAML in the client's repository
    result = pytester.runpytest_subprocess("-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["*workflows/scenarios/quote.yaml::a discount over 10% needs the sales manager PASSED*"]
    )


def test_breaking_the_clients_scenario_fails_pytest_with_expected_and_actual(
    pytester: pytest.Pytester, client_repo: Path
) -> None:
    scenario = client_repo / "workflows" / "scenarios" / "quote.yaml"
    text = scenario.read_text()
    broken = text.replace(
        "{refused_by: discount_limit, state: draft}", "{refused_by: discount_limit, state: sent}"
    )
    assert broken != text
    scenario.write_text(broken)
    line, column = line_of(scenario, "state: sent")
    result = pytester.runpytest_subprocess()
    assert result.ret == 1
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*scenario 'a discount over 10% needs the sales manager' failed at step 2*",
            f"*quote.yaml:{line}:{column + 7}: expect.state: expected 'sent', got 'draft'",
            "*FAILED workflows/scenarios/quote.yaml::a discount over 10% needs the sales manager*",
        ]
    )


def test_a_scenario_file_with_mistakes_is_one_failing_test(
    pytester: pytest.Pytester, client_repo: Path
) -> None:
    scenario = client_repo / "workflows" / "scenarios" / "quote.yaml"
    scenario.write_text(scenario.read_text().replace("trigger: withdraw", "trigger: withdrew"))
    result = pytester.runpytest()
    result.assert_outcomes(passed=0, failed=1)
    line, column = line_of(scenario, "withdrew")
    assert (
        f"quote.yaml:{line}:{column}: scenarios[2].steps[1].fire.trigger: unknown trigger "
        "'withdrew' (did you mean 'withdraw'?)"
    ) in result.stdout.str()


def test_plugin_fixtures_and_settings(pytester: pytest.Pytester, client_repo: Path) -> None:
    pytester.makepyfile(
        test_quote="""
        from crmflow import Actor

        def test_reminder(crmflow_engine, crmflow_clock):
            linda = Actor("linda", {"sales_rep"})
            crmflow_engine.start("quote", "Q-9", actor=linda,
                                 data={"customer": "Foshan", "amount": "800"})
            assert crmflow_clock.now().isoformat() == "2026-02-02T08:00:00+00:00"
            crmflow_clock.advance("3d")
            assert crmflow_engine.tick().fired == 1
            assert [n.recipient for n in crmflow_engine.notifications(key="Q-9")] == ["linda"]
        """
    )
    pytester.makeini(
        "[pytest]\ncrmflow_start = 2026-02-02T08:00:00+00:00\ncrmflow_scenarios = false\n"
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)  # the scenario file was not collected
