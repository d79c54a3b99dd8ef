"""The loader's sections about work around an instance: checklists, gates, costs, reassignment.

Each function takes the loader's builder (for its error reporting and role checks) and one
section of the document, and returns model objects; errors are recorded on the builder with
file, line and column like every other loader error.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from crmflow._clock import parse_duration
from crmflow._suggest import suggest
from crmflow.engine._model import (
    ChecklistDef,
    ChecklistItemDef,
    CostsDef,
    GateDef,
    ReassignmentDef,
    StateDef,
)
from crmflow.engine._yaml import KeyPath

if TYPE_CHECKING:
    from crmflow.engine._loader import _Builder

__all__ = [
    "CHECKLIST_ITEM_KEYS",
    "CHECKLIST_KEYS",
    "COSTS_KEYS",
    "GATE_KEYS",
    "REASSIGNMENT_KEYS",
    "check_gate_sources",
    "parse_checklists",
    "parse_costs",
    "parse_gates",
    "parse_reassignment",
    "parse_state_checklists",
]

CHECKLIST_KEYS: Mapping[str, bool] = MappingProxyType(
    {"title": False, "description": False, "manager_roles": False, "items": True}
)
CHECKLIST_ITEM_KEYS: Mapping[str, bool] = MappingProxyType(
    {
        "id": True,
        "title": True,
        "required": False,
        "deferrable": False,
        "role": False,
        "due": False,
        "depends_on": False,
        "result": False,
        "description": False,
    }
)
GATE_KEYS: Mapping[str, bool] = MappingProxyType({"checklist": True, "allow_deferred": False})
COSTS_KEYS: Mapping[str, bool] = MappingProxyType(
    {"categories": True, "roles": False, "currency": False}
)
REASSIGNMENT_KEYS: Mapping[str, bool] = MappingProxyType({"roles": False, "rules": False})


# -- checklists ------------------------------------------------------------------------------


def parse_checklists(b: _Builder, value: Any) -> dict[str, ChecklistDef]:
    """Parse ``checklists``: name -> {title, manager_roles, items}; item ids unique overall."""
    mapping = b.expect(value, dict, ("checklists",), "a mapping of checklist name to checklist")
    result: dict[str, ChecklistDef] = {}
    seen_items: dict[str, str] = {}
    for key, spec in mapping.items():
        path: KeyPath = ("checklists", key)
        try:
            name = b.identifier(key, path, "checklist name")
            spec = b.expect(spec, dict, path, "a checklist mapping")
            if not b.check_keys(spec, path, CHECKLIST_KEYS, f"checklist {name!r}"):
                continue
            manager_roles: tuple[str, ...] = ()
            if spec.get("manager_roles"):
                manager_roles = b.roles(spec["manager_roles"], (*path, "manager_roles"))
            items = _items(b, name, spec["items"], (*path, "items"), seen_items)
        except b.Skip:
            continue
        result[name] = ChecklistDef(
            name=name,
            title=b.text_value(spec, "title", path) or name.replace("_", " "),
            items=items,
            manager_roles=manager_roles,
            description=b.text_value(spec, "description", path),
            pos=b.doc.key_pos(path),
        )
    return result


def _items(
    b: _Builder, checklist: str, value: Any, path: KeyPath, seen: dict[str, str]
) -> tuple[ChecklistItemDef, ...]:
    entries = b.expect(value, list, path, "a list of checklist items")
    if not entries:
        raise b.error("expected at least one item", path)
    failed = len(b.errors)
    items: list[ChecklistItemDef] = []
    depends_paths: dict[str, list[tuple[str, KeyPath]]] = {}
    # Ids written on items that had errors: a dependency on one is not a second mistake.
    written = {str(entry["id"]) for entry in entries if isinstance(entry, dict) and "id" in entry}
    for index, entry in enumerate(entries):
        item_path: KeyPath = (*path, index)
        try:
            spec = b.expect(entry, dict, item_path, "an item mapping with 'id' and 'title'")
            if not b.check_keys(spec, item_path, CHECKLIST_ITEM_KEYS, "a checklist item"):
                continue
            item_id = b.identifier(spec["id"], (*item_path, "id"), "item id")
            title = b.expect(spec["title"], str, (*item_path, "title"))
            if item_id in seen:
                where = "this checklist" if seen[item_id] == checklist else repr(seen[item_id])
                b.error(
                    f"item id {item_id!r} is already used in {where}",
                    (*item_path, "id"),
                    hint="item ids are task ids: unique across the workflow's checklists",
                )
                continue
            seen[item_id] = checklist
            role = None
            if spec.get("role") is not None:
                b.identifier(spec["role"], (*item_path, "role"), "role name")
                roles = b.roles(spec["role"], (*item_path, "role"))
                if not roles:
                    raise b.Skip()
                role = roles[0]
            due = _duration(b, spec.get("due"), (*item_path, "due"))
            result_type = None
            if spec.get("result") is not None:
                result_type = b.field_type(spec["result"], (*item_path, "result"))
            depends = [
                (name, name_path)
                for name, name_path in (
                    b.name_list(spec["depends_on"], (*item_path, "depends_on"), "item id")
                    if spec.get("depends_on")
                    else []
                )
            ]
        except b.Skip:
            continue
        required = b.flag(spec, "required", item_path) if "required" in spec else True
        depends_paths[item_id] = depends
        items.append(
            ChecklistItemDef(
                id=item_id,
                title=title,
                required=required,
                deferrable=b.flag(spec, "deferrable", item_path),
                role=role,
                due=due,
                depends_on=tuple(dict.fromkeys(name for name, _ in depends)),
                result=result_type,  # type: ignore[arg-type]  # checked by field_type
                description=b.text_value(spec, "description", item_path),
                pos=b.doc.pos((*item_path, "id")),
            )
        )
    ids = [item.id for item in items]
    for item_id, depends in depends_paths.items():
        for name, name_path in depends:
            if name == item_id:
                b.error(f"item {item_id!r} depends on itself", name_path)
            elif name not in ids and name not in written:
                b.error(
                    f"unknown item {name!r} in depends_on",
                    name_path,
                    suggestions=suggest(name, ids),
                    hint=f"depends_on names items of the same checklist ({checklist!r})",
                )
    if len(b.errors) == failed:
        _check_cycles(b, items, depends_paths)
    if len(b.errors) > failed:
        raise b.Skip()
    return tuple(items)


def _duration(
    b: _Builder, value: Any, path: KeyPath, *, allow_zero: bool = False
) -> timedelta | None:
    if value is None:
        return None
    text = b.expect(value, str, path, "a duration such as 2d or 4h")
    try:
        duration = parse_duration(text)
    except ValueError as exc:
        raise b.error(str(exc), path) from None
    if duration < timedelta(0) or (duration == timedelta(0) and not allow_zero):
        raise b.error(f"duration {text!r} must be longer than zero", path)
    return duration


def _check_cycles(
    b: _Builder,
    items: list[ChecklistItemDef],
    depends_paths: Mapping[str, list[tuple[str, KeyPath]]],
) -> None:
    """Report the first dependency cycle, at the ``depends_on`` entry that closes it."""
    graph = {item.id: item.depends_on for item in items}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        trail.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return [*trail[trail.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt, trail)
                if found:
                    return found
        trail.pop()
        state[node] = 2
        return None

    for item in items:
        if item.id in state:
            continue
        cycle = visit(item.id, [])
        if cycle:
            last, closing = cycle[-2], cycle[-1]
            name_path = next(p for n, p in depends_paths[last] if n == closing)
            b.error(
                "dependency cycle: " + " -> ".join(cycle),
                name_path,
                hint="a task cannot wait for a task that waits for it; remove one dependency",
            )
            return


def parse_state_checklists(
    b: _Builder, value: Any, path: KeyPath, known: Mapping[str, ChecklistDef]
) -> tuple[str, ...]:
    """A state's ``checklists``: names of declared checklists."""
    result: list[str] = []
    for name, name_path in b.name_list(value, path, "checklist name"):
        if name not in known and name in b.checklist_names:
            continue  # its own errors are reported already
        if name not in known:
            b.error(
                f"unknown checklist {name!r}",
                name_path,
                suggestions=suggest(name, list(known)),
                hint="declare it under 'checklists'",
            )
        elif name not in result:
            result.append(name)
    return tuple(result)


# -- gates -----------------------------------------------------------------------------------


def parse_gates(
    b: _Builder, value: Any, path: KeyPath, known: Mapping[str, ChecklistDef]
) -> tuple[GateDef, ...]:
    """A transition's ``requires``: one ``{checklist, allow_deferred}`` mapping or a list."""
    entries = (
        [(item, (*path, i)) for i, item in enumerate(value)]
        if isinstance(value, list)
        else [(value, path)]
    )
    gates: list[GateDef] = []
    for entry, entry_path in entries:
        try:
            spec = b.expect(entry, dict, entry_path, "a mapping such as {checklist: NAME}")
            if not b.check_keys(spec, entry_path, GATE_KEYS, "a requirement"):
                continue
            name = b.identifier(spec["checklist"], (*entry_path, "checklist"), "checklist name")
        except b.Skip:
            continue
        if name not in known and name in b.checklist_names:
            continue  # its own errors are reported already
        if name not in known:
            b.error(
                f"unknown checklist {name!r}",
                (*entry_path, "checklist"),
                suggestions=suggest(name, list(known)),
                hint="declare it under 'checklists'",
            )
            continue
        gates.append(
            GateDef(
                checklist=name,
                allow_deferred=b.flag(spec, "allow_deferred", entry_path),
                pos=b.doc.pos((*entry_path, "checklist")),
            )
        )
    return tuple(gates)


def check_gate_sources(
    b: _Builder,
    gates: tuple[GateDef, ...],
    sources: tuple[str, ...],
    states: Mapping[str, StateDef],
    path: KeyPath,
) -> None:
    """Every leaf a gated transition leaves from must have opened the checklist."""
    for gate in gates:
        for source in sources:
            for leaf in b.descendants(source):
                if states[leaf].children or states[leaf].final:
                    continue
                chain = [leaf]
                parent = states[leaf].parent
                while parent is not None:
                    chain.append(parent)
                    parent = states[parent].parent
                if not any(gate.checklist in states[s].checklists for s in chain):
                    b.error(
                        f"checklist {gate.checklist!r} is not opened in state {leaf!r}, "
                        "which this transition leaves from",
                        (*path, "requires"),
                        hint=f"attach it to the state: checklists: [{gate.checklist}]",
                    )
                    return


# -- costs and reassignment ------------------------------------------------------------------


def parse_costs(b: _Builder, value: Any) -> CostsDef:
    """Parse ``costs: {categories: {name: title}, roles, currency}``."""
    path: KeyPath = ("costs",)
    spec = b.expect(value, dict, path, "a mapping with 'categories'")
    if not b.check_keys(spec, path, COSTS_KEYS, "costs"):
        raise b.Skip()
    raw = spec["categories"]
    categories: dict[str, str] = {}
    if isinstance(raw, list):
        for name, _ in b.name_list(raw, (*path, "categories"), "cost category"):
            categories[name] = name.replace("_", " ")
    else:
        mapping = b.expect(raw, dict, (*path, "categories"), "a mapping of category to title")
        for key, title in mapping.items():
            key_path: KeyPath = (*path, "categories", key)
            try:
                name = b.identifier(key, key_path, "cost category")
                text = b.expect(title, str, key_path) if title is not None else ""
            except b.Skip:
                continue
            categories[name] = text or name.replace("_", " ")
    if not categories:
        raise b.error("expected at least one cost category", (*path, "categories"))
    roles = b.roles(spec["roles"], (*path, "roles")) if spec.get("roles") else ()
    return CostsDef(
        categories=MappingProxyType(categories),
        roles=roles,
        currency=b.text_value(spec, "currency", path),
        pos=b.doc.pos(path),
    )


def parse_reassignment(b: _Builder, value: Any) -> ReassignmentDef:
    """Parse ``reassignment: {roles, rules}``."""
    path: KeyPath = ("reassignment",)
    spec = b.expect(value, dict, path, "a mapping with 'roles' and 'rules'")
    if not b.check_keys(spec, path, REASSIGNMENT_KEYS, "reassignment"):
        raise b.Skip()
    roles = b.roles(spec["roles"], (*path, "roles")) if spec.get("roles") else ()
    rules = b.rule_refs(spec["rules"], (*path, "rules")) if spec.get("rules") else ()
    return ReassignmentDef(roles=roles, rules=rules, pos=b.doc.pos(path))
