"""Definitions (model, YAML loader, lint, diagrams) and the runtime engine."""

from crmflow.engine._diagram import graphviz_dot, mermaid, render_svg
from crmflow.engine._lint import LintIssue, lint
from crmflow.engine._loader import load_definitions, load_workflow_file, load_workflow_text
from crmflow.engine._model import (
    FieldDef,
    RuleDef,
    SourcePos,
    StateDef,
    TransitionDef,
    WorkflowDef,
)
from crmflow.engine._runtime import Engine

__all__ = [
    "Engine",
    "FieldDef",
    "LintIssue",
    "RuleDef",
    "SourcePos",
    "StateDef",
    "TransitionDef",
    "WorkflowDef",
    "graphviz_dot",
    "lint",
    "load_definitions",
    "load_workflow_file",
    "load_workflow_text",
    "mermaid",
    "render_svg",
]
