"""Lint a loaded workflow: problems that are valid YAML and a valid model, but likely mistakes.

The loader already refuses what cannot work (unknown states, missing rules ...). Lint looks at
the machine as a whole:

==========================  =========  ====================================================
code                        severity   meaning
==========================  =========  ====================================================
``unreachable-state``       error      no path of transitions leads there from the start
``dead-end``                error      a non-final state with no transition out of it
``ambiguous-trigger``       error      one trigger, one state, two transitions on one level
``unused-rule``             warning    a rule no transition uses
``unused-role``             warning    a declared role nothing refers to
``unused-checklist``        warning    a checklist no state opens
``self-transition``         warning    a transition that leads back into the state it leaves
``timer-without-calendar``  warning    a timer counts working time, but the file has no
                                       ``calendar:`` (the engine's calendar applies)
==========================  =========  ====================================================

A transition written on a sub-state overrides one with the same trigger written on its parent
(innermost wins), so that pair is not ambiguous.

Reachability follows the runtime's semantics: an instance rests in a leaf state; entering a
compound state enters its initial child; a transition from a compound state fires from every
state below it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from crmflow._errors import _did_you_mean
from crmflow.engine._model import (
    NotifyDef,
    SourcePos,
    TimerDef,
    TransitionDef,
    WorkflowDef,
)

__all__ = ["LintIssue", "Severity", "lint"]

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class LintIssue:
    """One finding of :func:`lint`.

    Attributes:
        severity: ``"error"`` (the machine will misbehave) or ``"warning"`` (probably unintended).
        code: a stable identifier such as ``unreachable-state``, for filtering.
        message: a sentence describing the problem.
        pos: where in the source it is.
        suggestions: names that may be what was meant.

    """

    severity: Severity
    code: str
    message: str
    pos: SourcePos
    suggestions: tuple[str, ...] = ()

    def render(self) -> str:
        """Render as ``file:line:column: path: severity: message [code]``."""
        where = self.pos.source
        if self.pos.line:
            where += f":{self.pos.line}:{self.pos.column}"
        path = f"{self.pos.path}: " if self.pos.path else ""
        return (
            f"{where}: {path}{self.severity}: {self.message}"
            f"{_did_you_mean(self.suggestions)} [{self.code}]"
        )


def _leaves(defn: WorkflowDef) -> list[str]:
    return [s.name for s in defn.states.values() if not s.children]


def _reachable(defn: WorkflowDef) -> set[str]:
    start = defn.leaf_state(defn.initial_state)
    seen_leaves = {start}
    todo = [start]
    while todo:
        leaf = todo.pop()
        if defn.states[leaf].final:
            continue
        for transition in defn.transitions_from(leaf):
            target = defn.leaf_state(transition.dest)
            if target not in seen_leaves:
                seen_leaves.add(target)
                todo.append(target)
    reached: set[str] = set()
    for leaf in seen_leaves:
        reached.update(defn.ancestors(leaf))
    return reached


def _unreachable(defn: WorkflowDef) -> list[LintIssue]:
    reached = _reachable(defn)
    issues = []
    for state in defn.states.values():
        # Report the outermost unreachable state only: its sub-states follow from it.
        if state.name in reached or (state.parent is not None and state.parent not in reached):
            continue
        issues.append(
            LintIssue(
                "error",
                "unreachable-state",
                f"state {state.name!r} cannot be reached from {defn.initial_state!r}",
                state.pos,
            )
        )
    return issues


def _dead_ends(defn: WorkflowDef) -> list[LintIssue]:
    return [
        LintIssue(
            "error",
            "dead-end",
            f"state {leaf!r} is not final but no transition leaves it",
            defn.states[leaf].pos,
        )
        for leaf in _leaves(defn)
        if not defn.states[leaf].final and not defn.transitions_from(leaf)
    ]


def _ambiguous(defn: WorkflowDef) -> list[LintIssue]:
    # Only transitions written on the same level are ambiguous: one written on a sub-state
    # takes precedence over its parent's (innermost wins, as in the runtime and the machine).
    index = {id(t): i for i, t in enumerate(defn.transitions)}
    reported: set[tuple[int, int]] = set()
    issues = []
    for leaf in _leaves(defn):
        first_by_level: dict[tuple[str, str], TransitionDef] = {}
        # Sorted by position in the file, so the issue points at the later transition.
        for transition in sorted(defn.transitions_from(leaf), key=lambda t: index[id(t)]):
            level = transition.level_for(leaf, defn)
            first = first_by_level.setdefault((transition.trigger, level), transition)
            if first is transition or first.pos == transition.pos:
                continue
            pair = (index[id(first)], index[id(transition)])
            if pair in reported:
                continue
            reported.add(pair)
            pos = transition.positions.get("trigger", transition.pos)
            other = first.pos.path or "another transition"
            issues.append(
                LintIssue(
                    "error",
                    "ambiguous-trigger",
                    f"trigger {transition.trigger!r} leaves state {leaf!r} by two transitions "
                    f"written on {level!r} (the other is {other})",
                    pos,
                )
            )
    return issues


def _unused_rules(defn: WorkflowDef) -> list[LintIssue]:
    used = {rule for t in defn.transitions for rule in t.rules}
    used.update(defn.reassignment.rules)
    return [
        LintIssue("warning", "unused-rule", f"rule {name!r} is not used by any transition", r.pos)
        for name, r in defn.rules.items()
        if name not in used
    ]


def _unused_checklists(defn: WorkflowDef) -> list[LintIssue]:
    attached = {name for s in defn.states.values() for name in s.checklists}
    return [
        LintIssue(
            "warning",
            "unused-checklist",
            f"checklist {name!r} is not attached to any state, so it never opens",
            c.pos,
        )
        for name, c in defn.checklists.items()
        if name not in attached
    ]


def _all_timers(defn: WorkflowDef) -> list[TimerDef]:
    """The workflow's timers, then those its automations start."""
    started = [
        action.timer
        for automation in defn.automations
        for action in automation.actions
        if action.timer is not None
    ]
    return [*defn.timers, *started]


def _notifications(defn: WorkflowDef) -> list[NotifyDef]:
    found = [timer.notify for timer in _all_timers(defn) if timer.notify is not None]
    found.extend(
        action.notify
        for automation in defn.automations
        for action in automation.actions
        if action.notify is not None
    )
    return found


def _unused_roles(defn: WorkflowDef) -> list[LintIssue]:
    used = set(defn.start_roles)
    used.update(role for t in defn.transitions for role in t.roles)
    used.update(role for r in defn.rules.values() for role in r.override_roles)
    used.update(defn.reassignment.roles)
    if defn.costs is not None:
        used.update(defn.costs.roles)
    for checklist in defn.checklists.values():
        used.update(checklist.manager_roles)
        used.update(item.role for item in checklist.items if item.role)
    for notify in _notifications(defn):
        used.update(spec[len("role:") :] for spec in notify.to if spec.startswith("role:"))
    for automation in defn.automations:
        used.update(a.task.role for a in automation.actions if a.task is not None and a.task.role)
    return [
        LintIssue(
            "warning",
            "unused-role",
            f"role {role!r} is declared but not used",
            defn.positions.get(f"roles.{role}", defn.positions.get("roles", defn.pos)),
        )
        for role in defn.roles
        if role not in used
    ]


def _self_transitions(defn: WorkflowDef) -> list[LintIssue]:
    issues = []
    for transition in defn.transitions:
        if transition.internal:
            continue  # written without 'to' on purpose: staying is the point
        target = defn.leaf_state(transition.dest)
        for source in transition.sources:
            if source in (transition.dest, target):
                issues.append(
                    LintIssue(
                        "warning",
                        "self-transition",
                        f"trigger {transition.trigger!r} leads from {source!r} back into itself",
                        transition.positions.get("to", transition.pos),
                    )
                )
    return issues


def _timers_without_calendar(defn: WorkflowDef) -> list[LintIssue]:
    if defn.calendar is not None:
        return []
    return [
        LintIssue(
            "warning",
            "timer-without-calendar",
            f"timer {timer.name!r} counts working time, but the workflow has no 'calendar': "
            "the engine's calendar applies, or none (every hour counts)",
            timer.pos,
        )
        for timer in _all_timers(defn)
        if timer.working_time
    ]


def lint(defn: WorkflowDef) -> list[LintIssue]:
    """Check a loaded workflow for likely mistakes; return the issues, errors first.

    Issues of one severity keep the order of the checks, then the order in the file.
    """
    issues: Sequence[LintIssue] = [
        *_unreachable(defn),
        *_dead_ends(defn),
        *_ambiguous(defn),
        *_unused_rules(defn),
        *_unused_checklists(defn),
        *_unused_roles(defn),
        *_self_transitions(defn),
        *_timers_without_calendar(defn),
    ]
    return sorted(issues, key=lambda issue: issue.severity != "error")
