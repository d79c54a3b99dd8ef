"""The shipped example programs run and do what their docstrings say."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
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


def test_weekly_reminder_example() -> None:
    root = EXAMPLES.parent
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "weekly_reminder.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "reminder weekly-figures: first due Mon 01-12 10:00" in lines[0]
    arrivals = [line.split("  inbox:")[0] for line in lines if "  inbox: " in line]
    # 10:00, then every 30 minutes until acknowledged at 11:10; then the next Monday.
    assert arrivals == ["Mon 01-12 10:00", "Mon 01-12 10:30", "Mon 01-12 11:00", "Mon 01-19 10:00"]
    assert "Mon 01-12 11:10  alice acknowledges" in lines
    assert "Mon 01-12 18:00  no more repeats today; next due Mon 01-19 10:00" in lines
    assert "  Mon 01-12 11:00  delivered, read, acknowledged" in lines
