"""Whole-definition checks for the command line: load, compile rules, lint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from crmflow._errors import DefinitionError
from crmflow.engine._compile import compile_workflow
from crmflow.engine._lint import LintIssue, lint
from crmflow.engine._loader import load_workflow_file
from crmflow.engine._model import WorkflowDef
from crmflow.rules import make_backend

__all__ = ["CheckReport", "check_path", "workflow_files"]


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


def workflow_files(path: str | Path) -> list[Path]:
    """The workflow files under ``path`` (a file or a directory), sorted."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.exists():
        raise DefinitionError("no such file or directory", source=str(root))
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix in {".yaml", ".yml"}
        and not p.name.endswith((".scenario.yaml", ".scenario.yml"))
    )


def check_path(path: str | Path, *, run_lint: bool = False) -> CheckReport:
    """Load and fully compile every workflow under ``path``, collecting every file's errors."""
    report = CheckReport()
    backend = make_backend("python", namespace="crmflow_check")
    seen: dict[tuple[str, int], str] = {}
    try:
        for file in workflow_files(path):
            try:
                defn = load_workflow_file(file)
                compile_workflow(defn, backend, {})
            except DefinitionError as exc:
                report.errors.append(exc)
                continue
            ident = (defn.name, defn.version)
            if ident in seen:
                report.errors.append(
                    DefinitionError(
                        f"workflow {defn.name!r} version {defn.version} is also defined in "
                        f"{seen[ident]}",
                        source=str(file),
                        line=defn.pos.line,
                        column=defn.pos.column,
                        path="workflow",
                        hint="give the newer file a higher version",
                    )
                )
                continue
            seen[ident] = str(file)
            report.definitions.append(defn)
            if run_lint:
                report.issues.extend(lint(defn))
    finally:
        backend.close()
    return report
