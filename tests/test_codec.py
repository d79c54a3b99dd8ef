"""The JSON codec: exact round trips of Decimal, date and datetime in nested data."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmflow._codec import canonical_json, dumps, from_jsonable, loads, to_jsonable

offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda m: timezone(timedelta(minutes=m))
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.dates(),
    st.datetimes(timezones=offsets),
    st.datetimes(),  # naive
)
# Keys that look like the codec's own tags must survive too.
keys = st.one_of(st.text(), st.sampled_from(["$decimal", "$date", "$datetime", "$map", "$x"]))
nested = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)


def assert_exact(a: Any, b: Any) -> None:
    """Equal *and* of the same types all the way down (1 == True == Decimal(1) otherwise)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_exact(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_exact(x, y)
    elif isinstance(a, (Decimal, datetime, date)):
        assert str(a) == str(b)
    elif isinstance(a, float):
        assert repr(a) == repr(b)
    else:
        assert a == b


@settings(max_examples=300, deadline=None)
@given(nested)
def test_round_trip_through_json_text(value: Any) -> None:
    assert_exact(loads(dumps(value)), value)
    assert_exact(from_jsonable(json.loads(json.dumps(to_jsonable(value)))), value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, nested, max_size=6))
def test_canonical_json_ignores_key_order(value: dict[str, Any]) -> None:
    reordered = dict(reversed(list(value.items())))
    assert canonical_json(value) == canonical_json(reordered)
    # Canonical text is itself valid JSON that decodes to the same value.
    assert_exact(from_jsonable(json.loads(canonical_json(value))), value)


@settings(max_examples=200, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_decimal_is_a_string_never_a_float(value: Decimal) -> None:
    encoded = to_jsonable(value)
    assert encoded == {"$decimal": str(value)}
    assert json.dumps(encoded) == f'{{"$decimal": "{value}"}}'  # text, never a number


def test_examples() -> None:
    data = {
        "amount": Decimal("8000.00"),
        "due": date(2026, 1, 5),
        "at": datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
        "lines": [Decimal("0.10"), {"$decimal": "user text"}],
    }
    assert to_jsonable(data) == {
        "amount": {"$decimal": "8000.00"},
        "due": {"$date": "2026-01-05"},
        "at": {"$datetime": "2026-01-05T09:00:00+00:00"},
        "lines": [{"$decimal": "0.10"}, {"$map": {"$decimal": "user text"}}],
    }
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    assert_exact(loads(dumps(data)), data)


def test_tuples_become_lists() -> None:
    assert loads(dumps({"t": (1, Decimal("2.50"))})) == {"t": [1, Decimal("2.50")]}


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({1: "int key"}, TypeError),
        ({"s": {1, 2}}, TypeError),
        (object(), TypeError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (Decimal("NaN"), ValueError),
        (Decimal("-Infinity"), ValueError),
    ],
)
def test_unstorable_values(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        to_jsonable(value)
