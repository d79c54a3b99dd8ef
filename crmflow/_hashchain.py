"""The per-instance hash chain over history entries (invariant 7: history is append-only).

Each entry's ``hash`` is ``sha256(prev_hash + canonical_json(entry))`` where the entry is its
``seq``, ``instance_key``, ``at`` (ISO 8601), ``actor``, ``kind``, ``trigger``, ``from_state``,
``to_state``, ``reason``, ``changes`` and ``details``. The first entry's ``prev_hash`` is
:data:`GENESIS` (64 zeros). Editing a stored field, deleting a row, swapping two rows or
re-linking a row all make :func:`verify_chain` report the first bad ``seq``.

Deleting the *newest* rows leaves a shorter chain that is still valid; pass the head hash you
trust (for example one exported earlier) as ``expected_head`` to detect that too.
"""

from __future__ import annotations

import json.encoder
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from crmflow._codec import canonical_tagged, iso_text, to_jsonable

if TYPE_CHECKING:
    # Only for annotations: keeps this module importable from the plugins package itself.
    from crmflow.plugins._storage_api import HistoryRecord

__all__ = [
    "GENESIS",
    "ChainReport",
    "entry_hash",
    "hashed_entry_texts",
    "record_hash",
    "verify_chain",
]

#: ``prev_hash`` of an instance's first history entry.
GENESIS = "0" * 64

#: A str as JSON text, exactly as the encoders behind ``canonical_tagged`` write it.
_quote = json.encoder.encode_basestring


def entry_hash(
    prev_hash: str,
    *,
    seq: int,
    instance_key: str,
    at: datetime,
    actor: str,
    kind: str,
    trigger: str,
    from_state: str,
    to_state: str,
    reason: str,
    changes: Mapping[str, Any],
    details: Mapping[str, Any],
) -> str:
    """Return the SHA-256 hex digest chaining one history entry to ``prev_hash``."""
    # Hash the ISO text and the tagged values: the texts are what storage keeps.
    return hashed_entry_texts(
        prev_hash,
        seq,
        instance_key,
        iso_text(at),
        actor,
        kind,
        trigger,
        from_state,
        to_state,
        reason,
        to_jsonable(changes),
        to_jsonable(details),
    )[2]


def hashed_entry_texts(
    prev_hash: str,
    seq: int,
    instance_key: str,
    at_text: str,
    actor: str,
    kind: str,
    trigger: str,
    from_state: str,
    to_state: str,
    reason: str,
    changes: Any,
    details: Any,
) -> tuple[str, str, str]:
    """Like :func:`entry_hash` for tagged values and ``at`` as ISO text; also the texts hashed.

    Returns ``(changes_text, details_text, hash)``: a store that keeps those texts encodes
    each value once, for the hash and for keeping.
    """
    changes_text, details_text = canonical_tagged(changes), canonical_tagged(details)
    body = ""
    if type(seq) is int:
        try:
            # The canonical text written out in its (sorted) key order: the same bytes as
            # encoding the whole entry as a dict, without building and sorting that dict.
            body = (
                f'{{"actor":{_quote(actor)},"at":{_quote(at_text)},'
                f'"changes":{changes_text},"details":{details_text},'
                f'"from_state":{_quote(from_state)},"instance_key":{_quote(instance_key)},'
                f'"kind":{_quote(kind)},"reason":{_quote(reason)},"seq":{seq},'
                f'"to_state":{_quote(to_state)},"trigger":{_quote(trigger)}}}'
            )
        except TypeError:
            body = ""  # a field that is not a str: encode the entry as a dict below
    if not body:
        body = canonical_tagged(
            {
                "seq": seq,
                "instance_key": instance_key,
                "at": at_text,
                "actor": actor,
                "kind": kind,
                "trigger": trigger,
                "from_state": from_state,
                "to_state": to_state,
                "reason": reason,
                "changes": changes,
                "details": details,
            }
        )
    return changes_text, details_text, sha256((prev_hash + body).encode()).hexdigest()


def record_hash(record: HistoryRecord) -> str:
    """Recompute a stored record's hash from its fields and its ``prev_hash``."""
    return entry_hash(
        record.prev_hash,
        seq=record.seq,
        instance_key=record.instance_key,
        at=record.at,
        actor=record.actor,
        kind=record.kind,
        trigger=record.trigger,
        from_state=record.from_state,
        to_state=record.to_state,
        reason=record.reason,
        changes=record.changes,
        details=record.details,
    )


@dataclass(frozen=True)
class ChainReport:
    """The outcome of :func:`verify_chain`.

    Attributes:
        ok: ``True`` when every entry is intact and linked.
        checked: how many entries were verified intact before the first problem (all of
            them when ``ok``).
        first_bad_seq: the first ``seq`` at which the chain is not intact (for a deleted row,
            the missing ``seq``), or ``None`` when ``ok``.
        reason: what is wrong, in words ("" when ``ok``).

    """

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""


def verify_chain(
    records: Sequence[HistoryRecord], *, expected_head: str | None = None
) -> ChainReport:
    """Verify one instance's history, as returned by ``Storage.history`` (``seq`` order).

    :param records: the entries of one instance, in the order storage returned them.
    :param expected_head: optionally, the hash the newest entry must have (detects deleted
        newest rows, which leave a valid but shorter chain).
    :return: a :class:`ChainReport`; never raises for a tampered chain.
    """
    prev = GENESIS
    key = records[0].instance_key if records else None
    for index, rec in enumerate(records):
        expected_seq = index + 1

        def bad(reason: str, seq: int = expected_seq, n: int = index) -> ChainReport:
            return ChainReport(ok=False, checked=n, first_bad_seq=seq, reason=reason)

        if rec.instance_key != key:
            return bad(f"entry seq {rec.seq} belongs to instance {rec.instance_key!r}, not {key!r}")
        if rec.seq > expected_seq:
            return bad(f"seq {expected_seq} is missing (next entry is seq {rec.seq}): row deleted")
        if rec.seq < expected_seq:
            return bad(f"seq {rec.seq} found where seq {expected_seq} belongs: rows reordered")
        if rec.prev_hash != prev:
            return bad(f"seq {rec.seq} does not link to the previous entry's hash")
        if record_hash(rec) != rec.hash:
            return bad(f"seq {rec.seq} does not match its hash: the row was edited")
        prev = rec.hash
    if expected_head is not None and prev != expected_head:
        return ChainReport(
            ok=False,
            checked=len(records),
            first_bad_seq=len(records) + 1,
            reason="the newest entry is not the expected head: newest rows were deleted",
        )
    return ChainReport(ok=True, checked=len(records))
