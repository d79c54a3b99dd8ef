"""The adapter to ``transitions``: the only module that imports it.

One machine per workflow version, built from our validated model (never from names that
``transitions`` would resolve into imports). Flat workflows get a plain ``Machine``; workflows
with sub-states get a ``HierarchicalMachine`` whose separator is ours (``.``), set on a
subclass so that no other user of ``transitions`` in the process is affected.

Records are not attached to the machine: one cursor object carries a record's state through
one trigger, so memory does not grow with the number of records. ``transitions`` keeps
per-trigger bookkeeping on the machine itself (the nested machine's current path), so one lock
per machine serialises triggers.

The machine carries no conditions and no callbacks (guards are our rules, effects our
storage), so the state a trigger reaches from a state is a pure function of the two: each pair
is put to ``transitions`` once and its answer kept. A workflow has at most states x triggers
pairs, and the first fire of each pair goes through ``transitions`` exactly as before.
"""

from __future__ import annotations

import threading
from typing import Any

from transitions import Machine, MachineError
from transitions.extensions import HierarchicalMachine
from transitions.extensions.nesting import NestedState

from crmflow._errors import CrmflowError
from crmflow.engine._model import STATE_SEPARATOR, StateDef, WorkflowDef

__all__ = ["WorkflowMachine"]


class _DotState(NestedState):
    separator = STATE_SEPARATOR


class _DotMachine(HierarchicalMachine):
    state_cls = _DotState


class _Cursor:
    """Carries one record's state through one trigger."""

    state: str


def _nested_state_spec(defn: WorkflowDef, state: StateDef) -> dict[str, Any] | str:
    if not state.children:
        return state.short_name
    spec: dict[str, Any] = {
        "name": state.short_name,
        "children": [_nested_state_spec(defn, defn.states[c]) for c in state.children],
    }
    if state.initial_child is not None:
        spec["initial"] = defn.states[state.initial_child].short_name
    return spec


class WorkflowMachine:
    """Applies triggers to states for one workflow version."""

    def __init__(self, defn: WorkflowDef) -> None:
        self.workflow = defn.name
        self.nested = any(s.children for s in defn.states.values())
        initial = defn.leaf_state(defn.initial_state)
        machine: Any
        if self.nested:
            top = [s for s in defn.states.values() if s.parent is None]
            machine = _DotMachine(
                model=None,
                states=[_nested_state_spec(defn, s) for s in top],
                initial=initial,
                auto_transitions=False,
                ignore_invalid_triggers=False,
            )
        else:
            machine = Machine(
                model=None,
                states=list(defn.states),
                initial=initial,
                auto_transitions=False,
                ignore_invalid_triggers=False,
            )
        internal_done: set[tuple[str, str]] = set()
        for t in defn.transitions:
            if t.origin:
                # Written once on its origin, as an internal transition (no destination), so
                # the nested machine's own innermost-first search ranks it like we do.
                if (t.trigger, t.origin) not in internal_done:
                    internal_done.add((t.trigger, t.origin))
                    machine.add_transition(t.trigger, t.origin, None)
                continue
            machine.add_transition(t.trigger, list(t.sources), t.dest)
        self._machine = machine
        self._cursor = _Cursor()
        machine.add_model(self._cursor)
        self._lock = threading.Lock()
        #: (state, trigger) -> destination, as ``transitions`` answered it.
        self._decided: dict[tuple[str, str], str] = {}

    def fire(self, state: str, trigger: str) -> str:
        """Return the state reached by firing ``trigger`` from ``state``.

        The caller has checked that the trigger exists from that state; a refusal here means
        the definition and the machine disagree, which is a bug, so it raises.
        """
        decided = self._decided.get((state, trigger))
        if decided is not None:
            return decided
        with self._lock:
            cursor = self._cursor
            self._machine.set_state(state, cursor)
            try:
                fired = cursor.trigger(trigger)  # type: ignore[attr-defined]
            except MachineError as exc:
                raise CrmflowError(
                    f"workflow {self.workflow!r}: trigger {trigger!r} from {state!r} failed: "
                    f"{exc.value}"
                ) from exc
            if not fired:
                raise CrmflowError(
                    f"workflow {self.workflow!r}: trigger {trigger!r} from {state!r} did not fire"
                )
            dest = str(cursor.state)
            self._decided[(state, trigger)] = dest
            return dest
