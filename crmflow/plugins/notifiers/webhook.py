"""The webhook channel: POSTs each message as signed JSON to an HTTP endpoint.

The request body is a JSON object (UTF-8)::

    {"id": "ob-42", "event": "transition:approve", "instance_key": "SO-1001",
     "recipient": "u-7", "subject": "...", "body": "...",
     "created_at": "2026-01-05T09:00:00+00:00", "attempt": 1, "metadata": {...}}

with the headers

- ``X-Crmflow-Delivery``: the message id, the same for every attempt (drop duplicates on it);
- ``X-Crmflow-Timestamp``: Unix seconds when this attempt was signed;
- ``X-Crmflow-Signature``: ``sha256=`` and the hex HMAC-SHA256, keyed with the shared
  secret, of ``<timestamp>.<body bytes>``.

A receiver checks a request with :func:`verify_signature` and answers 2xx once it has taken
the message. Only the standard library is used.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit
from uuid import UUID

from crmflow.plugins.notifiers._message import DeliveryError, OutgoingMessage

__all__ = ["WebhookChannel", "compute_signature", "verify_signature"]

_SIGNATURE_PREFIX = "sha256="
_RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "x-crmflow-delivery",
        "x-crmflow-signature",
        "x-crmflow-timestamp",
    }
)
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_MAX_ANSWER_TEXT = 200
# A per-recipient address is used as the endpoint only when it is an absolute HTTP(S) URL;
# anything else (say an e-mail address a generic recipient resolver filled in) is ignored.
_URL_ADDRESS = re.compile(r"^https?://", re.IGNORECASE)


def _as_bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def compute_signature(secret: str | bytes, body: bytes, timestamp: str | int) -> str:
    """The ``X-Crmflow-Signature`` value for ``body`` sent at ``timestamp``.

    ``sha256=`` followed by the hex HMAC-SHA256 of ``b"<timestamp>." + body`` keyed with
    ``secret`` (a ``str`` secret is UTF-8 encoded).
    """
    signed = str(timestamp).encode("ascii") + b"." + body
    return _SIGNATURE_PREFIX + hmac.new(_as_bytes(secret), signed, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes,
    body: bytes,
    timestamp: str | int,
    signature: str,
    *,
    tolerance: float | timedelta = 300,
    now: float | datetime | None = None,
) -> bool:
    """Whether a webhook request is authentic and fresh.

    Pass the raw request body (the bytes as received, before any JSON parsing) and the
    ``X-Crmflow-Timestamp`` and ``X-Crmflow-Signature`` headers. Returns ``False`` when the
    signature does not match, when a header is malformed, or when the timestamp is more than
    ``tolerance`` (seconds or a timedelta; default five minutes) away from ``now`` (Unix
    seconds or an aware datetime; default the current time), so a captured request cannot
    be replayed later. Within the tolerance a replay still verifies: drop duplicates by the
    ``X-Crmflow-Delivery`` id.

    The comparison takes the same time whatever the signature, so it does not leak how much
    of a forged signature was right.

    :raises ValueError: when ``tolerance`` is negative or ``secret`` is empty.
    """
    window = tolerance.total_seconds() if isinstance(tolerance, timedelta) else float(tolerance)
    if window < 0:
        raise ValueError(f"tolerance must not be negative, got {tolerance!r}")
    if not secret:
        raise ValueError("the webhook secret must not be empty")
    stamp = str(timestamp).strip()
    if not _TIMESTAMP.fullmatch(stamp):
        return False
    if now is None:
        current = time.time()
    elif isinstance(now, datetime):
        current = (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).timestamp()
    else:
        current = float(now)
    if abs(current - int(stamp)) > window:
        return False
    expected = compute_signature(secret, body, stamp).encode("ascii")
    given = signature.strip().encode("utf-8", "replace")
    return hmac.compare_digest(expected, given)


def _json_default(value: Any) -> Any:
    # Instance data holds money as Decimal and deadlines as dates; receivers in any language
    # read them best as strings (a float would lose cents).
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("a webhook URL must be an absolute http:// or https:// URL")
    _ = parts.port  # raises ValueError for a malformed port
    return url


def _origin(url: str) -> str:
    # Webhook URLs often carry a token in the path or query (chat services do this), so
    # only the scheme and host are ever shown.
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme.lower()}://{host}{port}"


def _retry_after(headers: Message | None) -> timedelta | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(timedelta(0), when - datetime.now(UTC))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would re-send (or, for 301/302, silently drop) a signed body to an address
    # nobody configured; the answer is reported instead.
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> None:
        return None


class WebhookChannel:
    """Deliver messages as signed JSON POST requests (see the module documentation).

    The endpoint is ``url``, unless ``message.address`` is itself an absolute ``http://`` or
    ``https://`` URL: then that address is used, so each recipient can have a webhook of
    their own, signed with the same secret. Any other address is ignored.

    Outcome by answer: 2xx delivered. Retryable :class:`DeliveryError`: 408, 429 and 5xx
    answers (with ``retry_after`` when the server sent ``Retry-After``), refused
    connections, time-outs and broken connections. Not retryable: 3xx (redirects are not
    followed; configure the final URL), every other 4xx, and a message whose metadata is
    not JSON-compatible.

    Args:
        url: the endpoint, ``http://`` or ``https://``. Only its scheme and host appear in
            ``repr()`` and error messages, since webhook URLs often embed tokens.
        secret: the shared HMAC key (``str`` is UTF-8 encoded); never shown.
        timeout: seconds to wait for the connection and the answer.
        name: the channel name messages refer to.
        headers: extra request headers, e.g. an ``Authorization`` the receiver requires;
            they cannot replace ``Content-Type`` or the ``X-Crmflow-*`` headers.

    HTTPS certificates are verified against the system's trusted authorities, and the usual
    ``https_proxy``/``no_proxy`` environment variables apply.

    """

    def __init__(
        self,
        url: str,
        *,
        secret: str | bytes,
        timeout: float = 10.0,
        name: str = "webhook",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._url = _check_url(url)
        if not secret:
            raise ValueError("the webhook secret must not be empty")
        if not timeout > 0:
            raise ValueError(f"timeout must be more than zero seconds, got {timeout!r}")
        if not name:
            raise ValueError("channel name must not be empty")
        extra = dict(headers or {})
        for key, value in extra.items():
            if key.strip().lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {key!r} is set by the channel and cannot be replaced")
            if any(c in "\r\n" for c in key + value):
                raise ValueError(f"header {key!r} must not contain line breaks")
        self.name = name
        self._secret = _as_bytes(secret)
        self._timeout = float(timeout)
        self._headers = extra
        self._opener = urllib.request.build_opener(_NoRedirect())

    def __repr__(self) -> str:
        return f"WebhookChannel({_origin(self._url) + '/...'!r}, name={self.name!r})"

    def _payload(self, message: OutgoingMessage) -> bytes:
        document = {
            "id": message.id,
            "event": message.event,
            "instance_key": message.instance_key,
            "recipient": message.recipient,
            "subject": message.subject,
            "body": message.body,
            "created_at": message.created_at.isoformat(),
            "attempt": message.attempt,
            "metadata": dict(message.metadata),
        }
        try:
            text = json.dumps(
                document,
                ensure_ascii=False,
                allow_nan=False,
                separators=(",", ":"),
                default=_json_default,
            )
        except (TypeError, ValueError) as exc:
            raise DeliveryError(
                f"metadata is not JSON-compatible: {exc}",
                channel=self.name,
                retryable=False,
                message_id=message.id,
            ) from exc
        return text.encode("utf-8")

    def deliver(self, message: OutgoingMessage) -> None:
        """POST one message; raise :class:`DeliveryError` unless the answer is 2xx."""
        url = self._url
        if _URL_ADDRESS.match(message.address.strip()):
            try:
                url = _check_url(message.address.strip())
            except ValueError as exc:
                self._fail(
                    message,
                    f"recipient {message.recipient!r} has a malformed webhook URL",
                    retryable=False,
                    cause=exc,
                )
        if not (message.id.isascii() and message.id.isprintable() and message.id.strip()):
            # HTTP header values are ASCII text; a receiver could not de-duplicate on an id
            # that had to be mangled to fit.
            self._fail(
                message,
                "the message id cannot be sent in the X-Crmflow-Delivery header "
                "(it must be printable ASCII)",
                retryable=False,
            )
        body = self._payload(message)
        timestamp = str(int(time.time()))
        headers = {
            **self._headers,
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "crmflow-webhook",
            "X-Crmflow-Delivery": message.id,
            "X-Crmflow-Timestamp": timestamp,
            "X-Crmflow-Signature": compute_signature(self._secret, body, timestamp),
        }
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        where = _origin(url)
        try:
            with self._opener.open(request, timeout=self._timeout):
                # Anything that is not 2xx arrives as HTTPError below.
                return
        except urllib.error.HTTPError as exc:
            with exc:
                self._answer_error(message, where, exc)
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                text = f"no answer from {where} within {self._timeout:g} s"
            elif isinstance(reason, OSError) and reason.strerror:
                text = f"cannot connect to {where}: {reason.strerror}"
            else:
                text = f"cannot connect to {where}: {reason}"
            self._fail(message, text, retryable=True, cause=exc)
        except TimeoutError as exc:
            text = f"no answer from {where} within {self._timeout:g} s"
            self._fail(message, text, retryable=True, cause=exc)
        except (http.client.HTTPException, OSError) as exc:
            text = f"connection to {where} failed: {exc or type(exc).__name__}"
            self._fail(message, text, retryable=True, cause=exc)

    def close(self) -> None:
        """Nothing to release: every delivery uses its own connection."""

    def _answer_error(
        self, message: OutgoingMessage, where: str, exc: urllib.error.HTTPError
    ) -> NoReturn:
        status = exc.code
        try:
            answer = exc.read(_MAX_ANSWER_TEXT).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            answer = ""
        answer = " ".join(answer.split())
        detail = f"{where} answered {status} {exc.reason}" + (f": {answer}" if answer else "")
        if 300 <= status < 400:
            detail += " (redirects are not followed; configure the final URL)"
        retryable = status in (408, 429) or status >= 500
        raise DeliveryError(
            detail,
            channel=self.name,
            retryable=retryable,
            message_id=message.id,
            code=status,
            retry_after=_retry_after(exc.headers) if retryable else None,
        ) from exc

    def _fail(
        self,
        message: OutgoingMessage,
        reason: str,
        *,
        retryable: bool,
        cause: BaseException | None = None,
    ) -> NoReturn:
        raise DeliveryError(
            reason, channel=self.name, retryable=retryable, message_id=message.id
        ) from cause
