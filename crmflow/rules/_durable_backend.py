"""The durable_rules back end. The only module that imports ``durable``.

What we learned about durable_rules 2.0.28 and how this module copes (see docs/rules.md):

* ``Host.__init__`` starts two daemon timer threads in ``_run``; we post synchronously, so our
  host subclass makes ``_run`` a no-op.
* An event is consumed by the first rule it matches, so one ruleset holds one rule: a group of
  n rules becomes n rulesets ``<namespace>$<group>$<n>`` registered once in ``prepare``, each
  in its own ``register_rulesets`` call (a failing batch drops its companions).
* Ruleset names are global in the C library: names carry the back end's namespace plus a
  process-wide sequence number, so two back ends never share (or clash on) a ruleset.
* Every evaluation posts with one session id per back end, under the back end's lock (the C
  engine is not thread-safe). A fresh session per evaluation would leak: unmatched events leave
  session state behind, the library runs out of memory after some thousands of sessions, and
  ``delete_state`` on a session whose event matched nothing crashes the process.
* The verdict is read from our action (which records the message id), never from ``post``'s
  return value; ``MessageNotHandledException`` means "not fired".
* Messages carry numbers as exact scaled integers (see ``_compile``); when a value cannot be
  represented exactly, that rule is decided by the Python evaluator instead.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import durable_rules_engine  # type: ignore[import-not-found]
from durable.engine import Host, Ruleset

from ._backend import PreparedGroup, RulesBackendError
from ._compile import DurablePlan, Inexact, NotCompilable, plan_condition
from ._evaluate import truth
from ._rule import CompiledRule, Verdict, make_env, verdict

__all__ = ["DurableBackend"]

# Ruleset names are process-global in the C library; a process-wide counter keeps them unique
# even when two back ends are given the same namespace.
_SEQUENCE = itertools.count(1)
_SEQUENCE_LOCK = threading.Lock()
_SESSION = "0"
#: How durable reports ERR_EXPRESSION_LIMIT_EXCEEDED when it creates a ruleset.
_EXPRESSION_LIMIT = re.compile(r"error code: 113\b")
#: durable's answer when no rule matched the event (it raises MessageNotHandledException).
_NOT_HANDLED = 1


def _sanitize(text: str) -> str:
    # '$' separates our name parts and durable gives "$state"/"$flow" suffixes a meaning.
    return re.sub(r"[^A-Za-z0-9_.:/-]", "_", text)


class _SyncHost(Host):  # type: ignore[misc]
    """A durable Host without the background dispatch threads (we post synchronously)."""

    def _run(self) -> None:
        return None

    def register_one(self, name: str, definition: dict[str, Any]) -> Ruleset:
        """Register a single plain ruleset (bypassing the ``$state``/``$flow`` name magic)."""
        if name in self._ruleset_directory:
            raise RulesBackendError(f"ruleset {name!r} is already registered")
        ruleset = Ruleset(name, self, definition)
        self._ruleset_directory[name] = ruleset
        self._ruleset_list.append(ruleset)
        return ruleset

    def load_ruleset(self, ruleset_name: str) -> Any:
        raise RulesBackendError(f"ruleset {ruleset_name!r} is not registered")


@dataclass
class _Slot:
    """One rule of a prepared group: its ruleset (or None when Python decides it)."""

    rule: CompiledRule
    ruleset: str | None
    plan: DurablePlan | None
    static_reason: str
    #: The registered ruleset itself (None when Python decides).
    handle: Ruleset | None = None


class DurableBackend:
    """Evaluates rule conditions with durable_rules; messages and hints are rendered in Python.

    Attributes:
        stats: counters of how verdicts were decided: ``durable``, ``python_static`` (the
            condition cannot be compiled exactly) and ``python_runtime`` (a fact value could
            not be posted exactly).

    """

    name = "durable"

    def __init__(self, *, namespace: str = "crmflow") -> None:
        self.namespace = _sanitize(namespace)
        self._host = _SyncHost()
        self._lock = threading.Lock()
        self._hits: set[str] = set()
        self._ids = itertools.count(1)
        self._rulesets: list[str] = []
        self._closed = False
        # Per ruleset, an action's failure that its session state keeps: see _post.
        self._failures: dict[str, str] = {}
        self.stats = {"durable": 0, "python_static": 0, "python_runtime": 0}

    def _action(self, c: Any) -> None:
        # Runs inside post(); only records which message matched.
        self._hits.add(str(c.m["id"]))

    def prepare(self, group: str, rules: Sequence[CompiledRule]) -> PreparedGroup:
        """Compile each rule's condition and register one ruleset per compilable rule."""
        slots: list[_Slot] = []
        with self._lock:
            if self._closed:
                raise RulesBackendError("the rules back end is closed")
            for rule in rules:
                try:
                    plan = plan_condition(rule.when)
                except NotCompilable as exc:
                    slots.append(_Slot(rule, None, None, str(exc)))
                    continue
                with _SEQUENCE_LOCK:
                    n = next(_SEQUENCE)
                name = f"{self.namespace}${_sanitize(group)}${n}"
                definition = {"r": {"all": [{"m": plan.condition}], "run": self._action}}
                try:
                    handle = self._host.register_one(name, definition)
                except RulesBackendError:
                    raise
                except Exception as exc:
                    if _EXPRESSION_LIMIT.search(str(exc)):
                        # The C engine caps the expressions of one rule below what the
                        # planner's branch limit lets through: decide that rule in Python, like
                        # a condition that does not compile.
                        slots.append(_Slot(rule, None, None, f"durable_rules refused it: {exc}"))
                        continue
                    raise RulesBackendError(
                        f"durable_rules rejected rule {rule.name!r} of group {group!r}: {exc}"
                    ) from exc
                if name not in self._host._ruleset_directory:
                    raise RulesBackendError(f"ruleset {name!r} did not register")
                self._rulesets.append(name)
                slots.append(_Slot(rule, name, plan, "", handle))
        return PreparedGroup(name=group, rules=tuple(rules), owner=self, data=tuple(slots))

    def evaluate(self, group: PreparedGroup, facts: Mapping[str, Any]) -> list[Verdict]:
        """Return one verdict per rule, in order."""
        if group.owner is not self:
            raise RulesBackendError(f"group {group.name!r} was prepared by another back end")
        out: list[Verdict] = []
        for slot in group.data:
            env = make_env(slot.rule, facts)
            if slot.plan is None or slot.handle is None or slot.ruleset is None:
                fired = truth(slot.rule.when, env)
                self._count("python_static")
            else:
                try:
                    fired = self._post(slot.ruleset, slot.handle, slot.plan, env)
                except Inexact:
                    fired = truth(slot.rule.when, env)
                    self._count("python_runtime")
            out.append(verdict(slot.rule, env, fired))
        return out

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _post(self, ruleset: str, rules: Ruleset, plan: DurablePlan, env: Any) -> bool:
        with self._lock:
            if self._closed:
                raise RulesBackendError("the rules back end is closed")
            if self._failures:
                failure = self._failures.get(ruleset)
                if failure is not None:
                    raise RulesBackendError(f"durable_rules action failed: {failure}")
            mid = str(next(self._ids))
            text = plan.text(env, _SESSION, mid)
            # What Host.post does, minus what costs most when no rule matches (the usual
            # answer of a guard): the exception durable raises for it, and re-reading the
            # session state, which only an action of ours can change.
            try:
                result = durable_rules_engine.assert_event(rules._handle, text)
                if result[0] != _NOT_HANDLED:
                    message = json.loads(text)
                    error: list[Any] = [None]

                    def complete(e: Any, state: Any) -> None:
                        error[0] = e

                    rules.do_actions(rules._handle_result(result, message), complete)
                    if error[0]:
                        raise error[0]
            except Exception as exc:
                raise RulesBackendError(f"durable_rules failed on {ruleset!r}: {exc}") from exc
            if result[0] == _NOT_HANDLED:
                self.stats["durable"] += 1
                return False
            fired = mid in self._hits
            self._hits.discard(mid)
            state = self._host.get_state(ruleset, _SESSION)
            if isinstance(state, dict) and state.get("exception"):
                # The session state keeps it, so every later post to this ruleset fails too.
                self._failures[ruleset] = state["exception"]
                raise RulesBackendError(f"durable_rules action failed: {state['exception']}")
            self.stats["durable"] += 1
            return fired

    def close(self) -> None:
        """Delete this back end's rulesets from the C library; the back end is unusable after."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for name in self._rulesets:
                ruleset = self._host._ruleset_directory.pop(name, None)
                if ruleset is None:
                    continue
                with contextlib.suppress(Exception):
                    durable_rules_engine.delete_ruleset(ruleset._handle)
            self._rulesets.clear()
            self._host._ruleset_list.clear()
