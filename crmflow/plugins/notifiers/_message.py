"""The message a channel delivers, the error it raises, and the channel protocol."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from crmflow._errors import CrmflowError

__all__ = ["Channel", "DeliveryError", "OutgoingMessage"]


@dataclass(frozen=True, kw_only=True)
class OutgoingMessage:
    """One notification, as read from its outbox row, ready for a channel to deliver.

    Attributes:
        id: the outbox row id. It stays the same across retries, so channels derive
            de-duplication headers from it (the e-mail ``Message-ID``, the webhook's
            ``X-Crmflow-Delivery``) and a receiver can drop a message it has already seen.
        channel: the name of the channel that delivers it (``"email"``, ``"webhook"`` ...).
        recipient: the recipient's user id.
        address: where to deliver: an e-mail address, a URL, or ``""`` when the recipient has
            none for this channel.
        subject: a one-line summary.
        body: the text.
        instance_key: the key of the workflow instance the notification is about.
        event: what caused it, e.g. ``"transition:approve"``, ``"reminder"``, ``"reassign"``.
        attempt: the 1-based number of this delivery attempt.
        created_at: when the notification was created (naive values are taken as UTC).
        metadata: extra JSON-compatible values for the receiver; copied into a read-only
            mapping on construction.

    """

    id: str
    channel: str
    recipient: str
    address: str = ""
    subject: str
    body: str
    instance_key: str
    event: str
    attempt: int = 1
    created_at: datetime
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if isinstance(self.attempt, bool) or not isinstance(self.attempt, int):
            raise TypeError(f"attempt must be an int, got {type(self.attempt).__name__}")
        if self.attempt < 1:
            raise ValueError(f"attempt is 1-based, got {self.attempt}")
        if self.created_at.tzinfo is None:
            # Same convention as the clocks: a naive time is UTC. Receivers get an offset
            # either way, so they never have to guess.
            object.__setattr__(self, "created_at", self.created_at.replace(tzinfo=UTC))
        # A shallow read-only copy: the caller's dict can change after the message is built
        # without changing what a retry sends.
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def __reduce__(self) -> tuple[Any, ...]:
        # A read-only mapping cannot be pickled, and messages may be handed to worker
        # processes; rebuild from plain fields instead.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["metadata"] = dict(self.metadata)
        return (_rebuild, (type(self), fields))


def _rebuild(cls: type[Any], fields: dict[str, Any]) -> Any:
    return cls(**fields)


class DeliveryError(CrmflowError):
    """A channel could not deliver a message.

    Attributes:
        reason: what went wrong, without the channel prefix.
        channel: the name of the channel that failed.
        retryable: ``True`` when a later attempt may succeed (connection refused, time-out,
            an SMTP 4xx reply, an HTTP 408/429/5xx answer); ``False`` when the message itself
            was refused for good (an SMTP 5xx reply to the sender, recipient or content, an
            HTTP 4xx answer, a recipient without an address). A non-retryable failure makes
            the outbox row ``dead`` at once.
        message_id: the id of the message that failed ("" when not known).
        code: the SMTP reply code or HTTP status, when the server answered.
        retry_after: how long the server asked the sender to wait (an HTTP ``Retry-After``
            header), when it said so.

    """

    def __init__(
        self,
        reason: str,
        *,
        channel: str,
        retryable: bool,
        message_id: str = "",
        code: int | None = None,
        retry_after: timedelta | None = None,
    ) -> None:
        self.reason = reason
        self.channel = channel
        self.retryable = retryable
        self.message_id = message_id
        self.code = code
        self.retry_after = retry_after
        kind = "retryable" if retryable else "not retryable"
        about = f" message {message_id!r}:" if message_id else ""
        super().__init__(f"channel {channel!r}:{about} {reason} ({kind})")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default pickling calls __init__ with the message text only, which would fail on
        # the keyword-only attributes.
        fields = {
            "reason": self.reason,
            "channel": self.channel,
            "retryable": self.retryable,
            "message_id": self.message_id,
            "code": self.code,
            "retry_after": self.retry_after,
        }
        return (_rebuild, (type(self), fields))


@runtime_checkable
class Channel(Protocol):
    """What the outbox needs from a delivery channel.

    ``deliver`` either returns (the message was handed over) or raises
    :class:`DeliveryError`, whose ``retryable`` flag decides between another attempt and a
    ``dead`` row; a channel reports every delivery failure that way and nothing else.
    ``close`` releases connections and may be called more than once.
    """

    name: str

    def deliver(self, message: OutgoingMessage) -> None:
        """Deliver one message, or raise :class:`DeliveryError`."""

    def close(self) -> None:
        """Release any connection the channel holds."""
