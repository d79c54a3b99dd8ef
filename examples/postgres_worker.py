"""The worker loop inside a host process, against PostgreSQL.

``crmflow worker`` builds its channels from command-line options. A host that wants channels
of its own, a retry policy with other settings or plugins without entry points runs the same
loop in its own process instead (see docs/timers.md): it builds the engine the way it likes and
hands it to ``crmflow.worker.run_worker``, with ``stop_on_signals`` so that SIGTERM or Ctrl-C
lets the current tick finish before the engine closes its connections.

Here the host's own channel is ``ConsoleChannel`` (one line per message on standard output,
standing in for the host's pager or chat), used next to the in-app inbox for every notification
that names no channel; the ``RetryPolicy`` gives up after five attempts, with waits growing
threefold from 10 seconds up to 15 minutes. Any number of these workers may share one
PostgreSQL database: timers and notifications are claimed with leases, so each fires once.

By default the worker drains what is due and stops (``until_idle``): a demo run, a cron job,
a batch. With ``--forever`` it keeps ticking until SIGTERM or SIGINT.

Run: python examples/postgres_worker.py [postgresql://user@host/db] [--forever] [--org FILE]
     (without a URL, the CRMFLOW_STORE environment variable names the database)
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from crmflow import Engine, TickReport
from crmflow.plugins.notifiers import OutgoingMessage, RetryPolicy
from crmflow.worker import run_worker, stop_on_signals

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"

RETRY = RetryPolicy(
    max_attempts=5,
    base=timedelta(seconds=10),
    factor=3.0,
    cap=timedelta(minutes=15),
)


class ConsoleChannel:
    """Write each message as one line to a text stream (standard output by default)."""

    def __init__(self, stream: TextIO | None = None, *, name: str = "console") -> None:
        self.name = name
        self._stream = stream
        self._lock = threading.Lock()

    def deliver(self, message: OutgoingMessage) -> None:
        """Write ``to <recipient>: <subject> [<event>, <message id>]``; never fails."""
        # repr() keeps a line break in a subject from forging a second line.
        line = f"to {message.recipient}: {message.subject!r} [{message.event}, {message.id}]"
        stream = self._stream or sys.stdout
        with self._lock:
            print(line, file=stream, flush=True)

    def close(self) -> None:
        """Nothing to release."""


def build_engine(store: str, *, org: Path | None = None) -> Engine:
    """An engine like the host's, with the host's own channel and retry policy."""
    return Engine.from_path(
        WORKFLOWS,
        store=store,
        org=org,
        channels=[ConsoleChannel()],
        default_channels=["inbox", "console"],
        retry=RETRY,
    )


def report_tick(report: TickReport) -> None:
    """Say what a tick did, unless it found nothing to do."""
    if not report.idle:
        print(
            f"tick: {report.fired} timers fired, {report.delivered} delivered, "
            f"{report.retrying} to retry, {report.dead} dead, {report.failed} failed",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> TickReport:
    """Run the worker on the database named in ``argv`` or ``CRMFLOW_STORE``; return totals."""
    parser = argparse.ArgumentParser(description="Fire due timers and deliver notifications.")
    parser.add_argument("store", nargs="?", default=os.environ.get("CRMFLOW_STORE"))
    parser.add_argument("--org", type=Path, default=None, help="the org directory (YAML)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between idle ticks")
    parser.add_argument("--forever", action="store_true", help="run until SIGTERM or SIGINT")
    args = parser.parse_args(argv)
    if not args.store:
        parser.error("give the database URL, or set CRMFLOW_STORE")

    engine = build_engine(args.store, org=args.org)
    stop = threading.Event()
    # Signal handlers can only be installed from the main thread; a host that runs the
    # worker in a thread of its own sets `stop` itself when it shuts down.
    in_main = threading.current_thread() is threading.main_thread()
    restore = stop_on_signals(stop) if in_main else None
    try:
        total = run_worker(
            engine,
            interval=args.interval,
            until_idle=not args.forever,
            stop=stop,
            on_tick=report_tick,
        )
    finally:
        if restore is not None:
            restore()
        # The engine closes its storage; the channels the host made are the host's to close.
        for channel in engine.channels.values():
            channel.close()
        engine.close()
    print(
        f"worker stopped: {total.fired} timers fired, {total.delivered} delivered, "
        f"{total.retrying} to retry, {total.dead} dead",
        file=sys.stderr,
    )
    return total


if __name__ == "__main__":
    main()
