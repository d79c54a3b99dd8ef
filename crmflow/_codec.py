"""JSON codec for instance data, history details and idempotency results.

Instance data holds money as :class:`~decimal.Decimal` and deadlines as dates; plain JSON would
turn the first into a float (and lose cents) and refuse the others. :func:`to_jsonable` maps
them to a tagged form that stays valid JSON, and :func:`from_jsonable` restores them exactly::

    Decimal("8000.00")                  <->  {"$decimal": "8000.00"}
    date(2026, 1, 5)                    <->  {"$date": "2026-01-05"}
    datetime(2026, 1, 5, 9, tzinfo=UTC) <->  {"$datetime": "2026-01-05T09:00:00+00:00"}

A mapping whose only key starts with ``$`` is wrapped as ``{"$map": {...}}`` so that user data
that happens to look like a tag survives the round trip unchanged. Tuples become lists.
:func:`canonical_json` is the byte-stable text the history hash chain is computed over.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "canonical_json",
    "canonical_tagged",
    "dumps",
    "dumps_tagged",
    "fast_encoder",
    "from_jsonable",
    "iso_text",
    "loads",
    "to_jsonable",
]

_DECIMAL = "$decimal"
_DATE = "$date"
_DATETIME = "$datetime"
_MAP = "$map"


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def fast_encoder(
    *,
    sort_keys: bool = False,
    separators: tuple[str, str] = (",", ":"),
    allow_nan: bool = False,
) -> Callable[[Any], str]:
    """What ``json.dumps(value, ensure_ascii=False, ...)`` with these options returns.

    ``json.dumps`` with options builds a new encoder object on every call, which costs more
    than encoding the small values of one history entry; the C encoder is built once here.
    Pass only plain JSON values (such as the output of :func:`to_jsonable`): there is no
    cycle check, and other types are refused.
    """
    item_separator, key_separator = separators
    # Not in the type stubs; positional arguments as JSONEncoder.iterencode passes them.
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - interpreters without the C accelerator
        fallback = json.JSONEncoder(
            sort_keys=sort_keys, separators=separators, ensure_ascii=False, allow_nan=allow_nan
        )
        return fallback.encode
    encode = c_make_encoder(
        None,  # markers: no cycle check
        _not_serializable,  # default
        json.encoder.encode_basestring,  # strings as ensure_ascii=False writes them
        None,  # indent
        key_separator,
        item_separator,
        sort_keys,
        False,  # skipkeys
        allow_nan,
    )

    def dump(value: Any) -> str:
        return "".join(encode(value, 0))

    return dump


#: Compact JSON text of an already tagged value, keys in insertion order (what columns keep).
dumps_tagged: Callable[[Any], str] = fast_encoder()
#: Canonical JSON text of an already tagged value: sorted keys, compact (what is hashed).
canonical_tagged: Callable[[Any], str] = fast_encoder(sort_keys=True)


def iso_text(moment: datetime) -> str:
    """ISO 8601 text of ``moment`` that reads back as the same moment.

    An offset with a fraction of a second (``+00:00:00.000001``) does not survive
    ``datetime.fromisoformat`` on every Python, so such a moment is written in UTC instead.
    """
    offset = moment.utcoffset()
    if offset is not None and offset.microseconds:
        moment = moment.astimezone(UTC)
    return moment.isoformat()


def to_jsonable(value: Any) -> Any:
    """Return ``value`` as plain JSON types, tagging Decimal, date and datetime.

    Accepted: ``None``, ``bool``, ``int``, finite ``float``, ``str``, :class:`Decimal` (finite),
    :class:`date`, :class:`datetime`, mappings with ``str`` keys, lists and tuples of these.

    :raises TypeError: for any other type, or a mapping key that is not a string (JSON would
        silently turn ``1`` into ``"1"`` and the round trip would not be exact).
    :raises ValueError: for NaN or infinite floats and Decimals (not representable in JSON).
    """
    kind = type(value)
    # Exact-type checks first: plain scalars and dicts of them are the hot path of every fire.
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        out: dict[str, Any] = {}
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(f"mapping keys must be str, got {type(k).__name__} {k!r}")
            vt = type(v)
            if vt is str or vt is int or vt is bool or v is None:
                out[k] = v
            elif vt is Decimal and v.is_finite():
                out[k] = {_DECIMAL: str(v)}
            elif vt is list:
                out[k] = [to_jsonable(x) for x in v] if v else []
            else:
                out[k] = to_jsonable(v)
        if len(out) == 1 and next(iter(out)).startswith("$"):
            return {_MAP: out}
        return out
    if kind is list:
        return [to_jsonable(v) for v in value] if value else []
    if kind is Decimal and value.is_finite():
        return {_DECIMAL: str(value)}
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite float {value!r} cannot be stored as JSON")
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"non-finite Decimal {value!r} cannot be stored")
        return {_DECIMAL: str(value)}
    # datetime is a subclass of date: test it first.
    if isinstance(value, datetime):
        return {_DATETIME: iso_text(value)}
    if isinstance(value, date):
        return {_DATE: value.isoformat()}
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"mapping keys must be str, got {type(k).__name__} {k!r}")
            out[k] = to_jsonable(v)
        if len(out) == 1 and next(iter(out)).startswith("$"):
            return {_MAP: out}
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    raise TypeError(f"cannot store a value of type {type(value).__name__}: {value!r}")


def from_jsonable(value: Any) -> Any:
    """Invert :func:`to_jsonable`: restore Decimal, date and datetime from their tags."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((k, v),) = value.items()
            if k == _DECIMAL:
                return Decimal(v)
            if k == _DATETIME:
                return datetime.fromisoformat(v)
            if k == _DATE:
                return date.fromisoformat(v)
            if k == _MAP:
                return {ik: from_jsonable(iv) for ik, iv in v.items()}
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Encode ``value`` (see :func:`to_jsonable`) as compact JSON text for a database column."""
    return dumps_tagged(to_jsonable(value))


def loads(text: str) -> Any:
    """Decode JSON text written by :func:`dumps`."""
    return from_jsonable(json.loads(text))


def canonical_json(obj: Any) -> str:
    """Return the canonical JSON text of ``obj``: tagged, sorted keys, no whitespace, UTF-8.

    Two equal values (``Decimal("1.0")`` and ``Decimal("1.00")`` are *not* equal here: the
    stored text keeps the scale) always give the same text, which is what the hash chain needs.
    """
    return canonical_tagged(to_jsonable(obj))
