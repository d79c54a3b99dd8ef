"""BusinessCalendar: working time, holidays, daylight saving, and reading calendars from YAML."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmflow._errors import DefinitionError
from crmflow.engine._calendar import (
    ALWAYS,
    SEARCH_DAYS,
    BusinessCalendar,
    as_utc,
    calendar_from_document,
    load_calendar_file,
    load_calendar_text,
    parse_time_range,
    wall_time_to_utc,
    zone_info,
)
from crmflow.engine._yaml import read_yaml_text

BERLIN = ZoneInfo("Europe/Berlin")
SHANGHAI = ZoneInfo("Asia/Shanghai")
NINE_TO_SIX = (time(9), time(18))
WEEKDAYS_ONLY = range(5)

OFFICE = BusinessCalendar(
    "office", "Europe/Berlin", hours={day: [NINE_TO_SIX] for day in WEEKDAYS_ONLY}
)
LUNCH = BusinessCalendar(
    "lunch",
    "Europe/Berlin",
    hours={day: [(time(9), time(12)), (time(13), time(18))] for day in WEEKDAYS_ONLY},
)
ROUND_THE_CLOCK = BusinessCalendar(
    "round_the_clock", "Europe/Berlin", hours={day: [(time(0), time(0))] for day in range(7)}
)
# Hours right where Berlin's clocks change (02:00-03:00 on the last Sundays of March/October).
NIGHT = BusinessCalendar(
    "night",
    "Europe/Berlin",
    hours={6: [(time(1), time(3))], 5: [(time(2), time(2, 30)), (time(22), time(0))]},
)
# Golden Week 2026 with its make-up working days (Sunday 27 September, Saturday 10 October).
CHINA = BusinessCalendar(
    "china",
    "Asia/Shanghai",
    hours={day: [(time(9), time(12)), (time(13), time(18))] for day in WEEKDAYS_ONLY},
    holidays=frozenset(date(2026, 10, day) for day in range(1, 8)),
    extra_working_days={
        date(2026, 9, 27): [NINE_TO_SIX],
        date(2026, 10, 10): [(time(9), time(12))],
    },
)


def berlin(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=BERLIN)


def shanghai(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=SHANGHAI)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


# -- the acceptance example --------------------------------------------------------------------


def test_24_working_hours_from_friday_afternoon_end_wednesday_noon() -> None:
    # Fri 3h + Mon 9h + Tue 9h + Wed 3h.
    friday = berlin(2026, 1, 9, 15)
    assert OFFICE.add_working_time(friday, hours(24)) == berlin(2026, 1, 14, 12)
    assert OFFICE.working_time_between(friday, berlin(2026, 1, 14, 12)) == hours(24)


def test_results_are_utc() -> None:
    result = OFFICE.add_working_time(berlin(2026, 1, 9, 15), hours(24))
    assert result.tzinfo is UTC
    assert result == datetime(2026, 1, 14, 11, tzinfo=UTC)
    assert OFFICE.next_working_moment(berlin(2026, 1, 5, 10)).tzinfo is UTC
    assert OFFICE.add_working_time(berlin(2026, 1, 10, 10), timedelta(0)).tzinfo is UTC


# -- is_working ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (berlin(2026, 1, 5, 8, 59, 59), False),
        (berlin(2026, 1, 5, 9), True),
        (berlin(2026, 1, 5, 11, 59), True),
        (berlin(2026, 1, 5, 12), False),
        (berlin(2026, 1, 5, 12, 30), False),
        (berlin(2026, 1, 5, 13), True),
        (datetime(2026, 1, 5, 16, 59, 59, 999999, tzinfo=UTC), True),
        (berlin(2026, 1, 5, 18), False),
        (berlin(2026, 1, 10, 10), False),
        (berlin(2026, 1, 11, 10), False),
    ],
)
def test_is_working_with_a_lunch_break(moment: datetime, expected: bool) -> None:
    assert LUNCH.is_working(moment) is expected


def test_is_working_uses_the_calendar_zone_not_the_moment_zone() -> None:
    # 09:30 in Shanghai is 02:30 in Berlin: working in China, not in the Berlin office.
    moment = shanghai(2026, 1, 6, 9, 30)
    assert CHINA.is_working(moment)
    assert not OFFICE.is_working(moment)


def test_holidays_and_extra_working_days() -> None:
    assert not CHINA.is_working(shanghai(2026, 10, 1, 10))  # a Thursday in Golden Week
    assert CHINA.is_working(shanghai(2026, 9, 27, 17))  # Sunday made a working day
    assert CHINA.is_working(shanghai(2026, 10, 10, 11))  # Saturday, short day
    assert not CHINA.is_working(shanghai(2026, 10, 10, 13))
    assert not CHINA.is_working(shanghai(2026, 10, 4, 10))  # an ordinary Sunday off


# -- next_working_moment ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (berlin(2026, 1, 5, 10, 15), berlin(2026, 1, 5, 10, 15)),
        (berlin(2026, 1, 5, 9), berlin(2026, 1, 5, 9)),
        (berlin(2026, 1, 5, 7), berlin(2026, 1, 5, 9)),
        (berlin(2026, 1, 5, 12, 30), berlin(2026, 1, 5, 13)),
        (berlin(2026, 1, 9, 18), berlin(2026, 1, 12, 9)),
        (berlin(2026, 1, 10, 11), berlin(2026, 1, 12, 9)),
    ],
)
def test_next_working_moment(moment: datetime, expected: datetime) -> None:
    assert LUNCH.next_working_moment(moment) == expected


def test_next_working_moment_skips_holidays_and_finds_make_up_days() -> None:
    assert CHINA.next_working_moment(shanghai(2026, 9, 30, 18)) == shanghai(2026, 10, 8, 9)
    assert CHINA.next_working_moment(shanghai(2026, 9, 26, 10)) == shanghai(2026, 9, 27, 9)
    assert CHINA.next_working_moment(shanghai(2026, 10, 9, 18)) == shanghai(2026, 10, 10, 9)


def test_a_calendar_without_working_time_fails_instead_of_searching_forever() -> None:
    empty = BusinessCalendar("closed", "Europe/Berlin")
    with pytest.raises(
        ValueError, match=rf"'closed' has no working time in the {SEARCH_DAYS} days"
    ):
        empty.next_working_moment(berlin(2026, 1, 5, 9))
    with pytest.raises(ValueError, match="no working time"):
        empty.add_working_time(berlin(2026, 1, 5, 9), hours(1))
    assert empty.working_time_between(berlin(2026, 1, 1), berlin(2030, 1, 1)) == timedelta(0)
    assert not empty.is_working(berlin(2026, 1, 5, 9))


def test_a_rare_working_day_within_the_search_limit_is_found() -> None:
    once = BusinessCalendar("once", "UTC", extra_working_days={date(2027, 6, 1): [NINE_TO_SIX]})
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert once.next_working_moment(start) == datetime(2027, 6, 1, 9, tzinfo=UTC)
    assert once.add_working_time(start, hours(9)) == datetime(2027, 6, 1, 18, tzinfo=UTC)
    with pytest.raises(ValueError, match="no working time"):
        once.add_working_time(start, hours(10))


# -- add_working_time --------------------------------------------------------------------------


def test_adding_exactly_the_rest_of_the_day_ends_at_closing_time() -> None:
    monday = berlin(2026, 1, 5, 15)
    assert OFFICE.add_working_time(monday, hours(3)) == berlin(2026, 1, 5, 18)
    after = OFFICE.add_working_time(monday, hours(3) + timedelta(microseconds=1))
    assert after == berlin(2026, 1, 6, 9) + timedelta(microseconds=1)


def test_adding_up_to_lunch_ends_at_noon_not_after_lunch() -> None:
    assert LUNCH.add_working_time(berlin(2026, 1, 5, 9), hours(3)) == berlin(2026, 1, 5, 12)
    assert LUNCH.add_working_time(berlin(2026, 1, 5, 11), hours(2)) == berlin(2026, 1, 5, 14)


def test_counting_starts_at_the_next_working_moment() -> None:
    saturday = berlin(2026, 1, 10, 11)
    assert OFFICE.add_working_time(saturday, hours(2)) == berlin(2026, 1, 12, 11)
    lunch = berlin(2026, 1, 5, 12, 30)
    assert LUNCH.add_working_time(lunch, hours(1)) == berlin(2026, 1, 5, 14)


def test_zero_duration_returns_start_even_outside_working_time() -> None:
    saturday = berlin(2026, 1, 10, 11)
    assert OFFICE.add_working_time(saturday, timedelta(0)) == saturday


def test_negative_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        OFFICE.add_working_time(berlin(2026, 1, 5, 9), hours(-1))


def test_holiday_week_is_skipped() -> None:
    # Wednesday 17:00: one hour left that day, the next one on Thursday after Golden Week.
    assert CHINA.add_working_time(shanghai(2026, 9, 30, 17), hours(2)) == shanghai(2026, 10, 8, 10)


def test_always_adds_plain_elapsed_time() -> None:
    start = datetime(2026, 3, 28, 23, 30, tzinfo=UTC)
    assert ALWAYS.name == "always"
    assert ALWAYS.is_working(start)
    assert ALWAYS.next_working_moment(start) == start
    assert ALWAYS.add_working_time(start, hours(50)) == start + hours(50)
    assert ALWAYS.working_time_between(start, start + hours(50)) == hours(50)


# -- working_time_between -------------------------------------------------------------------------


def test_working_time_between() -> None:
    assert LUNCH.working_time_between(berlin(2026, 1, 5, 8), berlin(2026, 1, 5, 20)) == hours(8)
    assert LUNCH.working_time_between(berlin(2026, 1, 5, 11), berlin(2026, 1, 5, 14)) == hours(2)
    saturday, sunday = berlin(2026, 1, 10, 9), berlin(2026, 1, 11, 23)
    assert LUNCH.working_time_between(saturday, sunday) == timedelta(0)
    golden_week = CHINA.working_time_between(shanghai(2026, 9, 25, 9), shanghai(2026, 10, 12, 9))
    # Fri 25 Sep 8h, Sun 27 Sep 9h, Mon-Wed 3 x 8h, Thu-Fri 8-9 Oct 2 x 8h, Sat 10 Oct 3h.
    assert golden_week == hours(8 + 9 + 24 + 16 + 3)


def test_working_time_between_is_negative_when_reversed() -> None:
    a, b = berlin(2026, 1, 5, 10), berlin(2026, 1, 6, 10)
    assert OFFICE.working_time_between(b, a) == -hours(9)
    assert OFFICE.working_time_between(a, a) == timedelta(0)


# -- daylight saving ---------------------------------------------------------------------------


def test_office_hours_stay_local_across_the_spring_change() -> None:
    # Friday 27 March is CET (UTC+1); Monday 30 March is CEST (UTC+2).
    result = OFFICE.add_working_time(berlin(2026, 3, 27, 17), hours(2))
    assert result == berlin(2026, 3, 30, 10)
    assert result == datetime(2026, 3, 30, 8, tzinfo=UTC)
    assert OFFICE.next_working_moment(berlin(2026, 3, 27, 18)) == datetime(
        2026, 3, 30, 7, tzinfo=UTC
    )


def test_office_hours_stay_local_across_the_autumn_change() -> None:
    result = OFFICE.add_working_time(berlin(2026, 10, 23, 17), hours(2))
    assert result == datetime(2026, 10, 26, 9, tzinfo=UTC)  # 10:00 CET


def test_a_day_of_clock_changes_has_23_or_25_hours() -> None:
    spring = ROUND_THE_CLOCK.working_time_between(berlin(2026, 3, 29), berlin(2026, 3, 30))
    autumn = ROUND_THE_CLOCK.working_time_between(berlin(2026, 10, 25), berlin(2026, 10, 26))
    assert (spring, autumn) == (hours(23), hours(25))
    assert ROUND_THE_CLOCK.add_working_time(berlin(2026, 3, 29), hours(23)) == berlin(2026, 3, 30)


def test_hours_around_the_skipped_hour() -> None:
    # Sunday 29 March 01:00-03:00 local is one real hour; Saturday's 02:00-02:30 exists.
    sunday = NIGHT.working_time_between(berlin(2026, 3, 29), berlin(2026, 3, 30))
    assert sunday == hours(1)
    assert NIGHT.is_working(datetime(2026, 3, 29, 0, 30, tzinfo=UTC))  # 01:30 CET
    assert not NIGHT.is_working(datetime(2026, 3, 29, 1, 0, tzinfo=UTC))  # 03:00 CEST
    assert NIGHT.add_working_time(berlin(2026, 3, 29, 1), hours(1)) == berlin(2026, 3, 29, 3)


def test_a_range_entirely_inside_the_skipped_hour_has_no_working_time() -> None:
    calendar = BusinessCalendar("gap", "Europe/Berlin", hours={6: [(time(2), time(2, 30))]})
    sunday = calendar.working_time_between(berlin(2026, 3, 29), berlin(2026, 3, 30))
    assert sunday == timedelta(0)
    assert calendar.next_working_moment(berlin(2026, 3, 28)) == datetime(
        2026, 4, 5, 0, tzinfo=UTC
    )  # the next Sunday's 02:00 CEST


def test_hours_around_the_repeated_hour() -> None:
    # Sunday 25 October 01:00 CEST to 03:00 CET is three real hours.
    sunday = NIGHT.working_time_between(berlin(2026, 10, 25), berlin(2026, 10, 26))
    assert sunday == hours(3)
    second_pass = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET
    assert second_pass.astimezone(BERLIN).fold == 1
    assert NIGHT.is_working(second_pass)
    assert not NIGHT.is_working(datetime(2026, 10, 25, 2, 0, tzinfo=UTC))  # 03:00 CET


def test_wall_time_to_utc() -> None:
    assert wall_time_to_utc(datetime(2026, 1, 5, 9), BERLIN) == datetime(2026, 1, 5, 8, tzinfo=UTC)
    # Skipped: the moment the clocks skip to (03:00 CEST).
    skipped = wall_time_to_utc(datetime(2026, 3, 29, 2, 30), BERLIN)
    assert skipped == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    # Repeated: the first pass (02:30 CEST).
    repeated = wall_time_to_utc(datetime(2026, 10, 25, 2, 30), BERLIN)
    assert repeated == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    # Lord Howe Island moves its clocks by half an hour.
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    skipped = wall_time_to_utc(datetime(2026, 10, 4, 2, 15), lord_howe)
    assert skipped.astimezone(lord_howe).replace(tzinfo=None) == datetime(2026, 10, 4, 2, 30)
    with pytest.raises(ValueError, match="naive wall-clock"):
        wall_time_to_utc(berlin(2026, 1, 5, 9), BERLIN)


# -- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: OFFICE.is_working(m),
        lambda m: OFFICE.next_working_moment(m),
        lambda m: OFFICE.add_working_time(m, hours(1)),
        lambda m: OFFICE.working_time_between(m, berlin(2026, 1, 6)),
        lambda m: OFFICE.working_time_between(berlin(2026, 1, 6), m),
    ],
)
def test_naive_datetimes_are_refused(call: object) -> None:
    with pytest.raises(ValueError, match=r"time-zone aware.*2026-01-05T09:00:00"):
        call(datetime(2026, 1, 5, 9))  # type: ignore[operator]


def test_as_utc_refuses_what_is_not_a_datetime() -> None:
    with pytest.raises(TypeError, match="must be a datetime, got date"):
        as_utc(date(2026, 1, 5))  # type: ignore[arg-type]


def test_unknown_zone_suggests_close_names() -> None:
    with pytest.raises(ValueError, match=r"unknown time zone 'Asia/Shangai'.*'Asia/Shanghai'"):
        zone_info("Asia/Shangai")
    with pytest.raises(ValueError, match=r"unknown time zone '\.\./etc/passwd'"):
        zone_info("../etc/passwd")
    with pytest.raises(ValueError, match="unknown time zone 'Europe/Berln'"):
        BusinessCalendar("office", "Europe/Berln")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hours": {0: [(time(9), time(13)), (time(12), time(18))]}}, "12:00-18:00 overlaps"),
        ({"hours": {0: [(time(18), time(9))]}}, "ends before it starts.*cross midnight"),
        ({"hours": {0: [(time(9), time(9))]}}, "09:00-09:00 is empty"),
        ({"hours": {7: [NINE_TO_SIX]}}, "weekday must be 0"),
        ({"hours": {0: NINE_TO_SIX}}, "got one range"),
        ({"hours": {0: "09:00-18:00"}}, "parse_time_range"),
        ({"hours": {0: [(time(9, tzinfo=UTC), time(18))]}}, "has a tzinfo"),
        (
            {
                "holidays": frozenset({date(2026, 10, 1)}),
                "extra_working_days": {date(2026, 10, 1): [NINE_TO_SIX]},
            },
            "both a holiday and an extra working day",
        ),
        ({"name": ""}, "needs a name"),
        ({"holidays": frozenset({"2026-10-01"})}, "expected a holiday date, got '2026-10-01'"),
        ({"extra_working_days": {datetime(2026, 10, 1): [NINE_TO_SIX]}}, "expected a date"),
    ],
)
def test_constructor_checks(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {"name": "office", "timezone": "UTC", **kwargs}
    with pytest.raises(ValueError, match=match):
        BusinessCalendar(**arguments)  # type: ignore[arg-type]


def test_calendars_are_immutable_and_normalized() -> None:
    table = {0: [(time(13), time(18)), (time(9), time(12)), (time(12), time(13))]}
    calendar = BusinessCalendar("office", "UTC", hours=table)
    table[0].append((time(20), time(21)))
    assert calendar.hours == {0: ((time(9), time(18)),)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        calendar.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        calendar.hours[1] = ()  # type: ignore[index]
    assert calendar == BusinessCalendar("office", "UTC", hours={0: [NINE_TO_SIX]})
    assert hash(calendar) == hash(BusinessCalendar("office", "UTC", hours={0: [NINE_TO_SIX]}))
    assert calendar.zone == ZoneInfo("UTC")
    assert "hours=<mon 09:00-18:00>" in repr(calendar)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("09:00-18:00", (time(9), time(18))),
        (" 9:30 - 12:15 ", (time(9, 30), time(12, 15))),
        ("22:00-24:00", (time(22), time(0))),
        ("00:00-24:00", (time(0), time(0))),
    ],
)
def test_parse_time_range(text: str, expected: tuple[time, time]) -> None:
    assert parse_time_range(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("9-18", "is not a time range: write HH:MM-HH:MM"),
        ("09:00", "is not a time range"),
        ("09:60-18:00", "minute 60 is out of range"),
        ("09:00-25:00", "25:00 is not a time of day"),
        ("24:00-24:00", "cannot start at 24:00"),
        ("24:30-24:45", "24:30 is not a time of day"),
        ("18:00-09:00", "ends before it starts"),
    ],
)
def test_parse_time_range_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_time_range(text)


# -- YAML ----------------------------------------------------------------------------------------

BASE = """\
calendar: china
timezone: Asia/Shanghai
hours:
  mon-fri: ["09:00-12:00", "13:00-18:00"]
  sat: []
holidays: [2026-10-01..2026-10-07]
working_days:
  2026-09-27: 09:00-18:00
  2026-10-10: [09:00-12:00]
"""


def test_yaml_calendar_equals_the_constructed_one() -> None:
    assert load_calendar_text(BASE) == CHINA


def test_yaml_calendar_file(tmp_path: Path) -> None:
    path = tmp_path / "china.yaml"
    path.write_text(BASE, encoding="utf-8")
    assert load_calendar_file(path) == CHINA
    path.write_text(BASE.replace("sat: []", "sat: [1]"), encoding="utf-8")
    with pytest.raises(DefinitionError) as info:
        load_calendar_file(path)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}:5:9: hours.sat[0]: ")
    with pytest.raises(DefinitionError, match="cannot read file"):
        load_calendar_file(tmp_path / "missing.yaml")


def test_yaml_single_weekdays_and_full_days() -> None:
    calendar = load_calendar_text(
        "calendar: support\ntimezone: UTC\nhours:\n  sat: 10:00-14:00\n  sun: 00:00-24:00\n"
    )
    assert calendar.hours == {5: ((time(10), time(14)),), 6: ((time(0), time(0)),)}
    assert calendar.holidays == frozenset()


@dataclass(frozen=True)
class Case:
    """A change to BASE and where the error must point (``at`` is where the value starts)."""

    id: str
    old: str
    new: str
    path: str
    match: str
    at: str
    suggestions: tuple[str, ...] = ()
    nth: int = 0

    def text(self) -> str:
        assert self.old in BASE, self.old
        return BASE.replace(self.old, self.new, 1)

    def where(self) -> tuple[int, int]:
        text = self.text()
        offset = -1
        for _ in range(self.nth + 1):
            offset = text.index(self.at, offset + 1)
        line = text.count("\n", 0, offset) + 1
        column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        return line, column


CASES = [
    Case("unknown-key", "holidays:", "holiday:", "holiday", "unknown key 'holiday'", "holiday",
         ("holidays",)),
    Case("missing-timezone", "timezone: Asia/Shanghai\n", "", "timezone",
         "missing required key 'timezone'", "calendar"),
    Case("unknown-zone", "Asia/Shanghai", "Asia/Shangai", "timezone",
         "unknown time zone 'Asia/Shangai'", "Asia/Shangai", ("Asia/Shanghai",)),
    Case("zone-not-text", "Asia/Shanghai", "8", "timezone", "expected a time zone name", "8"),
    Case("bad-name", "calendar: china", "calendar: China HQ", "calendar",
         "invalid calendar name 'China HQ'", "China HQ"),
    Case("long-weekday-name", "sat: []", "saturday: []", "hours.saturday",
         "unknown weekday 'saturday'", "saturday", ("sat",)),
    Case("bad-weekday-in-span", "mon-fri:", "mon-fry:", "hours.mon-fry",
         "unknown weekday 'fry' in 'mon-fry'", "mon-fry", ("mon-fri",)),
    Case("backwards-span", "mon-fri:", "fri-mon:", "hours.fri-mon", "runs backwards", "fri-mon"),
    Case("weekday-twice", "sat: []", "fri: []", "hours.fri",
         "fri is given twice (also in 'mon-fri' at line 4)", "fri: []"),
    Case("not-a-range", "sat: []", "sat: 9-12", "hours.sat", "'9-12' is not a time range",
         "9-12"),
    Case("range-backwards", "sat: []", "sat: 12:00-09:00", "hours.sat",
         "12:00-09:00 ends before it starts", "12:00-09"),
    Case("hour-out-of-range", "sat: []", "sat: 09:00-25:00", "hours.sat",
         "25:00 is not a time of day", "09:00-25"),
    Case("minute-out-of-range", '"13:00-18:00"', '"13:00-18:61"', "hours.mon-fri[1]",
         "minute 61 is out of range", "13:00-18:61"),
    Case("overlap", '"13:00-18:00"', '"11:00-18:00"', "hours.mon-fri[1]",
         "11:00-18:00 overlaps 09:00-12:00", "11:00-18:00"),
    Case("overlap-written-first", '["09:00-12:00", "13:00-18:00"]',
         '["09:00-14:00", "13:00-18:00"]', "hours.mon-fri[1]",
         "13:00-18:00 overlaps 09:00-14:00", "13:00-18:00"),
    Case("day-without-value", "sat: []", "sat:", "hours.sat", "got nothing", "sat:"),
    Case("range-not-text", "sat: []", "sat: [9]", "hours.sat[0]",
         "expected a time range such as 09:00-18:00, got an integer", "9]"),
    Case("hours-not-mapping", 'hours:\n  mon-fri: ["09:00-12:00", "13:00-18:00"]\n  sat: []\n',
         "hours: [mon]\n", "hours", "expected a mapping of weekdays to hours, got a list",
         "[mon]"),
    Case("bad-holiday-date", "2026-10-07]", "2026-10-07, 2026-02-30]", "holidays[1]",
         "'2026-02-30' is not a valid date (day is out of range for month)", "2026-02-30"),
    Case("holiday-not-iso", "2026-10-07]", "2026-10-07, 25.12.2026]", "holidays[1]",
         "'25.12.2026' is not a valid date", "25.12.2026"),
    Case("holiday-number", "2026-10-07]", "2026-10-07, 20261225]", "holidays[1]",
         "expected a date such as 2026-10-01, got an integer", "20261225"),
    Case("holiday-twice", "2026-10-07]", "2026-10-07, 2026-10-03]", "holidays[1]",
         "2026-10-03 is listed twice (also at line 6)", "2026-10-03"),
    Case("holiday-span-backwards", "2026-10-01..2026-10-07", "2026-10-07..2026-10-01",
         "holidays[0]", "ends before it starts", "2026-10-07.."),
    Case("holiday-span-too-long", "2026-10-01..2026-10-07", "2026-10-01..2062-10-07",
         "holidays[0]", "longer than 366 days", "2026-10-01.."),
    Case("holidays-not-list", "[2026-10-01..2026-10-07]", "2026-10-01", "holidays",
         "expected a list of dates, got a string", "2026-10-01"),
    Case("working-day-is-holiday", "2026-10-10:", "2026-10-05:", "working_days.2026-10-05",
         "2026-10-05 is both a holiday (line 6) and a working day", "2026-10-05:"),
    Case("working-day-bad-date", "2026-09-27:", "2026-09-31:", "working_days.2026-09-31",
         "'2026-09-31' is not a valid date", "2026-09-31"),
    Case("working-day-without-hours", "2026-09-27: 09:00-18:00", "2026-09-27: []",
         "working_days.2026-09-27", "needs at least one time range", "[]", nth=1),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_yaml_errors_point_at_the_mistake(case: Case) -> None:
    with pytest.raises(DefinitionError) as info:
        load_calendar_text(case.text(), source="china.yaml")
    error = info.value
    assert case.match in error.reason
    assert error.path == case.path
    assert (error.line, error.column) == case.where()
    assert error.suggestions == case.suggestions
    assert str(error).startswith(f"china.yaml:{error.line}:{error.column}: {case.path}: ")


def test_yaml_error_hints() -> None:
    with pytest.raises(DefinitionError) as info:
        load_calendar_text(BASE.replace("sat: []", "sat: 22:00-06:00"))
    assert "split it, e.g. 22:00-24:00 and 00:00-06:00" in str(info.value)
    with pytest.raises(DefinitionError) as info:
        load_calendar_text(BASE.replace("sat: []", "sat:"))
    assert info.value.hint == "write [] for a day without working hours, or leave the day out"
    with pytest.raises(DefinitionError) as info:
        load_calendar_text(BASE.replace("holidays:", "days_off:"))
    assert info.value.suggestions == ()
    assert "allowed keys: calendar, timezone, hours, holidays, working_days" in info.value.hint


def test_yaml_calendar_without_working_hours() -> None:
    with pytest.raises(DefinitionError) as info:
        load_calendar_text("calendar: closed\ntimezone: UTC\nhours:\n  mon: []\n")
    assert info.value.reason == "the calendar has no working hours"
    assert (info.value.line, info.value.column, info.value.path) == (4, 3, "hours")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "expected a mapping with 'calendar', 'timezone' and 'hours', got nothing"),
        ("- office\n", "got a list"),
        ("calendar: [a\n", "invalid YAML"),
        ("calendar: &a x\ntimezone: UTC\nhours: {mon: 09:00-18:00}\n", "anchors are not allowed"),
    ],
)
def test_yaml_documents_that_are_not_calendars(text: str, match: str) -> None:
    with pytest.raises(DefinitionError, match=match):
        load_calendar_text(text)


EMBEDDED = """\
workflow: ticket
calendar:
  timezone: Europe/Berlin
  hours:
    mon-fri: 09:00-17:00
"""


def test_calendar_embedded_in_another_document() -> None:
    doc = read_yaml_text(EMBEDDED, "ticket.yaml")
    calendar = calendar_from_document(doc, ("calendar",), default_name="ticket_hours")
    assert calendar.name == "ticket_hours"
    assert calendar.hours[4] == ((time(9), time(17)),)
    with pytest.raises(DefinitionError) as info:
        calendar_from_document(doc, ("calendar",))
    assert info.value.path == "calendar.calendar"
    assert "missing required key 'calendar'" in info.value.reason


def test_errors_in_an_embedded_calendar_name_the_full_path() -> None:
    doc = read_yaml_text(EMBEDDED.replace("mon-fri", "monday"), "ticket.yaml")
    with pytest.raises(DefinitionError) as info:
        calendar_from_document(doc, ("calendar",), default_name="ticket_hours")
    assert str(info.value).startswith("ticket.yaml:5:5: calendar.hours.monday: unknown weekday")
    assert info.value.suggestions == ("mon",)
    with pytest.raises(DefinitionError, match="no calendar here"):
        calendar_from_document(doc, ("nowhere",), default_name="x")


# -- properties ----------------------------------------------------------------------------------

_HALF_HOURS = st.integers(min_value=0, max_value=48)


@st.composite
def weekly_calendars(draw: st.DrawFn) -> BusinessCalendar:
    """A calendar with random half-hour ranges in a zone with clock changes."""
    zone = draw(
        st.sampled_from(
            ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Shanghai"]
        )
    )
    table: dict[int, list[tuple[time, time]]] = {}
    for day in range(7):
        marks = sorted(draw(st.sets(_HALF_HOURS, max_size=6)))
        if len(marks) % 2:
            marks.pop()
        ranges = []
        for start, end in zip(marks[::2], marks[1::2], strict=True):
            to_time = [time(m // 2, 30 * (m % 2)) if m < 48 else time(0) for m in (start, end)]
            ranges.append((to_time[0], to_time[1]))
        if ranges:
            table[day] = ranges
    if not table:
        table[draw(st.integers(0, 6))] = [NINE_TO_SIX]
    return BusinessCalendar("random", zone, hours=table)


calendars = st.one_of(
    st.sampled_from([OFFICE, LUNCH, ROUND_THE_CLOCK, NIGHT, CHINA, ALWAYS]), weekly_calendars()
)
# Around the clock changes of 2026 as well as anywhere in the year.
_DST_DAYS = [datetime(2026, 3, 8), datetime(2026, 3, 28), datetime(2026, 10, 3),
             datetime(2026, 10, 24), datetime(2026, 10, 31)]  # fmt: skip
moments = st.one_of(
    st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1)),
    st.builds(
        lambda day, offset: day + offset,
        st.sampled_from(_DST_DAYS),
        st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)),
    ),
).map(lambda naive: naive.replace(tzinfo=UTC))
durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10))
PROPERTY = settings(max_examples=300, deadline=None)


@PROPERTY
@given(calendars, moments)
def test_next_working_moment_is_the_first_working_moment(
    calendar: BusinessCalendar, moment: datetime
) -> None:
    found = calendar.next_working_moment(moment)
    assert found >= moment
    assert calendar.is_working(found)
    assert calendar.working_time_between(moment, found) == timedelta(0)
    assert (found == moment) is calendar.is_working(moment)


@PROPERTY
@given(calendars, moments, durations, durations)
def test_add_working_time_is_monotonic_in_duration(
    calendar: BusinessCalendar, start: datetime, one: timedelta, two: timedelta
) -> None:
    short, long = sorted((one, two))
    assert calendar.add_working_time(start, short) <= calendar.add_working_time(start, long)


@PROPERTY
@given(calendars, moments, durations)
def test_working_time_between_inverts_add_working_time(
    calendar: BusinessCalendar, start: datetime, duration: timedelta
) -> None:
    end = calendar.add_working_time(start, duration)
    assert calendar.working_time_between(start, end) == duration
    working_start = calendar.next_working_moment(start)
    end = calendar.add_working_time(working_start, duration)
    assert calendar.working_time_between(working_start, end) == duration


@PROPERTY
@given(calendars, moments, st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=20)))
def test_add_working_time_of_the_working_time_between_does_not_overshoot(
    calendar: BusinessCalendar, start: datetime, gap: timedelta
) -> None:
    end = start + gap
    reached = calendar.add_working_time(start, calendar.working_time_between(start, end))
    assert reached <= end
    assert calendar.working_time_between(reached, end) == timedelta(0)


@PROPERTY
@given(calendars, moments, durations, durations)
def test_add_working_time_is_additive(
    calendar: BusinessCalendar, start: datetime, one: timedelta, two: timedelta
) -> None:
    halfway = calendar.add_working_time(start, one)
    assert calendar.add_working_time(halfway, two) == calendar.add_working_time(start, one + two)


@PROPERTY
@given(calendars, moments)
def test_is_working_agrees_with_working_time_between(
    calendar: BusinessCalendar, moment: datetime
) -> None:
    tick = timedelta(microseconds=1)
    expected = tick if calendar.is_working(moment) else timedelta(0)
    assert calendar.working_time_between(moment, moment + tick) == expected
