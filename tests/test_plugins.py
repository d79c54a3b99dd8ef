"""Each hook, exercised through a real engine."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import pytest

from crmflow import (
    Actor,
    DefinitionError,
    Engine,
    FireResult,
    PluginError,
    TransitionContext,
    hookimpl,
    load_workflow_text,
)
from crmflow.plugins import Storage
from crmflow.plugins.memory_storage import MemoryStorage
from crmflow.rules import FunctionSpec, available_backends

ANYONE = Actor("u", roles={"clerk"})

DOC = """
workflow: ticket
version: 1
fields: {phone: str, amount: decimal}
states:
  - {name: open, initial: true}
  - {name: closed, final: true}
transitions:
  - trigger: close
    from: open
    to: closed
    rules: [vip_only]
    actions: [{action: stamp, with: {label: done}}]
rules:
  vip_only:
    when: not is_vip(phone)
    effect: block
    message: "{phone} is not a VIP number"
"""


class Vip:
    @hookimpl
    def crmflow_rule_functions(self) -> list[FunctionSpec]:
        return [
            FunctionSpec(
                name="is_vip",
                params=("str",),
                returns="bool",
                impl=lambda phone: phone.startswith("888"),
            )
        ]


class Stamp:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Mapping[str, Any], str]] = []

    @hookimpl
    def crmflow_known_actions(self) -> list[str]:
        return ["stamp"]

    @hookimpl
    def crmflow_run_action(
        self, name: str, params: Mapping[str, Any], context: TransitionContext, tx: Any
    ) -> Mapping[str, Any] | None:
        if name != "stamp":
            return None
        self.seen.append((name, params, context.to_state))
        return {"label": params["label"]}


class Recorder:
    def __init__(self) -> None:
        self.after: list[tuple[str, str, bool]] = []

    @hookimpl
    def crmflow_after_fire(self, context: TransitionContext, result: FireResult) -> None:
        self.after.append((context.key, context.to_state, result.ok))
        raise RuntimeError("observers failing after commit must not undo the change")


@pytest.mark.parametrize("backend", available_backends())
def test_rule_functions_actions_and_observers(
    backend: str, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    stamp, recorder = Stamp(), Recorder()
    with Engine(
        [load_workflow_text(DOC)],
        store=store_url,
        rules_backend=backend,
        plugins=[Vip(), stamp, recorder],
        load_entry_points=False,
    ) as engine:
        engine.start("ticket", "T-1", actor=ANYONE, data={"phone": "1234"})
        refused = engine.fire("T-1", "close", actor=ANYONE)
        assert not refused.ok and refused.refusals[0].message == "1234 is not a VIP number"
        assert stamp.seen == [] and recorder.after == []

        engine.start("ticket", "T-2", actor=ANYONE, data={"phone": "888123"})
        with caplog.at_level(logging.ERROR, logger="crmflow"):
            done = engine.fire("T-2", "close", actor=ANYONE)
        assert done.ok
        assert done.effects["actions"] == [{"action": "stamp", "label": "done"}]
        assert stamp.seen == [("stamp", {"label": "done"}, "closed")]
        assert recorder.after == [("T-2", "closed", True)]
        assert engine.get("T-2").state == "closed"
        assert "crmflow_after_fire observer failed" in caplog.text
        assert engine.history("T-2")[-1].details["actions"] == [
            {"action": "stamp", "label": "done"}
        ]


def test_unknown_action_is_a_definition_error() -> None:
    with pytest.raises(DefinitionError, match="unknown action 'stamp'") as info:
        Engine([load_workflow_text(DOC)], plugins=[Vip()], load_entry_points=False)
    line = next(i for i, text in enumerate(DOC.splitlines(), 1) if "action: stamp" in text)
    assert (info.value.line, info.value.column) == (
        line,
        DOC.splitlines()[line - 1].index("stamp") + 1,
    )


def test_unregistered_function_is_a_definition_error() -> None:
    with pytest.raises(DefinitionError, match="is_vip") as info:
        Engine([load_workflow_text(DOC)], plugins=[Stamp()], load_entry_points=False)
    assert info.value.path == "rules.vip_only.when"
    line = next(i for i, text in enumerate(DOC.splitlines(), 1) if "when:" in text)
    assert (info.value.line, info.value.column) == (
        line,
        DOC.splitlines()[line - 1].index("is_vip") + 1,
    )
    assert info.value.suggestions == ()


class CustomScheme:
    """A storage plugin for a scheme of its own, wrapping the in-memory store."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    @hookimpl
    def crmflow_open_storage(self, url: str) -> Storage | None:
        if not url.startswith("vault://"):
            return None
        self.opened.append(url)
        return MemoryStorage(url)


def test_a_plugin_can_provide_storage() -> None:
    plugin = CustomScheme()
    with Engine(
        [load_workflow_text(DOC)],
        store="vault://crm",
        plugins=[Vip(), Stamp(), plugin],
        load_entry_points=False,
    ) as engine:
        engine.start("ticket", "T-1", actor=ANYONE, data={"phone": "888", "amount": Decimal(1)})
        assert engine.get("T-1").state == "open"
    assert plugin.opened == ["vault://crm"]
    with pytest.raises(PluginError, match="no storage plugin handles 'nowhere://x'"):
        Engine([], store="nowhere://x", load_entry_points=False)
