"""Working-time calendars: office hours per weekday, holidays and make-up working days.

A :class:`BusinessCalendar` answers four questions about time-zone-aware moments:

* :meth:`~BusinessCalendar.is_working` -- is this moment working time?
* :meth:`~BusinessCalendar.next_working_moment` -- when may a reminder due now be delivered?
* :meth:`~BusinessCalendar.add_working_time` -- when is "24 working hours from now"?
* :meth:`~BusinessCalendar.working_time_between` -- how much working time passed (SLA reports)?

Working hours are wall-clock times in the calendar's zone, so ``09:00-18:00`` stays 09:00 to
18:00 local time across daylight-saving changes. A wall-clock time that happens twice (clocks
turned back) means its first occurrence; one that does not exist (clocks turned forward) means
the moment the clocks skip to. All results are in UTC.

Working time is a set of half-open intervals ``[start, end)``: 18:00 is not working time when
the day ends at 18:00, but adding exactly the rest of the day ends *at* 18:00, not at the next
morning's 09:00.

Calendars are also read from YAML (:func:`load_calendar_text`, :func:`load_calendar_file`,
:func:`calendar_from_document`); ``docs/calendar.md`` describes the format.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from crmflow._errors import DefinitionError
from crmflow._suggest import suggest
from crmflow.engine._yaml import KeyPath, YamlDocument, format_path, read_yaml_file, read_yaml_text

__all__ = [
    "ALWAYS",
    "SEARCH_DAYS",
    "WEEKDAYS",
    "BusinessCalendar",
    "TimeRange",
    "as_utc",
    "calendar_from_document",
    "load_calendar_file",
    "load_calendar_text",
    "parse_time_range",
    "wall_time_to_utc",
    "zone_info",
]

#: A working range within one day: (start, end) wall-clock times. An end of ``time(0)``
#: means midnight at the end of the day (written ``24:00`` in text).
TimeRange = tuple[time, time]

#: Weekday names as written in YAML, Monday first (index = ``date.weekday()``).
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

#: How many days ahead a search for working time looks before deciding there is none.
SEARCH_DAYS = 731

_DAY = timedelta(days=1)
_ZERO = timedelta(0)
# A range as offsets from midnight; the end may be a full day (24:00).
_Span = tuple[timedelta, timedelta]


# -- time zones and moments ---------------------------------------------------------------


def zone_info(name: str) -> ZoneInfo:
    """Return the zone for an IANA name such as ``Europe/Berlin``.

    Raises:
        ValueError: when there is no such zone; the message suggests close names.

    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"time zone must be an IANA name such as 'Europe/Berlin', got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        # ValueError: ZoneInfo refuses keys that look like paths ("../x", "/etc/x").
        pass
    near = _zone_suggestions(name)
    hint = " (did you mean " + " or ".join(f"'{n}'" for n in near) + "?)" if near else ""
    raise ValueError(f"unknown time zone {name!r}{hint}")


def _zone_suggestions(name: str) -> tuple[str, ...]:
    return suggest(name, sorted(available_timezones()))


def as_utc(moment: datetime, what: str = "moment") -> datetime:
    """Return ``moment`` in UTC.

    Raises:
        TypeError: when ``moment`` is not a datetime.
        ValueError: when ``moment`` is naive; a naive datetime has no single meaning here.

    """
    if not isinstance(moment, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"{what} must be time-zone aware, got the naive datetime {moment.isoformat()}; "
            "attach a zone, e.g. datetime(2026, 1, 5, 9, tzinfo=UTC)"
        )
    return moment.astimezone(UTC)


def wall_time_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """Return the UTC moment of a naive wall-clock time in ``zone``.

    A wall-clock time that happens twice (clocks turned back) gives its first occurrence; one
    that never happens (clocks turned forward) gives the moment the clocks skip to, so that
    this mapping never goes backwards as the wall-clock time grows.
    """
    if wall.tzinfo is not None:
        raise ValueError(f"expected a naive wall-clock time, got {wall.isoformat()}")
    # fold=0 is the earlier of two repeated moments, and for a skipped time it uses the
    # offset from before the change, which lands after the skip.
    after = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if after.astimezone(zone).replace(tzinfo=None) == wall:
        return after
    before = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    # The change lies between the two readings; zone changes happen at whole seconds.
    low = before.replace(microsecond=0)
    high = after.replace(microsecond=0) + (timedelta(seconds=1) if after.microsecond else _ZERO)
    while high - low > timedelta(seconds=1):
        middle = low + timedelta(seconds=int((high - low).total_seconds()) // 2)
        if middle.astimezone(zone).replace(tzinfo=None) > wall:
            high = middle
        else:
            low = middle
    return high


# -- time ranges ----------------------------------------------------------------------------

_TIME = r"(\d{1,2}):(\d{2})"
_RANGE = re.compile(rf"^\s*{_TIME}\s*-\s*{_TIME}\s*$")
_MIDNIGHT_HINT = (
    "a range cannot cross midnight: split it, e.g. 22:00-24:00 and 00:00-06:00 on the next day"
)


def _clock(hour: int, minute: int, text: str, *, end: bool) -> time:
    if minute > 59:
        raise ValueError(f"{text!r}: minute {minute:02d} is out of range (00 to 59)")
    if hour == 24 and minute == 0:
        if not end:
            raise ValueError(f"{text!r}: a range cannot start at 24:00")
        return time(0)
    if hour > 23:
        raise ValueError(
            f"{text!r}: {hour:02d}:{minute:02d} is not a time of day "
            "(00:00 to 23:59, or 24:00 to end a range at midnight)"
        )
    return time(hour, minute)


def parse_time_range(text: str) -> TimeRange:
    """Parse ``"09:00-18:00"`` into ``(time(9), time(18))``; ``24:00`` ends at midnight.

    Raises:
        ValueError: when the text is not ``HH:MM-HH:MM`` or the end is not after the start.

    """
    if not isinstance(text, str):
        raise ValueError(f"expected a time range such as '09:00-18:00', got {text!r}")
    match = _RANGE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a time range: write HH:MM-HH:MM, e.g. 09:00-18:00")
    hours = [int(match.group(index)) for index in range(1, 5)]
    start = _clock(hours[0], hours[1], text, end=False)
    end = _clock(hours[2], hours[3], text, end=True)
    _span((start, end))
    return start, end


def _offset(moment: time) -> timedelta:
    return timedelta(
        hours=moment.hour,
        minutes=moment.minute,
        seconds=moment.second,
        microseconds=moment.microsecond,
    )


def _format_offset(offset: timedelta) -> str:
    seconds = int(offset.total_seconds())
    text = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}"
    if seconds % 60 or offset.microseconds:
        text += f":{seconds % 60:02d}"
    if offset.microseconds:
        text += f".{offset.microseconds:06d}"
    return text


def _format_span(span: _Span) -> str:
    return f"{_format_offset(span[0])}-{_format_offset(span[1])}"


def _span(pair: TimeRange) -> _Span:
    """Check one range and turn it into offsets from midnight."""
    if (
        not isinstance(pair, tuple)
        or len(pair) != 2
        or not all(isinstance(part, time) for part in pair)
    ):
        raise ValueError(f"expected a (start, end) pair of datetime.time, got {pair!r}")
    start, end = pair
    if start.tzinfo is not None or end.tzinfo is not None:
        raise ValueError(
            f"working hours are wall-clock times in the calendar's zone; {pair!r} has a tzinfo"
        )
    span = (_offset(start), _offset(end) if end != time(0) else _DAY)
    if span[1] == span[0]:
        raise ValueError(f"{_format_span(span)} is empty: it ends when it starts")
    if span[1] < span[0]:
        raise ValueError(f"{_format_span(span)} ends before it starts; {_MIDNIGHT_HINT}")
    return span


def _range_problem(ranges: Sequence[TimeRange]) -> tuple[int, str] | None:
    """Return (index, message) of the first bad range in ``ranges``, or None when all are fine.

    The index of an overlap is the later of the two ranges in the list, the one that added it.
    """
    spans: list[tuple[_Span, int]] = []
    for index, pair in enumerate(ranges):
        try:
            spans.append((_span(pair), index))
        except ValueError as exc:
            return index, str(exc)
    spans.sort()
    for (first, first_index), (second, second_index) in pairwise(spans):
        if second[0] < first[1]:
            earlier, later = (first, second) if first_index < second_index else (second, first)
            index = max(first_index, second_index)
            return index, f"{_format_span(later)} overlaps {_format_span(earlier)}"
    return None


def _spans(ranges: Sequence[TimeRange], what: str) -> tuple[_Span, ...]:
    """Check ``ranges`` and return them sorted, with touching ranges joined."""
    if isinstance(ranges, str):
        raise ValueError(
            f"{what}: expected a list of (start, end) ranges, got the text {ranges!r}; "
            "parse_time_range() turns it into a range"
        )
    if isinstance(ranges, tuple) and ranges and isinstance(ranges[0], time):
        raise ValueError(f"{what}: expected a list of (start, end) ranges, got one range")
    problem = _range_problem(ranges)
    if problem is not None:
        raise ValueError(f"{what}: {problem[1]}")
    joined: list[_Span] = []
    for span in sorted(_span(pair) for pair in ranges):
        if joined and span[0] <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(joined[-1][1], span[1]))
        else:
            joined.append(span)
    return tuple(joined)


def _ranges(spans: tuple[_Span, ...]) -> tuple[TimeRange, ...]:
    base = datetime(2000, 1, 1)
    return tuple(((base + start).time(), (base + end).time()) for start, end in spans)


# -- the calendar --------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class BusinessCalendar:
    """Working hours per weekday in one time zone, with holidays and extra working days.

    Attributes:
        name: the calendar's name (``office``).
        timezone: the IANA zone the hours are wall-clock times in (``Asia/Shanghai``).
        hours: working ranges by weekday, ``0`` = Monday to ``6`` = Sunday; a weekday that is
            missing or has no ranges is not a working day. Ranges are stored sorted, with
            touching ranges joined.
        holidays: dates without working time, whatever their weekday.
        extra_working_days: dates whose working ranges replace their weekday's, e.g. a
            Saturday made a working day, or a shortened day before a holiday.

    Every method takes time-zone-aware datetimes (a naive one raises ``ValueError``) and
    returns UTC datetimes.

    """

    name: str
    timezone: str = "UTC"
    hours: Mapping[int, Sequence[TimeRange]] = field(default_factory=dict, hash=False)
    holidays: Set[date] = frozenset()
    extra_working_days: Mapping[date, Sequence[TimeRange]] = field(default_factory=dict, hash=False)
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _week: tuple[tuple[_Span, ...], ...] = field(init=False, repr=False, compare=False)
    _extra: Mapping[date, tuple[_Span, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check every part and store immutable, normalized copies."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a calendar needs a name, got {self.name!r}")
        zone = zone_info(self.timezone)
        week: list[tuple[_Span, ...]] = [()] * 7
        for weekday, ranges in self.hours.items():
            if not isinstance(weekday, int) or isinstance(weekday, bool) or not 0 <= weekday < 7:
                raise ValueError(
                    f"calendar {self.name!r}: weekday must be 0 (Monday) to 6 (Sunday), "
                    f"got {weekday!r}"
                )
            week[weekday] = _spans(ranges, f"calendar {self.name!r}, {WEEKDAYS[weekday]}")
        holidays = frozenset(self.holidays)
        for day in holidays:
            if not isinstance(day, date) or isinstance(day, datetime):
                raise ValueError(f"calendar {self.name!r}: expected a holiday date, got {day!r}")
        extra: dict[date, tuple[_Span, ...]] = {}
        for day, ranges in self.extra_working_days.items():
            if not isinstance(day, date) or isinstance(day, datetime):
                raise ValueError(f"calendar {self.name!r}: expected a date, got {day!r}")
            if day in holidays:
                raise ValueError(
                    f"calendar {self.name!r}: {day.isoformat()} is both a holiday and an "
                    "extra working day"
                )
            extra[day] = _spans(ranges, f"calendar {self.name!r}, {day.isoformat()}")
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_week", tuple(week))
        object.__setattr__(self, "_extra", MappingProxyType(extra))
        object.__setattr__(
            self,
            "hours",
            MappingProxyType({day: _ranges(spans) for day, spans in enumerate(week) if spans}),
        )
        object.__setattr__(self, "holidays", holidays)
        object.__setattr__(
            self,
            "extra_working_days",
            MappingProxyType({day: _ranges(spans) for day, spans in sorted(extra.items())}),
        )

    def __repr__(self) -> str:
        # The field values are long nested tuples of datetime.time; ranges read far better.
        days = "; ".join(
            f"{WEEKDAYS[day]} " + ", ".join(_format_span(span) for span in spans)
            for day, spans in enumerate(self._week)
            if spans
        )
        return (
            f"BusinessCalendar(name={self.name!r}, timezone={self.timezone!r}, "
            f"hours=<{days or 'none'}>, holidays=<{len(self.holidays)} dates>, "
            f"extra_working_days=<{len(self._extra)} dates>)"
        )

    @property
    def zone(self) -> ZoneInfo:
        """The calendar's time zone."""
        return self._zone

    # -- queries ---------------------------------------------------------------------------

    def is_working(self, moment: datetime) -> bool:
        """Whether ``moment`` is working time (a range's start is, its end is not)."""
        at = as_utc(moment)
        return any(start <= at for start, _ in self._intervals(at, stop=at))

    def next_working_moment(self, moment: datetime) -> datetime:
        """Return ``moment`` when it is working time, else the start of the next working range.

        Raises:
            ValueError: when there is no working time in the :data:`SEARCH_DAYS` days ahead.

        """
        at = as_utc(moment)
        for start, _ in self._intervals(at):
            return max(start, at)
        raise AssertionError("unreachable: _intervals raises when it finds nothing")

    def add_working_time(self, start: datetime, duration: timedelta) -> datetime:
        """Return the moment when ``duration`` of working time has passed since ``start``.

        Counting begins at ``start``, or at the next working moment when ``start`` is outside
        working time. A result that falls on the end of a range is that end (18:00), never the
        start of the next range. A zero duration returns ``start`` itself, even outside
        working time.

        Raises:
            ValueError: for a negative duration, or when the calendar runs out of working time
                (no working time in :data:`SEARCH_DAYS` days).

        """
        at = as_utc(start, "start")
        if not isinstance(duration, timedelta):
            raise TypeError(f"duration must be a timedelta, got {type(duration).__name__}")
        if duration < _ZERO:
            raise ValueError(f"duration must not be negative, got {duration}")
        if not duration:
            return at
        remaining = duration
        for begin, end in self._intervals(at):
            begin = max(begin, at)
            available = end - begin
            if remaining <= available:
                return begin + remaining
            remaining -= available
        raise AssertionError("unreachable: _intervals raises when it finds nothing")

    def working_time_between(self, start: datetime, end: datetime) -> timedelta:
        """Return the working time in ``[start, end)``; negative when ``end`` is before ``start``.

        For ``end >= start``, ``add_working_time(start, working_time_between(start, end))`` is
        at or before ``end``, with no working time between the two; and
        ``working_time_between(start, add_working_time(start, duration))`` is ``duration``.
        """
        low, high = as_utc(start, "start"), as_utc(end, "end")
        if high < low:
            return -self.working_time_between(high, low)
        total = _ZERO
        for begin, finish in self._intervals(low, stop=high):
            if begin >= high:
                break
            total += min(finish, high) - max(begin, low)
        return total

    # -- intervals -------------------------------------------------------------------------

    def _day_spans(self, day: date) -> tuple[_Span, ...]:
        if day in self._extra:
            return self._extra[day]
        if day in self.holidays:
            return ()
        return self._week[day.weekday()]

    def _intervals(
        self, after: datetime, stop: datetime | None = None
    ) -> Iterator[tuple[datetime, datetime]]:
        """Yield the UTC working intervals that end after ``after``, in order.

        With ``stop``, ends after the last day that starts at or before ``stop``; without it,
        goes on for as long as the caller asks, and raises ``ValueError`` after
        :data:`SEARCH_DAYS` days without working time.
        """
        zone = self._zone
        # Earlier days end at or before this day's midnight, which is at or before ``after``.
        day = after.astimezone(zone).date()
        last_found = day
        try:
            while True:
                midnight = datetime.combine(day, time())
                if stop is not None and wall_time_to_utc(midnight, zone) > stop:
                    return
                for begin, end in self._day_spans(day):
                    start = wall_time_to_utc(midnight + begin, zone)
                    finish = wall_time_to_utc(midnight + end, zone)
                    # A range inside skipped hours has no working time that day.
                    if finish > after and finish > start:
                        last_found = day
                        yield start, finish
                if stop is None and (day - last_found).days > SEARCH_DAYS:
                    raise ValueError(
                        f"calendar {self.name!r} has no working time in the {SEARCH_DAYS} days "
                        f"after {after.isoformat()}"
                    )
                day += _DAY
        except OverflowError:
            raise ValueError(
                f"calendar {self.name!r} has no working time between {after.isoformat()} and "
                "the end of the supported date range"
            ) from None


#: The calendar for "no calendar configured": every moment is working time.
ALWAYS = BusinessCalendar(
    name="always", timezone="UTC", hours={day: [(time(0), time(0))] for day in range(7)}
)


# -- reading YAML ---------------------------------------------------------------------------

#: Keys of a calendar mapping: key -> required.
_KEYS: Mapping[str, bool] = MappingProxyType(
    {"calendar": True, "timezone": True, "hours": True, "holidays": False, "working_days": False}
)
_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATE_HINT = "write dates as YYYY-MM-DD, e.g. 2026-10-01"
#: The longest holiday span ``A..B``; a longer one is almost certainly a typo in a year.
_MAX_HOLIDAY_SPAN = 366
_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "a mapping",
}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    return _KIND_NAMES.get(type(value), type(value).__name__)


class _Reader:
    """Builds a calendar from the mapping at ``base`` in a document; raises on the first error."""

    def __init__(self, doc: YamlDocument, base: KeyPath, default_name: str | None) -> None:
        self.doc = doc
        self.base = base
        self.default_name = default_name

    def error(
        self,
        reason: str,
        path: KeyPath,
        *,
        at_key: bool = False,
        suggestions: Sequence[str] = (),
        hint: str = "",
    ) -> DefinitionError:
        """Return an error at ``path`` (relative to the calendar mapping)."""
        full = (*self.base, *path)
        pos = self.doc.key_pos(full) if at_key else self.doc.pos(full)
        return DefinitionError(
            reason,
            source=self.doc.source,
            line=pos.line,
            column=pos.column,
            path=format_path(full),
            suggestions=suggestions,
            hint=hint,
        )

    def value(self) -> Any:
        """The calendar mapping itself."""
        data: Any = self.doc.data
        for part in self.base:
            found = (isinstance(data, dict) and part in data) or (
                isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
            )
            if not found:
                raise self.error("no calendar here", ())
            data = data[part]
        return data

    def read(self) -> BusinessCalendar:
        """Check the mapping and build the calendar."""
        data = self.value()
        if not isinstance(data, dict):
            raise self.error(
                f"expected a mapping with 'calendar', 'timezone' and 'hours', got {_kind(data)}",
                (),
            )
        required = dict(_KEYS)
        if self.default_name is not None:
            required["calendar"] = False
        self.check_keys(data, required)
        name = self.name(data["calendar"]) if "calendar" in data else str(self.default_name)
        zone = self.timezone(data["timezone"])
        hours = self.hours(data["hours"])
        holidays = self.holidays(data.get("holidays", []))
        extra = self.working_days(data.get("working_days", {}), holidays)
        if not any(hours.values()) and not extra:
            raise self.error(
                "the calendar has no working hours",
                ("hours",),
                hint="give at least one weekday, e.g. mon-fri: 09:00-18:00",
            )
        return BusinessCalendar(
            name=name,
            timezone=zone,
            hours=hours,
            holidays=frozenset(holidays),
            extra_working_days=extra,
        )

    def check_keys(self, data: Mapping[str, Any], required: Mapping[str, bool]) -> None:
        """Raise on the first unknown key, then on the first missing required key."""
        for key in data:
            if key not in required:
                near = suggest(key, [k for k in required if k not in data] or list(required))
                raise self.error(
                    f"unknown key {key!r} in calendar",
                    (key,),
                    at_key=True,
                    suggestions=near,
                    hint="" if near else "allowed keys: " + ", ".join(required),
                )
        for key, needed in required.items():
            if needed and key not in data:
                raise self.error(f"missing required key {key!r} in calendar", (key,))

    def name(self, value: Any) -> str:
        """The calendar's name: an identifier like a workflow's."""
        if not isinstance(value, str):
            raise self.error(f"expected a calendar name, got {_kind(value)}", ("calendar",))
        if not _NAME.fullmatch(value):
            raise self.error(
                f"invalid calendar name {value!r}",
                ("calendar",),
                hint="use lower-case letters, digits and '_', not starting with a digit",
            )
        return value

    def timezone(self, value: Any) -> str:
        """An IANA zone name that this system knows."""
        path: KeyPath = ("timezone",)
        if not isinstance(value, str):
            raise self.error(
                f"expected a time zone name such as 'Europe/Berlin', got {_kind(value)}", path
            )
        try:
            zone_info(value)
        except ValueError:
            raise self.error(
                f"unknown time zone {value!r}",
                path,
                suggestions=_zone_suggestions(value),
                hint="use an IANA name such as 'Europe/Berlin', 'Asia/Shanghai' or 'UTC'",
            ) from None
        return value

    def hours(self, value: Any) -> dict[int, tuple[TimeRange, ...]]:
        """The weekday table; keys are weekdays (``mon``) or spans of them (``mon-fri``)."""
        if not isinstance(value, dict):
            raise self.error(
                f"expected a mapping of weekdays to hours, got {_kind(value)}",
                ("hours",),
                hint="e.g. hours: {mon-fri: 09:00-18:00}",
            )
        table: dict[int, tuple[TimeRange, ...]] = {}
        given_by: dict[int, str] = {}
        for key, ranges in value.items():
            path: KeyPath = ("hours", key)
            days = self.weekdays(key, path)
            for day in days:
                if day in given_by:
                    first = self.doc.key_pos((*self.base, "hours", given_by[day]))
                    raise self.error(
                        f"{WEEKDAYS[day]} is given twice (also in {given_by[day]!r} at line "
                        f"{first.line})",
                        path,
                        at_key=True,
                    )
                given_by[day] = key
            parsed = self.ranges(ranges, path, allow_empty=True)
            for day in days:
                table[day] = parsed
        return table

    def weekdays(self, key: str, path: KeyPath) -> list[int]:
        """The weekday numbers a key of ``hours`` names."""
        parts = key.split("-")
        if len(parts) > 2:
            raise self.error(
                f"unknown weekday {key!r}",
                path,
                at_key=True,
                hint="use mon, tue, wed, thu, fri, sat, sun or a span such as mon-fri",
            )
        numbers: list[int] = []
        for part in parts:
            if part not in WEEKDAYS:
                # "Monday", "thurs": the first three letters name the day.
                prefix = part[:3].lower()
                near = (prefix,) if prefix in WEEKDAYS else suggest(part, WEEKDAYS, n=1)
                suggestions = tuple(key.replace(part, n, 1) for n in near)
                raise self.error(
                    f"unknown weekday {part!r}" + (f" in {key!r}" if len(parts) > 1 else ""),
                    path,
                    at_key=True,
                    suggestions=suggestions,
                    hint="use mon, tue, wed, thu, fri, sat, sun or a span such as mon-fri",
                )
            numbers.append(WEEKDAYS.index(part))
        if len(numbers) == 2 and numbers[1] < numbers[0]:
            raise self.error(
                f"weekday span {key!r} runs backwards",
                path,
                at_key=True,
                hint="write spans in week order, Monday to Sunday (e.g. mon-fri); "
                "split one that wraps the week into two keys",
            )
        return list(range(numbers[0], numbers[-1] + 1))

    def ranges(self, value: Any, path: KeyPath, *, allow_empty: bool) -> tuple[TimeRange, ...]:
        """One range (``"09:00-18:00"``) or a list of them, checked for order and overlap."""
        if isinstance(value, str):
            items: list[tuple[Any, KeyPath]] = [(value, path)]
        elif isinstance(value, list):
            items = [(item, (*path, index)) for index, item in enumerate(value)]
        else:
            hint = "write [] for a day without working hours, or leave the day out"
            raise self.error(
                f"expected a time range such as 09:00-18:00 or a list of them, got {_kind(value)}",
                path,
                # An empty value has no text of its own to point at.
                at_key=value is None,
                hint=hint if allow_empty else "",
            )
        if not items and not allow_empty:
            raise self.error(
                "an extra working day needs at least one time range",
                path,
                hint="list days off under holidays",
            )
        parsed: list[TimeRange] = []
        for item, item_path in items:
            if not isinstance(item, str):
                raise self.error(
                    f"expected a time range such as 09:00-18:00, got {_kind(item)}", item_path
                )
            try:
                parsed.append(parse_time_range(item))
            except ValueError as exc:
                raise self.error(str(exc), item_path) from None
        problem = _range_problem(parsed)
        if problem is not None:
            raise self.error(problem[1], items[problem[0]][1])
        return tuple(parsed)

    def parse_date(self, value: Any, path: KeyPath, *, at_key: bool = False) -> date:
        """An ISO date ``YYYY-MM-DD``."""
        if not isinstance(value, str):
            raise self.error(
                f"expected a date such as 2026-10-01, got {_kind(value)}",
                path,
                at_key=at_key,
                hint=_DATE_HINT,
            )
        text = value.strip()
        problem = ""
        if _DATE.fullmatch(text):
            try:
                return date.fromisoformat(text)
            except ValueError as exc:
                problem = f" ({exc})"
        raise self.error(
            f"{value!r} is not a valid date{problem}", path, at_key=at_key, hint=_DATE_HINT
        )

    def holidays(self, value: Any) -> dict[date, KeyPath]:
        """The holiday list: dates and inclusive spans ``2026-10-01..2026-10-07``."""
        if not isinstance(value, list):
            raise self.error(
                f"expected a list of dates, got {_kind(value)}",
                ("holidays",),
                hint="e.g. holidays: [2026-10-01, 2026-12-24..2026-12-26]",
            )
        found: dict[date, KeyPath] = {}
        for index, item in enumerate(value):
            path: KeyPath = ("holidays", index)
            if isinstance(item, str) and ".." in item:
                first_text, _, last_text = item.partition("..")
                first, last = self.parse_date(first_text, path), self.parse_date(last_text, path)
                if last < first:
                    raise self.error(f"holiday span {item!r} ends before it starts", path)
                if (last - first).days >= _MAX_HOLIDAY_SPAN:
                    raise self.error(
                        f"holiday span {item!r} is longer than {_MAX_HOLIDAY_SPAN} days", path
                    )
                days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
            else:
                days = [self.parse_date(item, path)]
            for day in days:
                if day in found:
                    line = self.doc.pos((*self.base, *found[day])).line
                    raise self.error(
                        f"{day.isoformat()} is listed twice (also at line {line})", path
                    )
                found[day] = path
        return found

    def working_days(
        self, value: Any, holidays: Mapping[date, KeyPath]
    ) -> dict[date, tuple[TimeRange, ...]]:
        """Extra working days: date -> ranges, never also a holiday."""
        if not isinstance(value, dict):
            raise self.error(
                f"expected a mapping of dates to hours, got {_kind(value)}",
                ("working_days",),
                hint="e.g. working_days: {2026-09-27: 09:00-18:00}",
            )
        days: dict[date, tuple[TimeRange, ...]] = {}
        for key, ranges in value.items():
            path: KeyPath = ("working_days", key)
            day = self.parse_date(key, path, at_key=True)
            if day in days:
                raise self.error(f"{day.isoformat()} is given twice", path, at_key=True)
            if day in holidays:
                line = self.doc.pos((*self.base, *holidays[day])).line
                raise self.error(
                    f"{day.isoformat()} is both a holiday (line {line}) and a working day",
                    path,
                    at_key=True,
                    hint="remove it from one of the two lists",
                )
            days[day] = self.ranges(ranges, path, allow_empty=False)
        return days


def calendar_from_document(
    doc: YamlDocument, path: KeyPath = (), *, default_name: str | None = None
) -> BusinessCalendar:
    """Build a calendar from the mapping at ``path`` in a parsed document.

    ``path`` is ``()`` for a calendar file, or the key path of a ``calendar:`` section embedded
    in another document; errors name the full path (``calendar.hours.mon``). With
    ``default_name``, the mapping's ``calendar`` (name) key becomes optional.

    Raises:
        DefinitionError: at the first mistake, with its line, column and path.

    """
    return _Reader(doc, tuple(path), default_name).read()


def load_calendar_text(text: str, source: str = "<string>") -> BusinessCalendar:
    """Parse a calendar from YAML text (see ``docs/calendar.md``).

    Raises:
        DefinitionError: for invalid YAML or any mistake in the calendar.

    """
    return calendar_from_document(read_yaml_text(text, source))


def load_calendar_file(path: str | Path) -> BusinessCalendar:
    """Read a calendar from a YAML file (see :func:`load_calendar_text`).

    Raises:
        DefinitionError: when the file cannot be read or holds an invalid calendar.

    """
    return calendar_from_document(read_yaml_file(path))
