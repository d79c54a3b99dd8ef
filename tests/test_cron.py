"""Cron occurrences in a user's time zone: daylight saving, catch-up after downtime, repeats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from crmflow.engine._cron import (
    latest_occurrence_at_or_before,
    missed_occurrence,
    next_occurrence,
    next_repeat,
    repeat_times,
    validate_cron,
)

BERLIN_NAME = "Europe/Berlin"
BERLIN = ZoneInfo(BERLIN_NAME)
MONDAYS_AT_TEN = "0 10 * * 1"
MINUTE = timedelta(minutes=1)


def berlin(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=BERLIN)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def occurrences(expression: str, start: datetime, end: datetime, zone: str) -> list[datetime]:
    """Every occurrence in (start, end], by repeated next_occurrence."""
    found = []
    moment = next_occurrence(expression, start, zone)
    while moment <= end:
        found.append(moment)
        moment = next_occurrence(expression, moment, zone)
    return found


# -- next_occurrence ---------------------------------------------------------------------------


def test_next_monday_at_ten_local_time() -> None:
    tuesday = berlin(2026, 1, 6, 8)
    found = next_occurrence(MONDAYS_AT_TEN, tuesday, BERLIN_NAME)
    assert found == berlin(2026, 1, 12, 10)
    assert found == utc(2026, 1, 12, 9)
    assert found.tzinfo is UTC


def test_next_occurrence_is_strictly_after() -> None:
    monday = berlin(2026, 1, 5, 10)
    assert next_occurrence(MONDAYS_AT_TEN, monday, BERLIN_NAME) == berlin(2026, 1, 12, 10)
    just_before = monday - timedelta(microseconds=1)
    assert next_occurrence(MONDAYS_AT_TEN, just_before, BERLIN_NAME) == monday


def test_the_zone_decides_the_wall_clock() -> None:
    after = utc(2026, 1, 5)
    assert next_occurrence("0 9 * * *", after, "Asia/Shanghai") == utc(2026, 1, 5, 1)
    assert next_occurrence("0 9 * * *", after, "America/New_York") == utc(2026, 1, 5, 14)
    assert next_occurrence("0 9 * * *", after, "UTC") == utc(2026, 1, 5, 9)


def test_mondays_at_ten_stay_at_ten_across_daylight_saving() -> None:
    spring = occurrences(MONDAYS_AT_TEN, utc(2026, 3, 20), utc(2026, 4, 1), BERLIN_NAME)
    assert spring == [utc(2026, 3, 23, 9), utc(2026, 3, 30, 8)]
    autumn = occurrences(MONDAYS_AT_TEN, utc(2026, 10, 16), utc(2026, 10, 28), BERLIN_NAME)
    assert autumn == [utc(2026, 10, 19, 8), utc(2026, 10, 26, 9)]
    assert all(moment.astimezone(BERLIN).hour == 10 for moment in spring + autumn)


def test_a_time_in_the_skipped_hour_fires_when_the_clocks_skip() -> None:
    # 29 March 2026: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    found = occurrences("30 2 * * *", utc(2026, 3, 28, 12), utc(2026, 3, 30, 12), BERLIN_NAME)
    assert found == [utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)]
    assert found[0].astimezone(BERLIN).hour == 3


def test_the_whole_skipped_hour_fires_once() -> None:
    found = occurrences(
        "*/15 * * * *", utc(2026, 3, 29, 0, 40), utc(2026, 3, 29, 1, 20), BERLIN_NAME
    )
    # 01:45 CET, then 02:00-02:45 (skipped) together at 03:00 CEST, then 03:15 CEST.
    assert found == [utc(2026, 3, 29, 0, 45), utc(2026, 3, 29, 1), utc(2026, 3, 29, 1, 15)]


def test_a_time_in_the_repeated_hour_fires_once() -> None:
    # 25 October 2026: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    found = occurrences("30 2 * * *", utc(2026, 10, 24, 12), utc(2026, 10, 26, 12), BERLIN_NAME)
    assert found == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_frequent_schedules_pause_in_the_repeated_hour() -> None:
    found = occurrences(
        "*/30 * * * *", utc(2026, 10, 24, 23, 50), utc(2026, 10, 25, 2, 40), BERLIN_NAME
    )
    assert found == [
        utc(2026, 10, 25, 0),  # 02:00 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 2),  # 03:00 CET: 02:00 and 02:30 CET already happened
        utc(2026, 10, 25, 2, 30),
    ]
    # Asked from inside the second pass, the answer is still the next new wall-clock time.
    second_pass = utc(2026, 10, 25, 1, 10)
    assert next_occurrence("*/30 * * * *", second_pass, BERLIN_NAME) == utc(2026, 10, 25, 2)


def test_the_host_zone_does_not_matter_only_the_given_one() -> None:
    after = datetime(2026, 1, 6, 9, tzinfo=ZoneInfo("Pacific/Auckland"))
    assert next_occurrence(MONDAYS_AT_TEN, after, BERLIN_NAME) == berlin(2026, 1, 12, 10)


# -- latest occurrence and catch-up ---------------------------------------------------------


def test_latest_occurrence_at_or_before() -> None:
    monday = berlin(2026, 1, 12, 10)
    assert latest_occurrence_at_or_before(MONDAYS_AT_TEN, monday, BERLIN_NAME) == monday
    earlier = monday - timedelta(microseconds=1)
    assert latest_occurrence_at_or_before(MONDAYS_AT_TEN, earlier, BERLIN_NAME) == berlin(
        2026, 1, 5, 10
    )
    assert (
        latest_occurrence_at_or_before(MONDAYS_AT_TEN, berlin(2026, 1, 14, 3), BERLIN_NAME)
        == monday
    )


def test_latest_occurrence_in_the_repeated_hour_is_the_first_pass() -> None:
    second_pass = utc(2026, 10, 25, 1, 10)  # 02:10 CET
    found = latest_occurrence_at_or_before("*/15 * * * *", second_pass, BERLIN_NAME)
    assert found == utc(2026, 10, 25, 0, 45)  # 02:45 CEST


def test_latest_occurrence_in_the_skipped_hour() -> None:
    found = latest_occurrence_at_or_before("30 2 * * *", utc(2026, 3, 29, 1, 10), BERLIN_NAME)
    assert found == utc(2026, 3, 29, 1)  # fired at 03:00 CEST


def test_missed_occurrences_after_downtime_fire_once() -> None:
    last_fired = berlin(2026, 1, 5, 10)
    now = last_fired + timedelta(weeks=2, hours=1)
    missed = occurrences(MONDAYS_AT_TEN, last_fired, now, BERLIN_NAME)
    assert missed == [berlin(2026, 1, 12, 10), berlin(2026, 1, 19, 10)]
    assert missed_occurrence(MONDAYS_AT_TEN, last_fired, now, BERLIN_NAME) == berlin(
        2026, 1, 19, 10
    )


def test_nothing_missed() -> None:
    last_fired = berlin(2026, 1, 5, 10)
    assert (
        missed_occurrence(MONDAYS_AT_TEN, last_fired, berlin(2026, 1, 12, 9), BERLIN_NAME) is None
    )
    assert missed_occurrence(MONDAYS_AT_TEN, last_fired, last_fired, BERLIN_NAME) is None
    assert missed_occurrence(MONDAYS_AT_TEN, last_fired, berlin(2026, 1, 1), BERLIN_NAME) is None
    # "Now" exactly on an occurrence: it is due.
    due = berlin(2026, 1, 12, 10)
    assert missed_occurrence(MONDAYS_AT_TEN, last_fired, due, BERLIN_NAME) == due


def test_missed_occurrence_checks_its_arguments_even_when_nothing_is_missed() -> None:
    moment = berlin(2026, 1, 5, 10)
    with pytest.raises(ValueError, match="invalid cron expression"):
        missed_occurrence("61 * * * *", moment, moment, BERLIN_NAME)
    with pytest.raises(ValueError, match="unknown time zone"):
        missed_occurrence(MONDAYS_AT_TEN, moment, moment, "Europe/Berln")


# -- repeats -----------------------------------------------------------------------------------


def test_monday_reminder_repeats_every_half_hour() -> None:
    first = next_occurrence(MONDAYS_AT_TEN, berlin(2026, 1, 4), BERLIN_NAME)
    times = list(islice(repeat_times(first, timedelta(minutes=30)), 3))
    assert times == [berlin(2026, 1, 5, 10), berlin(2026, 1, 5, 10, 30), berlin(2026, 1, 5, 11)]
    assert all(moment.tzinfo is UTC for moment in times)


def test_repeat_until_is_inclusive() -> None:
    first = berlin(2026, 1, 5, 10)
    every = timedelta(minutes=30)
    assert list(repeat_times(first, every, berlin(2026, 1, 5, 11))) == [
        first,
        berlin(2026, 1, 5, 10, 30),
        berlin(2026, 1, 5, 11),
    ]
    assert list(repeat_times(first, every, berlin(2026, 1, 5, 9))) == []


def test_repeats_are_elapsed_time_across_daylight_saving() -> None:
    first = berlin(2026, 3, 29, 1)
    times = list(islice(repeat_times(first, timedelta(hours=1)), 2))
    assert [moment.astimezone(BERLIN).hour for moment in times] == [1, 3]


def test_next_repeat_continues_on_its_grid() -> None:
    first, every = berlin(2026, 1, 5, 10), timedelta(minutes=30)
    assert next_repeat(first, every, berlin(2026, 1, 5, 9)) == first
    assert next_repeat(first, every, first) == berlin(2026, 1, 5, 10, 30)
    # Down from 10:40 to 12:20: the 11:00 ... 12:00 repeats are not replayed.
    assert next_repeat(first, every, berlin(2026, 1, 5, 12, 20)) == berlin(2026, 1, 5, 12, 30)


@pytest.mark.parametrize("every", [timedelta(0), timedelta(minutes=-5)])
def test_repeats_need_a_positive_interval(every: timedelta) -> None:
    with pytest.raises(ValueError, match="every must be positive"):
        next(repeat_times(berlin(2026, 1, 5, 10), every))
    with pytest.raises(ValueError, match="every must be positive"):
        next_repeat(berlin(2026, 1, 5, 10), every, berlin(2026, 1, 5, 11))


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        MONDAYS_AT_TEN,
        " */30 9-17 * * mon-fri ",
        "0 0 29 2 *",
        "0 10 L * *",
        "0 10 * * 1#2",
        "@daily",
        "@hourly",
        "@yearly",
    ],
)
def test_valid_expressions(expression: str) -> None:
    validate_cron(expression)
    assert next_occurrence(expression, utc(2026, 1, 1), BERLIN_NAME) > utc(2026, 1, 1)


@pytest.mark.parametrize(
    ("expression", "match"),
    [
        ("", "cron expression is empty"),
        ("   ", "cron expression is empty"),
        ("61 * * * *", r"invalid cron expression '61 \* \* \* \*' \(.*out of range"),
        ("* * *", "it has 3 fields, not 5;"),
        ("0 10 * * 1 30", "it has 6 fields, not 5; seconds and years are not supported"),
        ("a b c d e", "invalid cron expression 'a b c d e'"),
        ("H * * * *", "invalid cron expression 'H"),
        ("@reboot", "unknown cron shorthand '@reboot'"),
        ("0 0 30 2 *", "never occurs"),
    ],
)
def test_invalid_expressions_say_what_a_valid_one_looks_like(expression: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        validate_cron(expression)
    if "never occurs" not in match:
        assert "five fields, minute hour day-of-month month day-of-week" in str(info.value)
        assert "'0 10 * * 1' (Mondays at 10:00)" in str(info.value)
    with pytest.raises(ValueError, match=match):
        next_occurrence(expression, utc(2026, 1, 1), BERLIN_NAME)


def test_an_expression_must_be_text() -> None:
    with pytest.raises(ValueError, match="must be a string, got int"):
        validate_cron(5)  # type: ignore[arg-type]


def test_bad_zone_and_naive_datetimes() -> None:
    with pytest.raises(ValueError, match=r"unknown time zone 'Europe/Berln'.*'Europe/Berlin'"):
        next_occurrence(MONDAYS_AT_TEN, utc(2026, 1, 1), "Europe/Berln")
    naive = datetime(2026, 1, 5, 10)
    with pytest.raises(ValueError, match="after must be time-zone aware"):
        next_occurrence(MONDAYS_AT_TEN, naive, BERLIN_NAME)
    with pytest.raises(ValueError, match="moment must be time-zone aware"):
        latest_occurrence_at_or_before(MONDAYS_AT_TEN, naive, BERLIN_NAME)
    with pytest.raises(ValueError, match="now must be time-zone aware"):
        missed_occurrence(MONDAYS_AT_TEN, berlin(2026, 1, 5), naive, BERLIN_NAME)
    with pytest.raises(ValueError, match="first must be time-zone aware"):
        next(repeat_times(naive, MINUTE))


# -- against a brute-force count, minute by minute --------------------------------------------


def brute_force(expression: str, zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """Occurrences in (start, end] by walking every UTC minute.

    A minute fires when its wall-clock time matches on the first pass, or when the clocks
    skipped forward onto it past a matching wall-clock time.
    """
    found = []
    moment = start + MINUTE
    while moment <= end:
        wall = moment.astimezone(zone)
        previous = (moment - MINUTE).astimezone(zone).replace(tzinfo=None)
        naive = wall.replace(tzinfo=None)
        skipped = []
        candidate = previous + MINUTE
        while candidate < naive:
            skipped.append(candidate)
            candidate += MINUTE
        first_pass = wall.fold == 0
        if (first_pass and croniter.match(expression, naive)) or any(
            croniter.match(expression, s) for s in skipped
        ):
            found.append(moment)
        moment += MINUTE
    return found


@pytest.mark.parametrize("expression", ["*/15 * * * *", "30 2 * * *", "45 1-3 * * *", "0 * * * *"])
@pytest.mark.parametrize(
    ("zone_name", "day"),
    [
        (BERLIN_NAME, utc(2026, 3, 28, 12)),
        (BERLIN_NAME, utc(2026, 10, 24, 12)),
        ("America/New_York", utc(2026, 3, 8)),
        ("America/New_York", utc(2026, 11, 1)),
        ("Australia/Lord_Howe", utc(2026, 10, 3, 12)),
        ("Australia/Lord_Howe", utc(2026, 4, 4, 12)),
    ],
)
def test_occurrences_around_clock_changes_match_a_brute_force_count(
    expression: str, zone_name: str, day: datetime
) -> None:
    end = day + timedelta(days=1)
    expected = brute_force(expression, ZoneInfo(zone_name), day, end)
    assert occurrences(expression, day, end, zone_name) == expected


# -- properties ----------------------------------------------------------------------------------

expressions = st.sampled_from(
    ["*/15 * * * *", "30 2 * * *", MONDAYS_AT_TEN, "0 * * * *", "0 0 1 * *", "*/7 1-3 * * *",
     "@daily", "0 0 29 2 *"]
)  # fmt: skip
zones = st.sampled_from(
    [BERLIN_NAME, "America/New_York", "Australia/Lord_Howe", "Asia/Shanghai", "UTC"]
)
_CHANGE_DAYS = [datetime(2026, 3, 8), datetime(2026, 3, 28), datetime(2026, 4, 4),
                datetime(2026, 10, 3), datetime(2026, 10, 24), datetime(2026, 10, 31)]  # fmt: skip
moments = st.one_of(
    st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1)),
    st.builds(
        lambda day, offset: day + offset,
        st.sampled_from(_CHANGE_DAYS),
        st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=2)),
    ),
).map(lambda naive: naive.replace(tzinfo=UTC))
PROPERTY = settings(max_examples=300, deadline=None)


@PROPERTY
@given(expressions, zones, moments)
def test_next_occurrence_is_the_first_one_after(
    expression: str, zone: str, after: datetime
) -> None:
    found = next_occurrence(expression, after, zone)
    assert found > after
    assert latest_occurrence_at_or_before(expression, found, zone) == found
    before = latest_occurrence_at_or_before(expression, found - timedelta(microseconds=1), zone)
    assert before <= after


@PROPERTY
@given(expressions, zones, moments)
def test_latest_occurrence_is_the_last_one_up_to(
    expression: str, zone: str, moment: datetime
) -> None:
    found = latest_occurrence_at_or_before(expression, moment, zone)
    assert found <= moment
    assert next_occurrence(expression, found, zone) > moment


@PROPERTY
@given(
    expressions, zones, moments, st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40))
)
def test_missed_occurrence_is_the_latest_of_the_missed(
    expression: str, zone: str, last_fired: datetime, downtime: timedelta
) -> None:
    now = last_fired + downtime
    missed = missed_occurrence(expression, last_fired, now, zone)
    upcoming = next_occurrence(expression, last_fired, zone)
    if upcoming > now:
        assert missed is None
    else:
        assert missed is not None
        assert last_fired < missed <= now
        assert next_occurrence(expression, missed, zone) > now
