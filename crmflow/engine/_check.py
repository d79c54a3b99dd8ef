"""Whole-definition checks for the command line: load, compile rules, lint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crmflow._errors import DefinitionError
from crmflow.engine._compile import compile_workflow
from crmflow.engine._lint import LintIssue, lint
from crmflow.engine._loader import collect_definitions
from crmflow.engine._model import WorkflowDef
from crmflow.rules import make_backend

__all__ = ["CheckReport", "check_path"]


@dataclass
class CheckReport:
    """What checking a file or directory found."""

    definitions: list[WorkflowDef] = field(default_factory=list)
    errors: list[DefinitionError] = field(default_factory=list)
    issues: list[LintIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No definition error and no lint error."""
        return not self.errors and not any(i.severity == "error" for i in self.issues)


def check_path(path: str | Path, *, run_lint: bool = False) -> CheckReport:
    """Load and fully compile every workflow under ``path``, collecting every file's errors."""
    loaded, errors = collect_definitions(path)
    report = CheckReport(errors=errors)
    # Compiling needs a back end only to prepare rule groups; the pure-Python one is cheap.
    backend = make_backend("python", namespace="crmflow_check")
    try:
        for defn in loaded:
            try:
                compile_workflow(defn, backend, {})
            except DefinitionError as exc:
                report.errors.append(exc)
                continue
            report.definitions.append(defn)
            if run_lint:
                report.issues.extend(lint(defn))
    finally:
        backend.close()
    return report
