"""``crmflow simulate`` as an implementer and a CI pipeline use it: the shipped scenarios, the
timeline, exit codes, coverage and the JUnit report a CI system reads.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from junitparser import Failure, JUnitXml, TestSuite

from crmflow.cli import main
from crmflow.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
SCENARIOS = WORKFLOWS / "scenarios"
SHIPPED = ["complaint", "deal", "onboarding", "receivable", "sales_order"]


@pytest.fixture(autouse=True)
def in_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default paths (workflows/, workflows/scenarios/) are relative to the working directory.
    monkeypatch.chdir(ROOT)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["simulate", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def broken(tmp_path: Path) -> tuple[Path, int, int]:
    """A copy of the shipped sales-order scenarios expecting the wrong state at one step."""
    text = (SCENARIOS / "sales_order.yaml").read_text()
    needle = "expect: {state: invoiced, data: {invoice_no: INV-2026-0042}}"
    assert needle in text
    text = text.replace(needle, needle.replace("state: invoiced", "state: paid"))
    text = text.replace("org: ../../examples/org.yaml", f"org: {ROOT / 'examples' / 'org.yaml'}")
    target = tmp_path / "scenarios" / "sales_order.yaml"
    target.parent.mkdir()
    target.write_text(text)
    number = next(i for i, line in enumerate(text.splitlines(), 1) if "state: paid, data" in line)
    column = text.splitlines()[number - 1].index("paid") + 1
    return target, number, column


def test_every_shipped_scenario_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert code == 0, out + err
    summary = out.strip().splitlines()[-1]
    match = re.fullmatch(
        r"simulate: (\d+) scenarios in 5 files: (\d+) passed, 0 failed \(\d+\.\d s\)", summary
    )
    assert match is not None, summary
    assert match.group(1) == match.group(2)
    assert int(match.group(1)) >= 15
    assert err == ""


def test_shipped_scenarios_cover_every_transition_and_rule_refusal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "--coverage=strict", "--quiet")
    assert code == 0
    lines = out.splitlines()
    start = lines.index("coverage:")
    coverage = lines[start + 1 : start + 1 + len(SHIPPED)]
    assert [line.split(":")[0].strip() for line in coverage] == SHIPPED
    for line in coverage:
        match = re.fullmatch(
            r"  (\w+): (\d+)/(\d+) transitions, (\d+)/(\d+) rule refusals "
            r"\(\d+ scenarios\): complete",
            line,
        )
        assert match is not None, line
        assert match.group(2) == match.group(3) and match.group(4) == match.group(5)
    assert "  sales_order: 7/7 transitions, 2/2 rule refusals" in out
    assert "  deal: 5/5 transitions, 2/2 rule refusals" in out
    assert "  onboarding: 7/7 transitions, 1/1 rule refusals" in out
    assert "  complaint: 8/8 transitions, 0/0 rule refusals" in out
    assert "  receivable: 4/4 transitions, 0/0 rule refusals" in out
    assert "missing" not in out


def test_the_timeline_reads_like_the_story(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(SCENARIOS / "sales_order.yaml"), "-k", "prepaid order")
    assert code == 0
    assert out.splitlines()[0] == (
        "sales_order: a prepaid order goes from draft to paid  "
        f"[{SCENARIOS / 'sales_order.yaml'}:16]"
    )
    expected = [
        "  Mon 2026-01-05 09:00  alice    start SO-1001: draft (owner alice)",
        "  Mon 2026-01-05 09:30  alice    revise SO-1001: stays draft",
        "  Mon 2026-01-05 11:30  wang     ship SO-1001: REFUSED by prepayment, still approved",
        "                                   prepayment: Hangzhou Tea Co. pays in advance and the "
        "prepayment of 38,500.50 has not been received",
        "  Tue 2026-01-06 10:15  frank    confirm_prepayment SO-1001: stays approved",
        " " * 35 + "-> alice [inbox]: Prepayment for order SO-1001 received",
        " " * 35 + "-> grace [inbox]: Prepayment for order SO-1001 received",
        "  Tue 2026-01-20 16:00  fay      record_payment SO-1001: invoiced -> paid",
    ]
    for line in expected:
        assert line in out.splitlines(), line
    assert re.search(r"^  PASS \(8 steps, \d+\.\d\d s\)$", out, re.MULTILINE)
    assert "1 scenarios in 1 files: 1 passed, 0 failed" in out


def test_timers_show_in_the_timeline(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(SCENARIOS / "complaint.yaml"), "-k", "misses its deadline")
    assert code == 0
    assert "  Mon 2026-01-19 13:00  clock    tick: 1 fired, 2 delivered" in out
    assert "timer:reply_deadline on CP-4002: escalate, accepted -> accepted" in out
    assert "-> quinn [inbox]: Complaint CP-4002 from Ningbo Paper is overdue (delivery)" in out


def test_a_broken_scenario_fails_with_expected_actual_and_line(
    capsys: pytest.CaptureFixture[str], broken: tuple[Path, int, int], tmp_path: Path
) -> None:
    path, line, column = broken
    junit = tmp_path / "reports" / "simulate.xml"
    code, out, _ = run(capsys, str(path), "--workflows", str(WORKFLOWS), "--junit", str(junit))
    assert code == 1
    location = f"{path}:{line}:{column}"
    mismatch = f"{location}: expect.state: expected 'paid', got 'invoiced'"
    assert f"  FAILED {mismatch}" in out
    assert "failed scenarios:" in out
    assert f"    {mismatch}" in out
    assert (
        out.strip()
        .splitlines()[-1]
        .startswith("simulate: 5 scenarios in 1 files: 4 passed, 1 failed")
    )

    # The JUnit report: the structure CI systems read.
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("5", "1", "0")
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == str(path)
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("5", "1", "0")
    assert suite.get("skipped") == "0"
    assert float(suite.get("time") or "x") >= 0
    assert suite.get("timestamp") and suite.get("hostname")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props == {"file": str(path)}
    cases = suite.findall("testcase")
    assert len(cases) == 5
    for case in cases:
        assert case.get("classname", "").endswith("scenarios.sales_order")
        assert float(case.get("time") or "x") >= 0
        assert case.find("system-out") is not None
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["a prepaid order goes from draft to paid"]
    failure = failed[0].find("failure")
    assert failure is not None
    assert failure.get("type") == "ExpectationFailed"
    message = failure.get("message") or ""
    assert "failed at step 7 (fire invoice on SO-1001 as frank" in message
    assert mismatch in message
    assert "Wed 2026-01-07 09:30  frank    invoice SO-1001: shipped -> invoiced" in (
        failure.text or ""
    )
    # Only the attributes the common JUnit schema allows on a test case.
    assert {k for c in cases for k in c.attrib} == {"name", "classname", "time"}


def test_the_junit_report_reads_with_a_junit_library(
    capsys: pytest.CaptureFixture[str], broken: tuple[Path, int, int], tmp_path: Path
) -> None:
    path, line, column = broken
    step_line = next(
        i
        for i, text in enumerate(path.read_text().splitlines(), 1)
        if "at: 2026-01-07T09:30" in text
    )
    junit = tmp_path / "simulate.xml"
    code, _, _ = run(capsys, str(path), "--workflows", str(WORKFLOWS), "--junit", str(junit))
    assert code == 1

    xml = JUnitXml.fromfile(str(junit))
    assert isinstance(xml, JUnitXml)  # a <testsuites> document
    assert (xml.tests, xml.failures, xml.errors, xml.skipped) == (5, 1, 0, 0)
    suites = list(xml)
    assert len(suites) == 1 and isinstance(suites[0], TestSuite)
    suite = suites[0]
    assert suite.name == str(path)
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (5, 1, 0, 0)
    assert {p.name: p.value for p in suite.properties()} == {"file": str(path)}
    assert suite.hostname and suite.timestamp

    cases = list(suite)
    assert len(cases) == 5
    assert all(c.classname.endswith("scenarios.sales_order") for c in cases)
    assert all(c.time >= 0 and c.system_out for c in cases)
    failed = [c for c in cases if not c.is_passed]
    assert [c.name for c in failed] == ["a prepaid order goes from draft to paid"]
    assert failed[0].is_failure and not failed[0].is_error
    (result,) = failed[0].result
    assert isinstance(result, Failure)
    assert result.type == "ExpectationFailed"
    head, *mismatches = (result.message or "").splitlines()
    assert head == (
        "scenario 'a prepaid order goes from draft to paid' failed at step 7 "
        f"(fire invoice on SO-1001 as frank, line {step_line})"
    )
    assert mismatches == [f"{path}:{line}:{column}: expect.state: expected 'paid', got 'invoiced'"]
    assert "FAILED " + mismatches[0] in (result.text or "")
    assert "  FAIL (7 steps, " in (failed[0].system_out or "")

    # The counts written agree with those the reader works out from the cases.
    def counts() -> list[tuple[int, int, int, int]]:
        return [(x.tests, x.failures, x.errors, x.skipped) for x in (xml, suite)]

    written = counts()
    xml.update_statistics()
    assert counts() == written


def test_a_file_with_mistakes_is_reported_and_is_an_error_in_junit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "scenarios" / "deal.yaml"
    target.parent.mkdir()
    target.write_text(
        "workflow: deal\nscenarios:\n  - name: x\n    steps:\n      - fire: {trigger: qualfy}\n"
    )
    junit = tmp_path / "j.xml"
    code, out, err = run(capsys, str(target), "--workflows", str(WORKFLOWS), "--junit", str(junit))
    assert code == 1
    assert f"{target}:5:25: scenarios[0].steps[0].fire.trigger: unknown trigger 'qualfy'" in err
    assert "(did you mean 'qualify'?)" in err
    assert f"{target}:5:15: scenarios[0].steps[0].fire: fire needs 'as'" in err
    assert "0 scenarios in 1 files: 0 passed, 0 failed, " in out
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("errors")) == ("1", "1")
    error = root.find("testsuite/testcase/error")
    assert error is not None
    assert f"{target}:5:25:" in (error.get("message") or "")


def test_usage_errors_exit_with_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, str(tmp_path / "nowhere"))
    assert code == 2
    assert "no such file or directory" in err
    code, _, err = run(capsys, str(tmp_path))
    assert code == 2
    assert "no scenarios found" in err
    code, _, err = run(capsys, "--workflows", str(tmp_path / "nowhere"))
    assert code == 2
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--coverage=everything"])
    assert info.value.code == 2


def test_strict_coverage_fails_when_something_is_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    deal = str(SCENARIOS / "deal.yaml")
    code, out, _ = run(capsys, deal, "--coverage", "-q", "-k", "locked")
    assert code == 0  # coverage alone only reports
    assert "  deal: 1/5 transitions, 1/2 rule refusals (1 scenarios): 5 missing" in out
    assert "      missing: transition lose (lead, opportunity -> lost)" in out
    assert "      missing: refusal by rule purchase_recorded" in out
    # Workflows without any scenario are listed too: nothing of them is covered.
    assert "  receivable: 0/4 transitions, 0/0 rule refusals (0 scenarios): 4 missing" in out
    code, out, err = run(capsys, deal, "--coverage=strict", "-q", "-k", "locked")
    assert code == 1
    assert "coverage is incomplete" in err
    code, _, err = run(capsys, deal, "-k", "no such scenario")
    assert code == 2
    assert "no scenarios found" in err


def test_quiet_and_name_filter(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-q", "-k", "BANKRUPT")
    assert code == 0
    assert out.strip().splitlines() == [
        out.strip().splitlines()[-1]
    ]  # only the summary for passing scenarios
    assert "1 scenarios in 5 files: 1 passed" in out


def test_progress_bar_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-q", "--progress", str(SCENARIOS / "deal.yaml"))
    assert code == 0
    assert "[##########....................] 1/3  a trade-fair lead" in err
    assert "[##############################] 3/3  a customer locked" in err


def test_a_shared_sqlite_store_leaves_every_instance_for_later(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'simulate.db'}"
    code, out, _ = run(capsys, "-q", "--store", url)
    assert code == 0, out
    with Engine.from_path(WORKFLOWS, store=url, load_entry_points=False) as engine:
        keys = {i.key for i in engine.instances()}
        assert {"SO-1001", "D-2001", "C-3001", "CP-4002", "AR-5003"} <= keys
        assert engine.get("SO-1001").state == "paid"
        assert engine.verify("CP-4002").ok
        assert all(not engine.timers(key=k) for k in keys)


def test_the_installed_command(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(Path(__file__).parent / "fixtures" / "client_repo", copy)
    command = [str(Path(sys.executable).parent / "crmflow"), "simulate", "--coverage=strict"]
    done = subprocess.run(command, cwd=copy, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "quote: 2/2 transitions, 2/2 rule refusals (3 scenarios): complete" in done.stdout
    assert "3 scenarios in 1 files: 3 passed, 0 failed" in done.stdout


def test_explore_refuses_scenario_options_it_would_ignore(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "--explore", "2", "--junit", str(tmp_path / "x.xml"), "-k", "a")
    assert code == 2
    assert "--explore does not take --junit, -k" in err
    assert not (tmp_path / "x.xml").exists()


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["simulate", "--explore", "-1"], "-1 is less than 0"),
        (["forecast", "workflows/forecasts/deal.forecast.yaml", "--leads", "0"], "0 is less"),
        (["forecast", "workflows/forecasts/deal.forecast.yaml", "--leads", "many"], "whole"),
    ],
)
def test_bad_counts_are_usage_errors_not_tracebacks(
    capsys: pytest.CaptureFixture[str], args: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_a_forecast_file_finds_the_workflows_above_its_forecasts_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = tmp_path / "client" / "workflows"
    (client / "forecasts").mkdir(parents=True)
    text = (
        (ROOT / "workflows" / "deal.yaml").read_text().replace("workflow: deal", "workflow: deal2")
    )
    (client / "deal2.yaml").write_text(text)
    spec = (ROOT / "workflows" / "forecasts" / "deal.forecast.yaml").read_text()
    (client / "forecasts" / "d.forecast.yaml").write_text(
        spec.replace("workflow: deal", "workflow: deal2")
    )
    monkeypatch.chdir(tmp_path)  # no workflows/ here: the file's location must decide
    assert main(["forecast", str(client / "forecasts" / "d.forecast.yaml"), "--leads", "50"]) == 0
    assert "deal2" in capsys.readouterr().out
