"""Notification channels and the retry policy for delivering notifications.

A channel delivers one :class:`OutgoingMessage` at a time and reports failure with a
:class:`DeliveryError` whose ``retryable`` flag tells whether another attempt may succeed;
:class:`RetryPolicy` says when that attempt is due and when the message is given up
(``dead``). Built-in channels:

- :class:`SmtpChannel`: e-mail over SMTP (``smtp://`` / ``smtps://`` URLs);
- :class:`WebhookChannel`: signed JSON POSTs, checked by receivers with
  :func:`verify_signature`;
- :class:`LogChannel`: one log line per message.

Any object with a ``name``, ``deliver(message)`` and ``close()`` is a :class:`Channel`.
"""

from crmflow.plugins.notifiers._message import Channel, DeliveryError, OutgoingMessage
from crmflow.plugins.notifiers._retry import RetryPolicy
from crmflow.plugins.notifiers.log import LogChannel
from crmflow.plugins.notifiers.smtp import SmtpChannel
from crmflow.plugins.notifiers.webhook import WebhookChannel, compute_signature, verify_signature

__all__ = [
    "Channel",
    "DeliveryError",
    "LogChannel",
    "OutgoingMessage",
    "RetryPolicy",
    "SmtpChannel",
    "WebhookChannel",
    "compute_signature",
    "verify_signature",
]
