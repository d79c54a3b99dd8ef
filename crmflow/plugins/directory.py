"""Built-in plugins behind notifications: the org directory and the instances-by-state report.

:class:`OrgDirectoryPlugin` answers ``crmflow_resolve_recipients`` from a YAML org directory
(``Engine(org="org.yaml")`` registers one). The module-level
``crmflow_render_report`` implements the built-in ``instances_by_state`` report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from crmflow.plugins.hookspecs import hookimpl
from crmflow.plugins.org_directory import OrgDirectory, Recipient

__all__ = ["OrgDirectoryPlugin", "crmflow_render_report"]


class OrgDirectoryPlugin:
    """Resolves recipient specs (``owner``, ``manager``, ``role:X`` ...) through a directory."""

    def __init__(self, directory: OrgDirectory) -> None:
        self.directory = directory

    def __repr__(self) -> str:
        """Name the directory it reads."""
        return f"OrgDirectoryPlugin({self.directory.name!r})"

    @hookimpl
    def crmflow_resolve_recipients(
        self, spec: str, owner: str | None, at: datetime, instance_key: str | None
    ) -> Sequence[Recipient] | None:
        """Resolve ``spec`` with delegations in effect at ``at``."""
        return self.directory.resolve(spec, owner=owner, at=at)


@hookimpl
def crmflow_render_report(
    report: str, params: Mapping[str, Any], engine: Any, user: str, at: datetime
) -> tuple[str, str] | None:
    """The ``instances_by_state`` report: a workflow's instances, counted and listed by state."""
    if report != "instances_by_state":
        return None
    workflow = str(params.get("workflow", ""))
    instances = engine.instances(workflow or None)
    by_state: dict[str, list[str]] = {}
    for instance in instances:
        by_state.setdefault(instance.state, []).append(instance.key)
    title = workflow or "all workflows"
    subject = f"{title}: {len(instances)} instances by state ({at:%Y-%m-%d %H:%M})"
    limit = int(params.get("list", 10))
    lines = []
    for state, keys in sorted(by_state.items()):
        shown = ", ".join(keys[:limit]) + (" ..." if len(keys) > limit else "")
        lines.append(f"{state}: {len(keys)} ({shown})")
    return subject, "\n".join(lines) or "no instances"
