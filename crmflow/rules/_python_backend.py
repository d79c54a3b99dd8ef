"""The pure-Python back end: the reference evaluator over the IR, exact Decimal arithmetic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._backend import PreparedGroup, RulesBackendError
from ._rule import CompiledRule, Verdict, decide

__all__ = ["PythonBackend"]


class PythonBackend:
    """Evaluates rules by walking the IR; stateless, so safe to share between threads."""

    name = "python"

    def __init__(self, *, namespace: str = "crmflow") -> None:
        self.namespace = namespace
        self._closed = False

    def prepare(self, group: str, rules: Sequence[CompiledRule]) -> PreparedGroup:
        """Return a handle for ``rules``; nothing needs registering."""
        if self._closed:
            raise RulesBackendError("the rules back end is closed")
        return PreparedGroup(name=group, rules=tuple(rules), owner=self)

    def evaluate(self, group: PreparedGroup, facts: Mapping[str, Any]) -> list[Verdict]:
        """Return one verdict per rule, in order."""
        if group.owner is not self:
            raise RulesBackendError(f"group {group.name!r} was prepared by another back end")
        return [decide(rule, facts) for rule in group.rules]

    def close(self) -> None:
        """Mark the back end closed (it holds no resources)."""
        self._closed = True
