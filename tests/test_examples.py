"""The shipped example programs run and do what their docstrings say."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_embed_host_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(EXAMPLES / "embed_host.py"))
    events = module["main"](tmp_path / "erp.db")
    out = capsys.readouterr().out
    assert events == [
        "SO-1: draft -> approved by li",
        "SO-2: draft -> approved by zhao",
        "SO-1: approved -> shipped by wu",
    ]
    assert "credit_limit (confirm)" in out
    assert "(ship: Contoso pays in advance" in out
