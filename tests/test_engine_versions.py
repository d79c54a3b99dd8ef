"""Instances keep the workflow version they started on (invariant 8)."""

from __future__ import annotations

import logging

import pytest

from crmflow import Actor, CrmflowError, Engine, load_workflow_text

ANYONE = Actor("u", roles={"clerk"})

V1 = """
workflow: ticket
version: 1
states:
  - {name: open, initial: true}
  - {name: closed, final: true}
transitions:
  - {trigger: close, from: open, to: closed}
"""
V2 = """
workflow: ticket
version: 2
states:
  - {name: open, initial: true}
  - review
  - {name: closed, final: true}
transitions:
  - {trigger: close, from: open, to: review}
  - {trigger: approve, from: review, to: closed}
"""


def test_running_instances_stay_on_their_version(sqlite_url: str) -> None:
    with Engine([load_workflow_text(V1)], store=sqlite_url, load_entry_points=False) as old:
        old.start("ticket", "T-old", actor=ANYONE)
    defs = [load_workflow_text(V1), load_workflow_text(V2)]
    with Engine(defs, store=sqlite_url, load_entry_points=False) as engine:
        engine.start("ticket", "T-new", actor=ANYONE)
        assert engine.get("T-new").workflow_version == 2
        assert engine.get("T-old").workflow_version == 1
        assert engine.fire("T-old", "close", actor=ANYONE).state == "closed"
        assert engine.fire("T-new", "close", actor=ANYONE).state == "review"
    with Engine([load_workflow_text(V2)], store=sqlite_url, load_entry_points=False) as newer:
        newer.start("ticket", "T-3", actor=ANYONE)
        with pytest.raises(CrmflowError, match="version 1 is not loaded"):
            newer.fire("T-old", "close", actor=ANYONE)


def test_an_edited_text_under_the_same_version_is_reported(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Engine([load_workflow_text(V1)], store=sqlite_url, load_entry_points=False) as engine:
        engine.start("ticket", "T-1", actor=ANYONE)
    edited = V1.replace("transitions:", "# reviewed\ntransitions:")
    with (
        Engine([load_workflow_text(edited)], store=sqlite_url, load_entry_points=False) as engine,
        caplog.at_level(logging.WARNING, logger="crmflow"),
    ):
        assert engine.fire("T-1", "close", actor=ANYONE).ok
    assert "different text of ticket version 1" in caplog.text
