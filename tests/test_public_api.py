"""The public surface: exported names are deliberate, and every hook is documented and used."""

from __future__ import annotations

import inspect
from pathlib import Path

import crmflow
from crmflow.plugins import hookspecs

ROOT = Path(__file__).resolve().parent.parent


def test_exported_names_are_frozen() -> None:
    assert sorted(crmflow.__all__) == [
        "Actor",
        "ChainReport",
        "Clock",
        "ConcurrencyConflict",
        "CostEntry",
        "CrmflowError",
        "DefinitionError",
        "Engine",
        "ExpressionError",
        "FireResult",
        "HistoryRecord",
        "Instance",
        "InstanceExists",
        "InvalidData",
        "LintIssue",
        "MissingFact",
        "Override",
        "OwnerLoad",
        "PermissionDenied",
        "PluginError",
        "Progress",
        "ReassignPreview",
        "Refusal",
        "StorageError",
        "SystemClock",
        "Task",
        "TaskOutcome",
        "TickReport",
        "TransitionContext",
        "TriggerOption",
        "UnknownInstance",
        "UnknownTask",
        "UnknownTrigger",
        "VirtualClock",
        "WorkflowDef",
        "__version__",
        "hookimpl",
        "lint",
        "load_definitions",
        "load_workflow_file",
        "load_workflow_text",
        "mermaid",
        "parse_duration",
    ]
    for name in crmflow.__all__:
        assert hasattr(crmflow, name), name


def test_every_public_name_has_a_docstring() -> None:
    for name in crmflow.__all__:
        obj = getattr(crmflow, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_every_error_derives_from_crmflow_error() -> None:
    for name in crmflow.__all__:
        obj = getattr(crmflow, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, crmflow.CrmflowError), name


HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("crmflow_"))


def test_every_hook_has_a_docstring_and_a_doc_entry() -> None:
    doc = (ROOT / "docs" / "plugins.md").read_text()
    assert HOOKS
    for name in HOOKS:
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"
        assert f"`{name}(" in doc, f"{name} is not documented in docs/plugins.md"


def test_every_hook_is_exercised_by_a_test() -> None:
    tests = "".join(
        p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_public_api.py"
    )
    for name in HOOKS:
        assert f"def {name}(" in tests, f"no test implements {name}"


def test_an_unknown_hook_name_is_refused() -> None:
    import pytest

    class Typo:
        @crmflow.hookimpl
        def crmflow_provide_fact(self, namespace):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(crmflow.PluginError, match="crmflow_provide_fact"):
        crmflow.Engine([], plugins=[Typo()], load_entry_points=False)
