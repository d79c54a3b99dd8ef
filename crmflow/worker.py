"""The worker loop behind ``crmflow worker``: tick until told to stop.

Hosts that build their own engine (their own channel objects, plugins without entry points)
run the same loop in their process: ``run_worker(engine, stop=...)``, with
``stop_on_signals(stop)`` on the main thread (Python delivers signals only there, so call it
from the main thread; from another thread set ``stop`` yourself).

Several workers may run against one PostgreSQL database: timers and notifications are claimed
with leases (``SELECT ... FOR UPDATE SKIP LOCKED``), so each is handled by one worker, and a
worker that dies leaves its claims to be taken over when the lease runs out.

Shutdown is graceful: SIGTERM or SIGINT lets the current tick finish (whatever it claimed is
fired or handed back), then the loop ends and the engine closes its connections.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from crmflow.engine._timer_ops import TickReport

if TYPE_CHECKING:
    from crmflow.engine import Engine

__all__ = ["run_worker", "stop_on_signals"]

log = logging.getLogger("crmflow.worker")


def stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """Make SIGTERM and SIGINT set ``stop``; returns a function that restores the handlers.

    :raises ValueError: when called outside the main thread (Python's signal rule).
    """
    previous = {}

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: finishing the current tick, then stopping", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handle)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def run_worker(
    engine: Engine,
    *,
    interval: float = 1.0,
    until_idle: bool = False,
    stop: threading.Event | None = None,
    on_tick: Callable[[TickReport], None] | None = None,
) -> TickReport:
    """Tick ``engine`` every ``interval`` seconds until ``stop`` is set; return the totals.

    ``until_idle`` ends the loop after the first tick that found nothing to do (for batch
    runs and tests). A tick that raises is logged and retried after the interval: a database
    restart must not kill the worker.
    """
    stop = stop or threading.Event()
    total = TickReport()
    while not stop.is_set():
        try:
            report = engine.tick()
        except Exception:
            log.exception("tick failed; retrying in %.1f s", interval)
            stop.wait(interval)
            continue
        total = total + report
        if on_tick is not None:
            on_tick(report)
        if report.idle:
            if until_idle:
                break
            stop.wait(interval)
    return total
