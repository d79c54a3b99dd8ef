"""A weekly personal reminder that repeats until it is acknowledged, on a virtual clock.

Alice is reminded to send her sales figures every Monday at 10:00 Shanghai time, and again
every 30 minutes until she acknowledges it. The host ticks the engine through a Monday (as
``crmflow worker`` would), shows what arrives in her in-app inbox and when, acknowledges the
reminder, and shows that it comes back the next Monday. Nothing leaves the machine: the inbox
is a table in the SQLite file.

Run: python examples/weekly_reminder.py [--db FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from crmflow import Engine, VirtualClock

HERE = Path(__file__).resolve().parent
WORKFLOWS = HERE.parent / "workflows"
ORG = HERE / "org.yaml"  # alice works in Shanghai (the organisation's time zone)
SHANGHAI = ZoneInfo("Asia/Shanghai")


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A Shanghai wall-clock moment in January 2026 (the 12th and the 19th are Mondays)."""
    return datetime(2026, 1, day, hour, minute, tzinfo=SHANGHAI)


def local(moment: datetime) -> str:
    """A moment as Shanghai wall-clock time, e.g. ``Mon 01-12 10:00``."""
    return moment.astimezone(SHANGHAI).strftime("%a %m-%d %H:%M")


def tick_until(engine: Engine, clock: VirtualClock, end: datetime, step: timedelta) -> None:
    """Move the clock to ``end`` step by step, ticking each time; print what reaches alice."""
    while clock.now() < end:
        clock.set(min(clock.now() + step, end))
        seen = len(engine.inbox("alice"))
        engine.tick()
        for message in engine.inbox("alice")[seen:]:
            unread = len(engine.inbox("alice", unread=True))
            print(f"{local(clock.now())}  inbox: {message.subject} ({unread} unread)")


def main(db: Path) -> list[str]:
    """Run two Mondays of alice's reminder; return when each inbox message arrived."""
    clock = VirtualClock(at(11, 18))  # Sunday evening
    with Engine.from_path(WORKFLOWS, store=f"sqlite:///{db}", clock=clock, org=ORG) as engine:
        reminder = engine.add_reminder(
            "alice",
            message="Send your weekly sales figures",
            cron="0 10 * * 1",  # Mondays at 10:00 ...
            timezone="Asia/Shanghai",  # ... Shanghai time (alice's own zone is the default)
            repeat_every="30m",  # and every 30 minutes after that until acknowledged
            name="weekly-figures",
        )
        print(f"{local(clock.now())}  reminder {reminder.name}: first due {local(reminder.due_at)}")

        # Monday: a worker ticks every 5 minutes.
        tick_until(engine, clock, at(12, 11, 10), timedelta(minutes=5))
        latest = engine.inbox("alice")[-1]
        engine.acknowledge(latest.id, user="alice")
        print(f"{local(clock.now())}  alice acknowledges")
        tick_until(engine, clock, at(12, 18), timedelta(minutes=5))
        (pending,) = engine.timers(owner="alice")
        print(f"{local(clock.now())}  no more repeats today; next due {local(pending.due_at)}")

        # The next Monday it starts again.
        tick_until(engine, clock, at(19, 10), timedelta(hours=1))

        print("alice's inbox:")
        arrivals = []
        for message in engine.inbox("alice"):
            tracked = [message.status]
            if message.read_at is not None:
                tracked.append("read")
            if message.acknowledged_at is not None:
                tracked.append("acknowledged")
            print(f"  {local(message.created_at)}  {', '.join(tracked)}")
            arrivals.append(local(message.created_at))
        return arrivals


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    if args.db is None:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "reminders.db")
    else:
        main(args.db)
