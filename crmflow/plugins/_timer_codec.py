"""Timers and outbox notifications as flat, storable values, shared by the storage back ends.

The instants that are compared and ordered (``due_at``, ``next_attempt_at``, ``lease_until``,
and the outbox's creation time) become integer microseconds since the Unix epoch in UTC:
integers compare exactly, whatever offset the caller wrote, and a B-tree index over them
answers "due by now" with a range scan. They come back as aware UTC datetimes. The other
timestamps stay ISO 8601 text with their offset, like every other table. ``payload`` and
``metadata`` go through the JSON codec, so a Decimal or a date survives.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from crmflow._codec import dumps, iso_text, loads
from crmflow.plugins._storage_api import OutboxRecord, TimerRecord

__all__ = [
    "OUTBOX_STATUSES",
    "TIMER_STATUSES",
    "from_epoch_us",
    "lease_micros",
    "outbox_from_values",
    "outbox_to_values",
    "timer_from_values",
    "timer_to_values",
    "to_epoch_us",
]

#: Every timer status: pending until it fires for the last time or is cancelled.
TIMER_STATUSES: tuple[str, ...] = ("pending", "fired", "cancelled")
#: Every outbox status: pending (queued or waiting to retry), delivered, dead (given up).
OUTBOX_STATUSES: tuple[str, ...] = ("pending", "delivered", "dead")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def to_epoch_us(value: datetime, what: str = "datetime") -> int:
    """Microseconds from the Unix epoch to ``value`` (exact: timedelta arithmetic is integral).

    :raises ValueError: ``value`` is naive; an instant needs its offset.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be time-zone aware, got {value!r}")
    return (value - _EPOCH) // _MICRO


def from_epoch_us(value: int) -> datetime:
    """The aware UTC datetime :func:`to_epoch_us` encoded."""
    return _EPOCH + timedelta(microseconds=value)


def lease_micros(lease: timedelta) -> int:
    """A claim's lease in microseconds.

    :raises ValueError: the lease is not positive (a claim that ends as it starts protects
        nothing).
    """
    micros = lease // _MICRO
    if micros <= 0:
        raise ValueError(f"lease must be positive, got {lease!r}")
    return micros


def _us(value: datetime | None, what: str) -> int | None:
    return None if value is None else to_epoch_us(value, what)


def _from_us(value: int | None) -> datetime | None:
    return None if value is None else from_epoch_us(int(value))


def _time(value: datetime | None) -> str | None:
    return None if value is None else iso_text(value)


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def timer_to_values(timer: TimerRecord) -> dict[str, Any]:
    """A timer as column values: text and integers only.

    ``cancelled_at`` is storage's own column (when :meth:`StorageTx.cancel_timers` ran); it is
    not part of the record.

    :raises ValueError: a datetime is naive.
    :raises TypeError: the payload holds a value the codec cannot store.
    """
    return {
        "id": timer.id,
        "kind": timer.kind,
        "name": timer.name,
        "instance_key": timer.instance_key,
        "owner": timer.owner,
        "status": timer.status,
        "due_us": to_epoch_us(timer.due_at, "due_at"),
        "created_at": iso_text(timer.created_at),
        "payload": dumps(timer.payload),
        "fired_at": _time(timer.fired_at),
        "fire_count": timer.fire_count,
        "claimed_by": timer.claimed_by,
        "lease_us": _us(timer.lease_until, "lease_until"),
        "cancelled_at": None,
    }


def timer_from_values(values: Mapping[str, Any]) -> TimerRecord:
    """The timer stored by :func:`timer_to_values` (extra keys are ignored)."""
    return TimerRecord(
        id=values["id"],
        kind=values["kind"],
        name=values["name"],
        due_at=from_epoch_us(int(values["due_us"])),
        created_at=datetime.fromisoformat(values["created_at"]),
        instance_key=values["instance_key"],
        owner=values["owner"],
        status=values["status"],
        payload=loads(values["payload"]),
        fired_at=_parse_time(values["fired_at"]),
        fire_count=int(values["fire_count"]),
        claimed_by=values["claimed_by"],
        lease_until=_from_us(values["lease_us"]),
    )


def outbox_to_values(record: OutboxRecord) -> dict[str, Any]:
    """A notification as column values: text and integers only.

    ``created_us`` repeats ``created_at`` as an integer, so that "oldest first" is exact even
    when callers wrote different offsets.

    :raises ValueError: a datetime is naive.
    :raises TypeError: the metadata holds a value the codec cannot store.
    """
    return {
        "id": record.id,
        "channel": record.channel,
        "recipient": record.recipient,
        "subject": record.subject,
        "created_at": iso_text(record.created_at),
        "created_us": to_epoch_us(record.created_at, "created_at"),
        "instance_key": record.instance_key,
        "event": record.event,
        "intended": record.intended,
        "address": record.address,
        "body": record.body,
        "status": record.status,
        "attempts": record.attempts,
        "next_attempt_us": _us(record.next_attempt_at, "next_attempt_at"),
        "last_error": record.last_error,
        "delivered_at": _time(record.delivered_at),
        "read_at": _time(record.read_at),
        "acknowledged_at": _time(record.acknowledged_at),
        "timer_id": record.timer_id,
        "metadata_json": dumps(record.metadata),
        "claimed_by": record.claimed_by,
        "lease_us": _us(record.lease_until, "lease_until"),
    }


def outbox_from_values(values: Mapping[str, Any]) -> OutboxRecord:
    """The notification stored by :func:`outbox_to_values` (extra keys are ignored)."""
    return OutboxRecord(
        id=values["id"],
        channel=values["channel"],
        recipient=values["recipient"],
        subject=values["subject"],
        created_at=datetime.fromisoformat(values["created_at"]),
        instance_key=values["instance_key"],
        event=values["event"],
        intended=values["intended"],
        address=values["address"],
        body=values["body"],
        status=values["status"],
        attempts=int(values["attempts"]),
        next_attempt_at=_from_us(values["next_attempt_us"]),
        last_error=values["last_error"],
        delivered_at=_parse_time(values["delivered_at"]),
        read_at=_parse_time(values["read_at"]),
        acknowledged_at=_parse_time(values["acknowledged_at"]),
        timer_id=values["timer_id"],
        metadata=loads(values["metadata_json"]),
        claimed_by=values["claimed_by"],
        lease_until=_from_us(values["lease_us"]),
    )
