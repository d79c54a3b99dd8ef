"""The back-end protocol and the factory choosing between durable_rules and pure Python."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from crmflow._errors import CrmflowError

from ._rule import CompiledRule, Verdict

__all__ = [
    "PreparedGroup",
    "RulesBackend",
    "RulesBackendError",
    "available_backends",
    "make_backend",
]


class RulesBackendError(CrmflowError):
    """The rules back end failed or was misused (unknown back end, closed, foreign group)."""


@dataclass(frozen=True, eq=False)
class PreparedGroup:
    """A group of rules registered with one back end; pass it back to ``evaluate``.

    Attributes:
        name: the group name given to ``prepare``.
        rules: the rules, in verdict order.
        owner: the back end that prepared it.
        data: back-end private state.

    """

    name: str
    rules: tuple[CompiledRule, ...]
    owner: object = field(repr=False)
    data: Any = field(default=None, repr=False)


@runtime_checkable
class RulesBackend(Protocol):
    """Evaluates groups of compiled rules; both implementations give identical verdicts."""

    name: str

    def prepare(self, group: str, rules: Sequence[CompiledRule]) -> PreparedGroup:
        """Register what evaluating ``rules`` needs, once; the result is reused per call."""
        ...

    def evaluate(self, group: PreparedGroup, facts: Mapping[str, Any]) -> list[Verdict]:
        """Return one verdict per rule of ``group``, in order."""
        ...

    def close(self) -> None:
        """Release what ``prepare`` registered, where the back end allows it."""
        ...


def _durable_importable() -> bool:
    try:
        return importlib.util.find_spec("durable_rules_engine") is not None and (
            importlib.util.find_spec("durable") is not None
        )
    except (ImportError, ValueError):
        return False


def available_backends() -> tuple[str, ...]:
    """Return the back-end names usable in this interpreter, preferred first."""
    if _durable_importable():
        try:
            from . import _durable_backend  # noqa: F401
        except ImportError:
            return ("python",)
        return ("durable", "python")
    return ("python",)


def make_backend(kind: str = "auto", *, namespace: str = "crmflow") -> RulesBackend:
    """Create a back end: ``"durable"``, ``"python"``, or ``"auto"`` (durable if importable).

    ``namespace`` prefixes every ruleset name the durable back end registers in its
    process-global C library, so several engines in one process never collide.

    Raises:
        RulesBackendError: unknown kind, or ``"durable"`` asked for but not importable.

    """
    if kind == "auto":
        kind = available_backends()[0]
    if kind == "python":
        from ._python_backend import PythonBackend

        return PythonBackend(namespace=namespace)
    if kind == "durable":
        if "durable" not in available_backends():
            raise RulesBackendError(
                "the durable back end needs durable_rules, which is not installed here "
                "(it does not build on CPython 3.13+); use 'python' or 'auto'"
            )
        from ._durable_backend import DurableBackend

        return DurableBackend(namespace=namespace)
    raise RulesBackendError(f"unknown rules back end {kind!r}; use 'auto', 'durable' or 'python'")
