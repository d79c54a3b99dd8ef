"""``crmflow outbox``: list notifications with their delivery status, and send dead ones again.

Operators run it against the store the workers use: after fixing what made notifications die
(an address, the mail server's credentials, a webhook receiver), ``--requeue`` makes them
pending again for the next tick.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import TYPE_CHECKING

from crmflow._errors import CrmflowError
from crmflow.plugins._storage_api import OutboxRecord

if TYPE_CHECKING:
    from crmflow.engine import Engine

__all__ = ["describe", "run_outbox"]


def describe(row: OutboxRecord) -> str:
    """One notification as the command prints it (a second line with its last error)."""
    attempts = f"{row.attempts} attempt{'' if row.attempts == 1 else 's'}"
    line = (
        f"{row.id}  {row.status:<9} {attempts:<11} {row.channel:<8} {row.recipient:<16} "
        f"{row.subject}"
    )
    if row.status == "pending" and row.next_attempt_at is not None and row.attempts:
        line += f"\n    next attempt {row.next_attempt_at.isoformat()}"
    if row.last_error and row.status != "delivered":
        line += f"\n    last error: {row.last_error}"
    return line


def run_outbox(args: argparse.Namespace) -> int:
    """List (or, with ``--requeue``, send again) the notifications the arguments select."""
    from crmflow.engine import Engine  # the engine loads plugins: only when the command runs

    # The outbox needs no workflow definitions: an engine without any reads and requeues it.
    engine = Engine([], store=args.store)
    try:
        if args.requeue:
            return _requeue(engine, args)
        rows = engine.notifications(
            key=args.key, recipient=args.recipient, channel=args.channel, status=args.status
        )
        for row in rows:
            print(describe(row))
        counts = Counter(row.status for row in rows)
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        print(f"{len(rows)} notification(s)" + (f" ({summary})" if summary else ""))
        return 0
    finally:
        engine.close()


def _requeue(engine: Engine, args: argparse.Namespace) -> int:
    if args.ids:
        failed = False
        for notification_id in args.ids:
            try:
                row = engine.requeue_notification(notification_id)
            except CrmflowError as exc:
                print(f"crmflow: {exc}", file=sys.stderr)
                failed = True
                continue
            print(f"requeued {describe(row)}")
        return 1 if failed else 0
    rows = engine.requeue_dead(key=args.key, channel=args.channel, recipient=args.recipient)
    for row in rows:
        print(f"requeued {describe(row)}")
    print(f"{len(rows)} dead notification(s) requeued; the next tick sends them")
    left = engine.notifications(
        key=args.key, channel=args.channel, recipient=args.recipient, status="dead"
    )
    if left:
        # requeue_dead leaves what would reach nobody: say so, or they look handled.
        print(
            f"{len(left)} still dead: no recipient was found for them when they were queued "
            "(fix the org directory or the recipient spec; they are not sent again)"
        )
    return 0
