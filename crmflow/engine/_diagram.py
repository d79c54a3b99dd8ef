"""Draw a workflow: Mermaid ``stateDiagram-v2`` text, Graphviz DOT, and SVG through ``dot``.

Sub-states are drawn inside their compound state. Transition labels read
``trigger [role, role] (rule, rule)``: the roles allowed to fire it in brackets, the guarding
rules in parentheses.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from crmflow.engine._model import STATE_SEPARATOR, TransitionDef, WorkflowDef

__all__ = ["graphviz_dot", "history_path", "mermaid", "render", "render_svg"]

#: Seconds ``dot`` may take before :func:`render_svg` gives up.
DOT_TIMEOUT = 20.0


def _node_id(state: str) -> str:
    # State names are lower-case identifiers, so an upper-case "X" cannot clash with one, and the
    # "s_" prefix keeps Mermaid keywords such as "end" or "state" from being read as syntax.
    return "s_" + state.replace(STATE_SEPARATOR, "_X_")


def _label(transition: TransitionDef) -> str:
    label = transition.trigger
    if transition.roles:
        label += " [" + ", ".join(transition.roles) + "]"
    if transition.rules:
        label += " (" + ", ".join(transition.rules) + ")"
    return label


def mermaid(defn: WorkflowDef, current: str | None = None, path: Sequence[str] = ()) -> str:
    """Render ``defn`` as a Mermaid ``stateDiagram-v2``.

    Args:
        defn: the workflow.
        current: a state to highlight (class ``current``), e.g. an instance's state.
        path: states visited so far, highlighted with class ``visited``.

    Raises:
        KeyError: when ``current`` or an entry of ``path`` names no state of ``defn``.

    """
    for name in (*([current] if current else []), *path):
        if name not in defn.states:
            raise KeyError(f"workflow {defn.name!r} has no state {name!r}")
    lines = ["stateDiagram-v2"]
    if defn.title:
        # Mermaid has no diagram title in stateDiagram; a comment keeps it in the source.
        lines.append(f"    %% {defn.title}")

    def block(parent: str | None, indent: str) -> None:
        members = [s for s in defn.states.values() if s.parent == parent]
        for state in members:
            node = _node_id(state.name)
            lines.append(f'{indent}state "{state.short_name}" as {node}')
            if state.is_compound:
                lines.append(f"{indent}state {node} {{")
                block(state.name, indent + "    ")
                lines.append(f"{indent}}}")
        initial = defn.initial_state if parent is None else defn.states[parent].initial_child
        if initial is not None:
            lines.append(f"{indent}[*] --> {_node_id(initial)}")
        for state in members:
            if state.final:
                lines.append(f"{indent}{_node_id(state.name)} --> [*]")

    block(None, "    ")
    for transition in defn.transitions:
        for source in transition.sources:
            lines.append(
                f"    {_node_id(source)} --> {_node_id(transition.dest)} : {_label(transition)}"
            )
    if path:
        lines.append("    classDef visited fill:#e8f0fe,stroke:#4a6fa5")
        for name in dict.fromkeys(path):
            if name != current:
                lines.append(f"    class {_node_id(name)} visited")
    if current:
        lines.append("    classDef current fill:#ffd966,stroke:#b45f06,stroke-width:3px")
        lines.append(f"    class {_node_id(current)} current")
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def history_path(
    entries: Sequence[tuple[str, str, str]],
) -> tuple[list[str], set[tuple[str, str, str]]]:
    """The states an instance went through and the transitions it took, from its history.

    ``entries`` are ``(from_state, to_state, trigger)`` of the history's state-changing entries
    in order (the ``start`` entry has an empty ``from_state``). Returns the visited states in
    order and the set of taken ``(from, to, trigger)`` edges.
    """
    visited: list[str] = []
    taken: set[tuple[str, str, str]] = set()
    for source, dest, trigger in entries:
        if dest and (not visited or visited[-1] != dest):
            visited.append(dest)
        if source and dest and trigger:
            taken.add((source, dest, trigger))
    return visited, taken


def graphviz_dot(
    defn: WorkflowDef,
    current: str | None = None,
    path: Sequence[str] = (),
    taken: set[tuple[str, str, str]] | frozenset[tuple[str, str, str]] = frozenset(),
) -> str:
    """Render ``defn`` as Graphviz DOT; compound states become clusters.

    An edge into or out of a compound state is drawn to or from its initial leaf, clipped at
    the cluster's border (``lhead``/``ltail``), which is how DOT draws edges to a cluster.
    ``current`` and the states in ``path`` are filled; edges in ``taken`` (``(from, to,
    trigger)`` with leaf states, as :func:`history_path` returns them) are drawn bold.
    """
    visited = set(path)
    lines = [
        f"digraph {_dot_quote(defn.name)} {{",
        "    compound=true;",
        "    rankdir=LR;",
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
        "    __start [shape=point, width=0.15];",
    ]

    def cluster(parent: str | None, indent: str) -> None:
        for state in (s for s in defn.states.values() if s.parent == parent):
            node = _node_id(state.name)
            if state.is_compound:
                lines.append(f"{indent}subgraph cluster_{node} {{")
                lines.append(f"{indent}    label={_dot_quote(state.short_name)};")
                lines.append(f"{indent}    style=rounded;")
                cluster(state.name, indent + "    ")
                lines.append(f"{indent}}}")
            else:
                shape = ", shape=doublecircle" if state.final else ""
                if state.name == current:
                    shape += ', style="rounded,filled,bold", fillcolor="#ffd966"'
                elif state.name in visited:
                    shape += ', style="rounded,filled", fillcolor="#e8f0fe"'
                lines.append(f"{indent}{node} [label={_dot_quote(state.short_name)}{shape}];")

    cluster(None, "    ")
    lines.append(f"    __start -> {_node_id(defn.leaf_state(defn.initial_state))};")
    for transition in defn.transitions:
        head = defn.states[transition.dest]
        for source in transition.sources:
            attrs = [f"label={_dot_quote(_label(transition))}"]
            tail = defn.states[source]
            if tail.is_compound:
                attrs.append(f"ltail=cluster_{_node_id(tail.name)}")
            if head.is_compound:
                attrs.append(f"lhead=cluster_{_node_id(head.name)}")
            edge = (defn.leaf_state(source), defn.leaf_state(transition.dest), transition.trigger)
            if any(
                t[2] == edge[2]
                and t[1] == edge[1]
                and defn.states[source].name in _chain(defn, t[0])
                for t in taken
            ):
                attrs.append('color="#b45f06", penwidth=2.5')
            lines.append(
                f"    {_node_id(defn.leaf_state(source))} -> "
                f"{_node_id(defn.leaf_state(transition.dest))} [{', '.join(attrs)}];"
            )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _chain(defn: WorkflowDef, state: str) -> tuple[str, ...]:
    return defn.ancestors(state) if state in defn.states else ()


def render_svg(defn: WorkflowDef) -> bytes | None:
    """Render ``defn`` to SVG with Graphviz's ``dot`` (see :func:`render`)."""
    return render(defn, "svg")


def render(
    defn: WorkflowDef,
    fmt: str = "svg",
    *,
    current: str | None = None,
    path: Sequence[str] = (),
    taken: set[tuple[str, str, str]] | frozenset[tuple[str, str, str]] = frozenset(),
) -> bytes | None:
    """Render ``defn`` to ``svg`` or ``png`` with Graphviz's ``dot``, highlighting an instance.

    Returns ``None`` when ``dot`` is not on ``PATH``, fails, or takes longer than
    :data:`DOT_TIMEOUT` seconds; diagrams are a convenience, never a reason to fail.
    """
    if fmt not in ("svg", "png"):
        raise ValueError(f"format must be 'svg' or 'png', not {fmt!r}")
    dot = shutil.which("dot")
    if dot is None:
        return None
    try:
        done = subprocess.run(
            [dot, f"-T{fmt}"],
            input=graphviz_dot(defn, current, path, taken).encode("utf-8"),
            capture_output=True,
            timeout=DOT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or not done.stdout:
        return None
    return done.stdout
