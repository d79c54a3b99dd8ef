"""The command line as an implementer uses it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crmflow.cli import main

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"


def test_validate_shipped_workflows_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(WORKFLOWS)]) == 0
    out = capsys.readouterr().out
    assert "sales_order v1" in out and "deal v1" in out


def test_validate_points_at_a_misspelled_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (WORKFLOWS / "sales_order.yaml").read_text()
    assert "to: approved," in text
    broken = text.replace("to: approved,", "to: aproved,", 1)
    target = tmp_path / "sales_order.yaml"
    target.write_text(broken)
    line_no = next(i for i, line in enumerate(broken.splitlines(), 1) if "to: aproved" in line)
    column = broken.splitlines()[line_no - 1].index("aproved") + 1

    assert main(["validate", str(target)]) == 1
    err = capsys.readouterr().err
    assert f"{target}:{line_no}:{column}:" in err
    assert "did you mean 'approved'" in err


def test_validate_reports_a_bad_rule_expression_in_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (WORKFLOWS / "sales_order.yaml").read_text()
    broken = text.replace(
        "amount + customer.open_balance > customer.credit_limit",
        "amount + customer.open_balanse > customer.credit_limit",
        1,
    )
    target = tmp_path / "sales_order.yaml"
    target.write_text(broken)
    line_no = next(i for i, line in enumerate(broken.splitlines(), 1) if "open_balanse >" in line)
    assert main(["validate", str(target)]) == 1
    err = capsys.readouterr().err
    assert f"{target}:{line_no}:" in err
    assert "rules.credit_limit.when" in err
    assert "did you mean 'open_balance'" in err


def test_lint_shipped_workflows_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(WORKFLOWS)]) == 0


def test_diagram_prints_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "deal", "--path", str(WORKFLOWS)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stateDiagram-v2")
    assert "negotiation" in out and "first_purchase" in out


def test_demo_runs_on_sqlite_and_explains(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "crmflow.cli",
            "demo",
            "--db",
            str(db),
            "--workflows",
            str(WORKFLOWS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "REFUSED" in out and "credit_limit" in out and "3,000" in out
    assert "prepayment" in out
    assert "hash chain intact" in out
    # Then every shipped scenario, as timelines, on the same file.
    assert "complaint: " in out and "receivable: " in out and "onboarding: " in out
    assert " 0 failed" in out.splitlines()[-3]
    assert db.exists()


def test_diagram_mistakes_get_suggestions_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diagram", "deall", "--path", str(WORKFLOWS)]) == 2
    assert "did you mean 'deal'" in capsys.readouterr().err
    current = "opportunity.negotiatoin"
    assert main(["diagram", "deal", "--path", str(WORKFLOWS), "--current", current]) == 2
    assert "did you mean 'opportunity.negotiation'" in capsys.readouterr().err
    missing = tmp_path / "no" / "such" / "dir" / "x.mmd"
    assert main(["diagram", "deal", "--path", str(WORKFLOWS), "-o", str(missing)]) == 2
    assert "No such file or directory" in capsys.readouterr().err


def test_an_error_inside_folded_rule_text_points_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (WORKFLOWS / "sales_order.yaml").read_text()
    old = "    when: amount + customer.open_balance > customer.credit_limit\n"
    assert old in text
    new = "    when: >-\n      amount + customer.open_balance\n        > customer.credit_limt\n"
    target = tmp_path / "sales_order.yaml"
    target.write_text(text.replace(old, new, 1))
    lines = target.read_text().splitlines()
    line_no = next(i for i, line in enumerate(lines, 1) if "credit_limt" in line)
    column = lines[line_no - 1].index("credit_limt") + 1
    assert main(["validate", str(target)]) == 1
    err = capsys.readouterr().err
    assert f"{target}:{line_no}:" in err, err
    assert "did you mean 'credit_limit'" in err
    assert f":{line_no}:{column}:" in err, err


def test_diagram_highlights_a_stored_instance_and_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crmflow import Actor, Engine

    url = f"sqlite:///{tmp_path / 'crm.db'}"
    rep = Actor("alice", roles={"sales_rep"})
    with Engine.from_path(WORKFLOWS, store=url, load_entry_points=False) as engine:
        engine.start("deal", "D-1", actor=rep, data={"company": "ACME"})
        engine.fire("D-1", "qualify", actor=rep)
    assert (
        main(["diagram", "deal", "--path", str(WORKFLOWS), "--instance", "D-1", "--store", url])
        == 0
    )
    out = capsys.readouterr().out
    assert "class s_opportunity_X_initial_contact current" in out
    assert "class s_lead visited" in out
    assert main(["diagram", "deal", "--path", str(WORKFLOWS), "--instance", "D-1"]) == 2
    assert "--store" in capsys.readouterr().err


def test_explore_and_forecast_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--explore", "50", "--workflows", str(WORKFLOWS), "deal"]) == 0
    assert "No violation." in capsys.readouterr().out
    assert main(["simulate", "--explore", "5", "--workflows", str(WORKFLOWS), "dael"]) == 2
    assert "did you mean 'deal'" in capsys.readouterr().err
    forecast_file = WORKFLOWS / "forecasts" / "deal.forecast.yaml"
    code = main(["forecast", str(forecast_file), "--workflows", str(WORKFLOWS), "--leads", "50"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Funnel" in out and "Time to close" in out
