"""The log channel: writes one line per message to a logger instead of sending it.

Useful in development, in tests, and as a record next to the real channels.
"""

from __future__ import annotations

import contextlib
import logging

from crmflow.plugins.notifiers._message import OutgoingMessage

__all__ = ["LogChannel"]


class LogChannel:
    """Log each message as one INFO line on the ``logger_name`` logger; never fails.

    The line names the recipient, the subject, the instance and the event, e.g.::

        notify 'u-7' via log: 'Order SO-1001 needs your approval' (instance 'SO-1001',
        event 'transition:approve', message 'ob-42', attempt 1)

    Values are quoted with ``repr()`` so a line break in a subject cannot forge a second log
    line. The body is not logged: it can be long and personal.
    """

    def __init__(self, name: str = "log", logger_name: str = "crmflow.notify") -> None:
        if not name:
            raise ValueError("channel name must not be empty")
        self.name = name
        self._logger = logging.getLogger(logger_name)

    def __repr__(self) -> str:
        return f"LogChannel(name={self.name!r}, logger_name={self._logger.name!r})"

    def deliver(self, message: OutgoingMessage) -> None:
        """Log the message."""
        # logging reports handler errors itself; this only covers a faulty filter, and a
        # notification must not be retried or go dead over a log line.
        with contextlib.suppress(Exception):
            self._logger.info(
                "notify %r via %s: %r (instance %r, event %r, message %r, attempt %d)",
                message.recipient,
                self.name,
                message.subject,
                message.instance_key,
                message.event,
                message.id,
                message.attempt,
            )

    def close(self) -> None:
        """Nothing to release."""
