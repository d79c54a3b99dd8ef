from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crmflow.engine._diagram import graphviz_dot, mermaid, render_svg
from crmflow.engine._loader import load_workflow_file
from crmflow.engine._model import WorkflowDef

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def deal() -> WorkflowDef:
    return load_workflow_file(FIXTURES / "deal.yaml")


@pytest.fixture
def sales_order() -> WorkflowDef:
    return load_workflow_file(FIXTURES / "sales_order.yaml")


def test_mermaid_flat_workflow(sales_order: WorkflowDef) -> None:
    text = mermaid(sales_order)
    lines = text.splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert "    [*] --> s_draft" in lines
    assert "    s_paid --> [*]" in lines
    assert "    s_cancelled --> [*]" in lines
    assert "    s_draft --> s_approved : approve [sales_manager] (credit_limit)" in lines
    assert "    s_approved --> s_cancelled : cancel [sales_rep, sales_manager]" in lines
    assert "classDef" not in text


def test_mermaid_nested_states_are_composites(deal: WorkflowDef) -> None:
    lines = mermaid(deal).splitlines()
    start = lines.index("    state s_opportunity {")
    end = lines.index("    }", start)
    inside = lines[start + 1 : end]
    assert '        state "negotiation" as s_opportunity_X_negotiation' in inside
    assert "        [*] --> s_opportunity_X_initial_contact" in inside
    assert "    s_opportunity --> s_lost : lose" in lines


def test_mermaid_highlights_current_and_path(deal: WorkflowDef) -> None:
    text = mermaid(deal, current="opportunity.negotiation", path=["lead", "opportunity"])
    lines = text.splitlines()
    assert "    class s_opportunity_X_negotiation current" in lines
    assert "    class s_lead visited" in lines
    assert any(line.startswith("    classDef current ") for line in lines)


def test_mermaid_refuses_unknown_current(deal: WorkflowDef) -> None:
    with pytest.raises(KeyError, match="nowhere"):
        mermaid(deal, current="nowhere")


def test_mermaid_ids_never_collide_with_keywords() -> None:
    from crmflow.engine._loader import load_workflow_text

    defn = load_workflow_text(
        "workflow: w\nstates: [{name: state, initial: true}, {name: end, final: true}]\n"
        "transitions: [{trigger: go, from: state, to: end}]\n"
    )
    text = mermaid(defn)
    assert "s_state --> s_end : go" in text


def test_graphviz_dot(deal: WorkflowDef) -> None:
    dot = graphviz_dot(deal)
    assert dot.startswith('digraph "deal" {')
    assert "subgraph cluster_s_opportunity {" in dot
    assert "__start -> s_lead;" in dot
    assert 's_won [label="won", shape=doublecircle];' in dot
    assert (
        's_lead -> s_opportunity_X_initial_contact [label="qualify [sales_rep]", '
        "lhead=cluster_s_opportunity];" in dot
    )
    assert "ltail=cluster_s_opportunity" in dot
    assert dot.count("{") == dot.count("}")


def test_render_svg(deal: WorkflowDef) -> None:
    svg = render_svg(deal)
    if shutil.which("dot") is None:
        assert svg is None
    else:
        assert svg is not None
        assert b"<svg" in svg


def test_an_instance_path_is_highlighted_in_dot() -> None:
    from decimal import Decimal

    from crmflow import Actor, Engine, load_definitions
    from crmflow.engine._diagram import graphviz_dot, history_path, mermaid

    workflows = Path(__file__).resolve().parent.parent / "workflows"
    defs = {d.name: d for d in load_definitions(workflows)}
    deal = defs["deal"]
    with Engine([deal], load_entry_points=False) as engine:
        rep = Actor("alice", roles={"sales_rep"})
        engine.start("deal", "D-1", actor=rep, data={"company": "ACME"})
        engine.fire("D-1", "qualify", actor=rep, data={"expected_value": Decimal("10")})
        engine.fire("D-1", "confirm_intent", actor=rep)
        entries = [
            (h.from_state, h.to_state, h.trigger)
            for h in engine.history("D-1")
            if h.kind in ("start", "transition", "override")
        ]
        current = engine.get("D-1").state
    path, taken = history_path(entries)
    assert path == ["lead", "opportunity.initial_contact", "opportunity.intent_confirmed"]
    assert ("lead", "opportunity.initial_contact", "qualify") in taken
    dot = graphviz_dot(deal, current=current, path=path, taken=taken)
    node = "s_opportunity_X_intent_confirmed"
    assert f'{node} [label="intent_confirmed", style="rounded,filled,bold"' in dot
    assert 's_lead [label="lead", style="rounded,filled"' in dot
    bold = [line for line in dot.splitlines() if "penwidth" in line]
    assert len(bold) == 2  # qualify and confirm_intent, not the untaken ones
    assert any('label="qualify' in line for line in bold)
    text = mermaid(deal, current=current, path=path)
    assert f"class {node} current" in text
    assert "class s_lead visited" in text
