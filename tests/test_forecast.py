"""Monte Carlo pipeline forecast: the file format, the simulation on the engine, the output."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from crmflow import CrmflowError, DefinitionError, load_workflow_file
from crmflow.engine._forecast import (
    Duration,
    forecast,
    format_forecast,
    load_forecast_file,
    load_forecast_text,
    plot_forecast,
)

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
SHIPPED_FORECAST = WORKFLOWS / "forecasts" / "deal.forecast.yaml"


@pytest.fixture(scope="module")
def deal() -> Any:
    return load_workflow_file(WORKFLOWS / "deal.yaml")


@pytest.fixture(scope="module")
def sales_order() -> Any:
    return load_workflow_file(WORKFLOWS / "sales_order.yaml")


# Every lead takes the same path with fixed durations: the outcome is exact.
STRAIGHT = """\
workflow: deal
leads: 40
start: 2026-03-02
seed: 1
data: {company: Straight Ltd}
from:
  lead:
    qualify: {p: 1, after: 2d}
  opportunity.initial_contact:
    confirm_intent: {p: 1.0, after: 3d}
  opportunity.intent_confirmed:
    negotiate: {p: 1, after: 1d 12h}
  opportunity.negotiation:
    first_purchase: {p: 1, after: 4d, data: {first_order_no: SO-1}}
"""

FUNNEL = """\
workflow: deal
leads: 1000
seed: 7
from:
  lead:
    qualify: {p: 0.6, after: 3d..10d}
    lose: {p: 0.4, after: 0d..10d, data: {lost_reason: not qualified}}
  opportunity.initial_contact:
    confirm_intent: {p: 0.5, after: 2d}
    lose: {p: 0.5, after: 2d}
  opportunity.intent_confirmed:
    negotiate: {p: 1, after: 1d..3d..10d}
  opportunity.negotiation:
    first_purchase: {p: 0.75, after: 5d, data: {first_order_no: SO-1}}
    lose: {p: 0.25, after: 5d}
"""


def _spec(text: str, deal: Any, source: str = "deal.forecast.yaml") -> Any:
    return load_forecast_text(text, source, workflows=[deal])


# -- the file format -----------------------------------------------------------------------


def _error(text: str, deal: Any) -> DefinitionError:
    with pytest.raises(DefinitionError) as caught:
        _spec(text, deal)
    return caught.value


@pytest.mark.parametrize(
    ("old", "new", "line", "column", "message", "suggestions"),
    [
        ("seed: 7", "sead: 7", 3, 1, "unknown key 'sead'", ("seed",)),
        ("workflow: deal", "workflow: dael", 1, 11, "unknown workflow 'dael'", ("deal",)),
        (
            "  opportunity.initial_contact:",
            "  initial_contact:",
            8,
            3,
            "unknown state 'initial_contact'",
            ("opportunity.initial_contact",),
        ),
        (
            "    confirm_intent: {p: 0.5",
            "    confirm_intnt: {p: 0.5",
            9,
            5,
            "unknown trigger 'confirm_intnt'",
            ("confirm_intent",),
        ),
        (
            "    confirm_intent: {p: 0.5",
            "    negotiate: {p: 0.5",
            9,
            5,
            "trigger 'negotiate' does not fire from 'opportunity.initial_contact'",
            ("confirm_intent", "lose"),
        ),
        (
            "    qualify: {p: 0.6, after: 3d..10d}",
            "    qualify: {p: 0.6, aftr: 3d..10d}",
            6,
            23,
            "unknown key 'aftr'",
            ("after",),
        ),
        (
            "first_order_no: SO-1",
            "first_order: SO-1",
            14,
            49,
            "unknown field 'first_order'",
            ("first_order_no",),
        ),
    ],
)
def test_errors_point_at_the_spot_with_suggestions(
    deal: Any,
    old: str,
    new: str,
    line: int,
    column: int,
    message: str,
    suggestions: tuple[str, ...],
) -> None:
    assert old in FUNNEL
    error = _error(FUNNEL.replace(old, new, 1), deal)
    assert (error.source, error.line, error.column) == ("deal.forecast.yaml", line, column)
    assert message in error.reason
    assert error.suggestions[: len(suggestions)] == suggestions
    assert str(error).startswith(f"deal.forecast.yaml:{line}:{column}: ")


def test_probabilities_must_add_up_to_one(deal: Any) -> None:
    error = _error(FUNNEL.replace("p: 0.4, after: 0d..10d", "p: 0.3, after: 0d..10d"), deal)
    assert error.reason == "the probabilities from 'lead' add up to 0.9, not 1"
    assert (error.line, error.column, error.path) == (5, 3, "from.lead")
    # Exact decimal arithmetic: 0.1 + 0.2 + 0.7 is 1, not 0.9999999999999999.
    text = FUNNEL.replace(
        "    qualify: {p: 0.6, after: 3d..10d}\n",
        "    qualify: {p: 0.1, after: 3d..10d}\n    lose: {p: 0.2, after: 1d}\n",
    ).replace("lose: {p: 0.4, after: 0d..10d, data: {lost_reason: not qualified}}", "")
    text = text.replace("    lose: {p: 0.2, after: 1d}\n", "    lose: {p: 0.9, after: 1d}\n")
    assert _spec(text, deal).branches["lead"][1].p == 0.9


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("p: 0.6,", "p: 1.6,", "p must be a probability between 0 and 1"),
        ("p: 0.6,", "p: often,", "p must be a probability between 0 and 1"),
        ("after: 3d..10d", "after: 10d..3d", "the parts must not decrease"),
        ("after: 3d..10d", "after: 3 days", "bad duration '3 days'"),
        ("after: 3d..10d", "after: 1d..2d..3d..4d", "bad duration"),
        ("after: 2d}\n    lose", "after: 2d, data: {company: x}}\n    lose", "does not write"),
        ("first_order_no: SO-1", "first_order_no: 12", "expected str, got int"),
        ("seed: 7", "seed: -1", "seed must be a whole number of at least 0"),
        ("leads: 1000", "leads: 0", "leads must be a whole number of at least 1"),
        ("seed: 7", "seed: 7\nstart: someday", "is not a date"),
        ("seed: 7", "seed: 7\nroles: [sales_repp]", "unknown role 'sales_repp'"),
        ("seed: 7", "seed: 7\nroles: [sales_manager]\nversion: 2", "not 2"),
        ("seed: 7", "seed: 7\nfacts: {customr: {}}", "unknown fact namespace 'customr'"),
        ("seed: 7", "seed: 7\nfacts: {customer: {lock: true}}", "unknown fact customer.lock"),
        ("seed: 7", "seed: 7\ndata: {compny: X}", "unknown field 'compny'"),
        ("seed: 7", "seed: 7\nhorizon: 10d..20d", "not a range"),
        ("  opportunity.initial_contact:", "  opportunity:", "has sub-states"),
        ("workflow: deal", "workflow: deal\nfrom_: {}", "unknown key 'from_'"),
    ],
)
def test_bad_values_are_refused(deal: Any, old: str, new: str, message: str) -> None:
    assert old in FUNNEL
    error = _error(FUNNEL.replace(old, new, 1), deal)
    assert message in str(error)
    assert error.line > 0


def test_every_state_the_branches_reach_needs_branches(deal: Any) -> None:
    text = FUNNEL.replace(
        "  opportunity.intent_confirmed:\n    negotiate: {p: 1, after: 1d..3d..10d}\n", ""
    )
    error = _error(text, deal)
    assert "no branches from 'opportunity.intent_confirmed'" in error.reason
    assert "'confirm_intent' from 'opportunity.initial_contact' leads there" in error.reason
    # A branch that is never taken (p: 0) leads nowhere.
    text = text.replace("confirm_intent: {p: 0.5", "confirm_intent: {p: 0").replace(
        "    lose: {p: 0.5, after: 2d}", "    lose: {p: 1, after: 2d}"
    )
    assert "opportunity.intent_confirmed" not in _spec(text, deal).branches


def test_final_states_have_no_branches(deal: Any) -> None:
    error = _error(FUNNEL + "  lost:\n    lose: {p: 1, after: 1d}\n", deal)
    assert "'lost' is final" in error.reason


def test_roles_must_allow_the_triggers(sales_order: Any) -> None:
    text = """\
workflow: sales_order
roles: [sales_rep]
from:
  draft: {approve: {p: 1, after: 1d}}
  approved: {ship: {p: 1, after: 1d}}
"""
    with pytest.raises(DefinitionError, match="'ship' needs one of the roles warehouse"):
        load_forecast_text(text, workflows=[sales_order])


def test_values_are_typed(deal: Any) -> None:
    spec = _spec(FUNNEL.replace("seed: 7", "seed: 7\ndata: {expected_value: 1.10}"), deal)
    assert spec.data == {"expected_value": Decimal("1.1")}
    assert spec.start == datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    branch = spec.branches["opportunity.negotiation"][0]
    assert (branch.trigger, branch.p, branch.data) == (
        "first_purchase",
        0.75,
        {"first_order_no": "SO-1"},
    )
    spec = _spec(STRAIGHT.replace("start: 2026-03-02", "start: 2026-03-02T14:30:00+08:00"), deal)
    assert spec.start == datetime(2026, 3, 2, 6, 30, tzinfo=UTC)


def test_durations() -> None:
    fixed = Duration.parse("1d 12h")
    assert (fixed.low, fixed.high, fixed.mode) == (timedelta(hours=36),) * 2 + (None,)
    uniform = Duration.parse("2d..4d")
    assert uniform.mean == timedelta(days=3)
    triangular = Duration.parse("1d..2d..6d")
    assert triangular.mode == timedelta(days=2)
    assert triangular.mean == timedelta(days=3)
    import random

    rng = random.Random(1)
    draws = [triangular.sample(rng) for _ in range(200)]
    assert all(timedelta(days=1) <= d <= timedelta(days=6) for d in draws)
    with pytest.raises(ValueError, match="must not decrease"):
        Duration.parse("3d..1d")


def test_workflows_can_be_given_as_a_path(tmp_path: Path) -> None:
    path = tmp_path / "deal.forecast.yaml"
    path.write_text(STRAIGHT, encoding="utf-8")
    spec = load_forecast_file(path, workflows=WORKFLOWS / "deal.yaml")
    assert spec.workflow == "deal"
    assert spec.source == str(path)


# -- the simulation ------------------------------------------------------------------------


def test_a_straight_pipeline_is_exact(deal: Any) -> None:
    report = forecast(deal, _spec(STRAIGHT, deal))
    assert report.leads == 40
    assert {row.state: row.reached for row in report.funnel} == {
        "lead": 40,
        "opportunity": 40,
        "opportunity.initial_contact": 40,
        "opportunity.intent_confirmed": 40,
        "opportunity.negotiation": 40,
        "customer": 40,
        "lost": 0,
    }
    assert report.outcomes == {"customer": 40, "lost": 0}
    assert report.stalls == ()
    stats = report.time_to_close["customer"]
    ten_and_a_half = timedelta(days=10, hours=12)
    assert stats.count == 40
    assert stats.mean == stats.p10 == stats.p50 == stats.p90 == ten_and_a_half
    assert stats.minimum == stats.maximum == ten_and_a_half
    assert "lost" not in report.time_to_close
    assert all(c.rate == 1.0 and c.expected == 1.0 for c in report.conversions)


def test_arrivals_spread_the_starts_not_the_time_to_close(deal: Any) -> None:
    spec = _spec(STRAIGHT.replace("seed: 1", "seed: 1\narrivals: 1d"), deal)
    report = forecast(deal, spec)
    assert report.time_to_close["customer"].p90 == timedelta(days=10, hours=12)


def test_a_horizon_leaves_leads_open(deal: Any) -> None:
    report = forecast(deal, _spec(STRAIGHT.replace("seed: 1", "seed: 1\nhorizon: 5d"), deal))
    # qualify at 2d, confirm_intent at 5d (on the horizon), negotiate would be at 6.5d.
    assert report.outcomes == {"customer": 0, "lost": 0, "open": 40}
    assert report.open_states == {"opportunity.intent_confirmed": 40}
    assert report.time_to_close == {}
    assert "open in opportunity.intent_confirmed: 40" in format_forecast(report)


def test_a_funnel_matches_its_probabilities(deal: Any) -> None:
    report = forecast(deal, _spec(FUNNEL, deal))
    reached = {row.state: row.reached for row in report.funnel}
    assert reached["lead"] == 1000
    # 1000 leads: within a few standard deviations of the expectation.
    assert abs(reached["opportunity"] - 600) < 60
    assert abs(reached["opportunity.intent_confirmed"] - 300) < 60
    assert reached["opportunity.negotiation"] == reached["opportunity.intent_confirmed"]
    assert abs(reached["customer"] - 225) < 50
    assert reached["customer"] + reached["lost"] == 1000
    assert report.outcomes["customer"] == reached["customer"]
    for conversion in report.conversions:
        assert abs(conversion.rate - conversion.expected) < 0.1
    # Fixed durations give exact times: qualify 3..10d, 2d, 1..10d, 5d.
    customer = report.time_to_close["customer"]
    assert timedelta(days=11) <= customer.minimum <= customer.p10 <= customer.p50
    assert customer.p50 <= customer.p90 <= customer.maximum <= timedelta(days=27)
    lost = report.time_to_close["lost"]
    assert lost.minimum >= timedelta(0)
    assert lost.p10 <= lost.p50 <= lost.p90
    assert report.days_to_close["customer"] == tuple(sorted(report.days_to_close["customer"]))


def test_percentiles_of_a_uniform_duration(deal: Any) -> None:
    text = """\
workflow: deal
leads: 2000
seed: 3
from:
  lead: {lose: {p: 1, after: 0d..10d}}
"""
    stats = forecast(deal, _spec(text, deal)).time_to_close["lost"]
    days = [s.total_seconds() / 86400 for s in (stats.p10, stats.p50, stats.p90, stats.mean)]
    for value, expected in zip(days, (1, 5, 9, 5), strict=True):
        assert abs(value - expected) < 0.5


def test_same_seed_same_forecast(deal: Any) -> None:
    spec = _spec(FUNNEL, deal)
    first = forecast(deal, spec, leads=300)
    assert first == forecast(deal, spec, leads=300)
    assert first.leads == 300
    other = forecast(deal, spec, leads=300, seed=8)
    assert other.seed == 8
    assert other != first


def test_rules_refusing_leave_leads_stalled(deal: Any) -> None:
    # Without the order number the purchase rule refuses: the leads stall in negotiation.
    text = STRAIGHT.replace(", data: {first_order_no: SO-1}", "")
    report = forecast(deal, _spec(text, deal))
    assert report.outcomes == {"customer": 0, "lost": 0, "stalled": 40}
    [stall] = report.stalls
    assert (stall.state, stall.trigger, stall.count) == (
        "opportunity.negotiation",
        "first_purchase",
        40,
    )
    assert stall.reason == "purchase_recorded: Straight Ltd has no first order on record yet"
    text = format_forecast(report)
    assert "stalled in opportunity.negotiation (first_purchase refused)" in text


SALES_ORDER = """\
workflow: sales_order
leads: 50
roles: [sales_rep, sales_manager, warehouse, finance]
data: {customer_id: C-1, amount: 900}
facts:
  customer: {name: Acme, credit_limit: 1000, open_balance: 500, payment_terms: net30}
from:
  draft:
    revise: {p: 0.5, after: 1d}
    approve: {p: 0.5, after: 1d}
  approved: {ship: {p: 1, after: 2d}}
  shipped: {invoice: {p: 1, after: 1d, data: {invoice_no: INV-1}}}
  invoiced: {record_payment: {p: 1, after: 30d}}
"""


def test_facts_reach_the_rules(sales_order: Any) -> None:
    spec = load_forecast_text(SALES_ORDER, workflows=[sales_order])
    # 900 + 500 is over the limit of 1000: approval needs an override, which a forecast
    # never gives, so every order stalls in draft.
    report = forecast(sales_order, spec)
    assert report.outcomes == {"paid": 0, "cancelled": 0, "stalled": 50}
    assert report.stalls[0].reason.startswith("credit_limit: Credit limit of Acme exceeded")
    # Within the limit, every order is paid; 'revise' keeps an order in draft a day longer.
    spec = load_forecast_text(
        SALES_ORDER.replace("open_balance: 500", "open_balance: 0"), workflows=[sales_order]
    )
    report = forecast(sales_order, spec)
    assert report.outcomes == {"paid": 50, "cancelled": 0}
    assert report.time_to_close["paid"].minimum == timedelta(days=34)
    revise = next(c for c in report.conversions if c.trigger == "revise")
    assert revise.taken > 0


def test_calls_the_engine_refuses_are_spec_errors(sales_order: Any) -> None:
    text = SALES_ORDER.replace(
        "facts:\n  customer: {name: Acme, credit_limit: 1000, open_balance: 500, "
        "payment_terms: net30}\n",
        "",
    )
    spec = load_forecast_text(text, "so.forecast.yaml", workflows=[sales_order])
    with pytest.raises(DefinitionError) as caught:
        forecast(sales_order, spec)
    error = caught.value
    assert "firing 'approve' from 'draft' failed" in error.reason
    assert "needs fact 'customer'" in error.reason
    assert (error.source, error.line, error.column) == ("so.forecast.yaml", 8, 5)


def test_the_spec_must_be_for_the_workflow(deal: Any, sales_order: Any) -> None:
    with pytest.raises(CrmflowError, match="for deal v1, not sales_order v1"):
        forecast(sales_order, _spec(STRAIGHT, deal))


# -- output --------------------------------------------------------------------------------


def test_text_output_shows_the_funnel_and_histograms(deal: Any) -> None:
    report = forecast(deal, _spec(FUNNEL, deal), leads=200)
    text = format_forecast(report)
    lines = text.splitlines()
    assert lines[0] == "Forecast for deal v1: 200 leads from 2026-01-05 09:00 UTC (seed 7)"
    assert "Funnel (leads reaching each state)" in lines
    lead = next(line for line in lines if line.strip().startswith("lead "))
    assert "200  100.0%" in lead
    assert any(line.startswith("    initial_contact") for line in lines)
    assert "Conversion by stage (of the leads that entered the state)" in lines
    assert any("lead -> qualify" in line and "(expected 60.0%)" in line for line in lines)
    assert "Time to close (days)" in lines
    assert any(line.startswith("Days to customer (") for line in lines)
    assert any("|" in line and "#" in line for line in lines)
    assert "Days to" not in format_forecast(report, histograms=False)


def test_plot_is_skipped_without_matplotlib(
    deal: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = forecast(deal, _spec(STRAIGHT, deal))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes the import fail
    target = tmp_path / "funnel.png"
    assert plot_forecast(report, target) is False
    assert not target.exists()
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        plot_forecast(report, tmp_path / "funnel.pdf")


def test_plot_draws_the_funnel_and_one_histogram_per_outcome(deal: Any, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = forecast(deal, _spec(FUNNEL, deal), leads=100)
    target = tmp_path / "funnel.svg"
    assert plot_forecast(report, target) is True
    svg = target.read_text(encoding="utf-8")
    assert svg.lstrip().startswith("<?xml")
    # The funnel and a time histogram for each of the two outcomes: three plots.
    assert sorted(set(re.findall(r'id="(axes_\d+)"', svg))) == ["axes_1", "axes_2", "axes_3"]


# -- the shipped forecast ------------------------------------------------------------------


def test_the_shipped_forecast_runs(deal: Any) -> None:
    spec = load_forecast_file(SHIPPED_FORECAST, workflows=[deal])
    assert spec.workflow == "deal"
    report = forecast(deal, spec, leads=300)
    assert report.stalls == ()
    assert report.outcomes["customer"] > 0
    assert report.outcomes["customer"] + report.outcomes["lost"] == 300
