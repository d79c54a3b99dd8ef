"""Cron schedules in a user's time zone, with a catch-up policy and repeats.

Expressions have the usual five fields, ``minute hour day-of-month month day-of-week``
(``0 10 * * 1`` is Mondays at 10:00), or one of ``@hourly``, ``@daily``, ``@midnight``,
``@weekly``, ``@monthly``, ``@yearly``, ``@annually``. They are matched against the wall clock
of the given zone, so ``0 10 * * 1`` stays 10:00 local time across daylight-saving changes.

Daylight saving, in one rule: each wall-clock time that matches fires once.

* A matching time in the hour the clocks skip (02:30 when 02:00 jumps to 03:00) fires at the
  moment the clocks skip to (03:00); several such times fire together, once.
* A matching time in the hour the clocks repeat (02:30 when 03:00 goes back to 02:00) fires on
  its first pass only. Frequent schedules (``*/15 * * * *``) therefore pause for that hour.

Catch-up after downtime: missed occurrences fire once, not once per missed slot;
:func:`missed_occurrence` gives the latest one that was missed.

All functions take time-zone-aware datetimes (a naive one raises ``ValueError``) and return
UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, CroniterError, croniter

from crmflow.engine._calendar import as_utc, wall_time_to_utc, zone_info

__all__ = [
    "MACROS",
    "latest_occurrence_at_or_before",
    "missed_occurrence",
    "next_occurrence",
    "next_repeat",
    "repeat_times",
    "validate_cron",
]

#: The ``@`` shorthands accepted instead of five fields.
MACROS = frozenset(
    {"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"}
)

_EXAMPLE = (
    "a valid expression has five fields, minute hour day-of-month month day-of-week, "
    "e.g. '0 10 * * 1' (Mondays at 10:00) or '*/30 9-17 * * mon-fri', or is one of "
    + ", ".join(sorted(MACROS))
)
# A date from which every valid expression, Feb 29 included, occurs within a few years.
_PROBE = datetime(2000, 1, 1)


def validate_cron(expression: str) -> None:
    """Check that ``expression`` is a five-field cron expression that ever occurs.

    Raises:
        ValueError: saying what is wrong and what a valid expression looks like.

    """
    if not isinstance(expression, str):
        raise ValueError(
            f"cron expression must be a string, got {type(expression).__name__}; {_EXAMPLE}"
        )
    text = expression.strip()
    fields = text.split()
    if not fields:
        raise ValueError(f"cron expression is empty; {_EXAMPLE}")
    if text.startswith("@"):
        if text not in MACROS:
            raise ValueError(f"unknown cron shorthand {text!r}; {_EXAMPLE}")
        return
    if len(fields) != 5:
        extra = "; seconds and years are not supported" if len(fields) in (6, 7) else ""
        raise ValueError(
            f"invalid cron expression {expression!r}: it has {len(fields)} fields, "
            f"not 5{extra}; {_EXAMPLE}"
        )
    try:
        croniter(text, _PROBE)
    except (CroniterError, ValueError, TypeError) as exc:
        raise ValueError(f"invalid cron expression {expression!r} ({exc}); {_EXAMPLE}") from None
    if not croniter.is_valid(text):
        raise ValueError(f"invalid cron expression {expression!r}; {_EXAMPLE}")
    try:
        croniter(text, _PROBE).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(
            f"cron expression {expression!r} never occurs: no month has that day "
            "('0 0 30 2 *' asks for 30 February)"
        ) from None


def _schedule(expression: str, wall: datetime) -> Any:
    """A croniter positioned at the naive wall-clock time ``wall`` (already validated)."""
    return croniter(expression.strip(), wall)


def _step(schedule: Any, forward: bool, expression: str) -> datetime:
    """The next (or previous) naive wall-clock occurrence; croniter's errors as ValueError."""
    try:
        found = schedule.get_next(datetime) if forward else schedule.get_prev(datetime)
    except (CroniterBadDateError, OverflowError):
        direction = "after" if forward else "before"
        raise ValueError(
            f"cron expression {expression!r} has no occurrence {direction} this moment "
            "within the supported dates (years 1 to 9999)"
        ) from None
    if not isinstance(found, datetime):
        raise TypeError(f"croniter returned {found!r}, not a datetime")
    return found


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def next_occurrence(expression: str, after: datetime, timezone: str) -> datetime:
    """Return the first occurrence strictly after ``after``, matched in ``timezone``, in UTC.

    Raises:
        ValueError: for an invalid expression or zone, or a naive ``after``.

    """
    start = as_utc(after, "after")
    zone = zone_info(timezone)
    validate_cron(expression)
    # Every wall-clock time up to the one of ``after`` maps to a moment at or before ``after``
    # (the mapping never goes backwards), so the search can begin there.
    schedule = _schedule(expression, _wall(start, zone))
    while True:
        found = wall_time_to_utc(_step(schedule, True, expression), zone)
        # A wall-clock time of the repeated hour's first pass is already over when ``after``
        # is in the second pass: keep looking.
        if found > start:
            return found


def latest_occurrence_at_or_before(expression: str, moment: datetime, timezone: str) -> datetime:
    """Return the most recent occurrence at or before ``moment``, matched in ``timezone``.

    Raises:
        ValueError: for an invalid expression or zone, or a naive ``moment``.

    """
    end = as_utc(moment)
    zone = zone_info(timezone)
    validate_cron(expression)
    wall = _wall(end, zone)
    latest = _step(_schedule(expression, wall), False, expression)
    best = wall_time_to_utc(latest, zone)
    # The previous wall-clock occurrence is at or before ``moment``; later ones may be too
    # (``moment`` itself, or all of the repeated hour's first pass when ``moment`` is in its
    # second pass).
    schedule = _schedule(expression, latest)
    while True:
        found = wall_time_to_utc(_step(schedule, True, expression), zone)
        if found > end:
            return best
        best = found


def missed_occurrence(
    expression: str, last_fired: datetime, now: datetime, timezone: str
) -> datetime | None:
    """Return the latest occurrence in ``(last_fired, now]``, or None when there is none.

    This is the catch-up policy: after downtime a schedule fires once, for the most recent
    occurrence it missed, not once per missed slot.

    Raises:
        ValueError: for an invalid expression or zone, or a naive datetime.

    """
    fired, current = as_utc(last_fired, "last_fired"), as_utc(now, "now")
    if current <= fired:
        validate_cron(expression)
        zone_info(timezone)
        return None
    latest = latest_occurrence_at_or_before(expression, current, timezone)
    return latest if latest > fired else None


def _check_every(every: timedelta) -> None:
    if not isinstance(every, timedelta):
        raise TypeError(f"every must be a timedelta, got {type(every).__name__}")
    if every <= timedelta(0):
        raise ValueError(f"every must be positive, got {every}")


def repeat_times(
    first: datetime, every: timedelta, until: datetime | None = None
) -> Iterator[datetime]:
    """Yield ``first``, ``first + every``, ... up to and including ``until`` (forever without).

    Repeats are elapsed time, not wall-clock time: every 30 minutes is 30 real minutes, also
    across a daylight-saving change. A reminder repeated until acknowledged stops consuming
    this iterator when the acknowledgement arrives.

    Raises:
        ValueError: for a naive datetime or an ``every`` that is not positive.

    """
    start = as_utc(first, "first")
    _check_every(every)
    end = None if until is None else as_utc(until, "until")
    moment = start
    while end is None or moment <= end:
        yield moment
        moment += every


def next_repeat(first: datetime, every: timedelta, after: datetime) -> datetime:
    """Return the first of ``first``, ``first + every``, ... that is strictly after ``after``.

    Like :func:`missed_occurrence`, repeats missed during downtime are not replayed: the
    schedule continues on its grid from the next slot.

    Raises:
        ValueError: for a naive datetime or an ``every`` that is not positive.

    """
    start, moment = as_utc(first, "first"), as_utc(after, "after")
    _check_every(every)
    if moment < start:
        return start
    return start + ((moment - start) // every + 1) * every
