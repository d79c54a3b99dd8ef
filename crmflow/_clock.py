"""Clocks: the only place crmflow reads the time from.

An engine reads ``now()`` from its clock and nowhere else, so the same code runs on the wall
clock in production and on a :class:`VirtualClock` in tests and simulations.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "VirtualClock", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str | timedelta) -> timedelta:
    """Parse ``30m``, ``2h``, ``3d``, ``1w`` (or a sequence such as ``1d 2h``) into a timedelta."""
    if isinstance(text, timedelta):
        return text
    total = timedelta()
    parts = str(text).split()
    if not parts:
        raise ValueError(f"empty duration {text!r}")
    for part in parts:
        match = _DURATION.match(part)
        if match is None:
            raise ValueError(
                f"bad duration {part!r}: use a number and one of s, m, h, d, w (e.g. 2d)"
            )
        try:
            total += timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            raise ValueError(f"duration {text!r} is too long") from None
    return total


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@runtime_checkable
class Clock(Protocol):
    """Anything with a ``now()`` that returns a time-zone-aware datetime."""

    def now(self) -> datetime:
        """The current time, time-zone aware."""


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)

    def __repr__(self) -> str:
        return "SystemClock()"


class VirtualClock:
    """A clock that moves only when told to; naive times are taken as UTC."""

    def __init__(self, start: str | datetime | None = None) -> None:
        if start is None:
            moment = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        elif isinstance(start, str):
            moment = datetime.fromisoformat(start)
        else:
            moment = start
        self._now = _aware(moment)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The clock's current time."""
        with self._lock:
            return self._now

    def set(self, moment: str | datetime) -> None:
        """Jump to ``moment``; moving backwards is refused because timers would misfire."""
        target = _aware(datetime.fromisoformat(moment) if isinstance(moment, str) else moment)
        with self._lock:
            if target < self._now:
                raise ValueError(f"a virtual clock cannot go back from {self._now} to {target}")
            self._now = target

    def advance(self, by: str | timedelta) -> datetime:
        """Move forward by a duration (``"2d"``, ``"30m"``, a timedelta) and return the new time."""
        step = parse_duration(by)
        if step < timedelta(0):
            raise ValueError("a virtual clock cannot go back")
        with self._lock:
            self._now += step
            return self._now

    def __repr__(self) -> str:
        return f"VirtualClock({self._now.isoformat()!r})"
