"""The e-mail channel: sends each message to its recipient's address over SMTP.

Configure it with arguments or with one URL::

    SmtpChannel("mail.example.com", 587, sender="crm@example.com", starttls=True,
                username="crm", password="s3cret")
    SmtpChannel.from_url("smtp://crm:s3cret@mail.example.com:587?starttls=1&sender=crm@example.com")
    SmtpChannel.from_url("smtps://crm:s3cret@mail.example.com?sender=crm@example.com")  # port 465

The password is never shown by ``repr()`` or in error messages.
"""

from __future__ import annotations

import base64
import hashlib
import re
import smtplib
import ssl
import threading
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import format_datetime, parseaddr
from urllib.parse import unquote, urlsplit

from crmflow._suggest import suggest
from crmflow.plugins.notifiers._message import DeliveryError, OutgoingMessage

__all__ = ["SmtpChannel"]

# 7bit makes the library choose quoted-printable or base64 for non-ASCII bodies, so a relay
# without 8BITMIME cannot mangle Chinese text on the way.
_POLICY = default_policy.clone(cte_type="7bit")
_URL_OPTIONS = ("sender", "starttls", "timeout", "name")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
# Characters that may appear unquoted in the left part of a Message-ID (RFC 5322 dot-atom).
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_MAX_SERVER_TEXT = 200


def _server_text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    text = " ".join(text.split())
    return text[:_MAX_SERVER_TEXT]


def _one_line(text: str) -> str:
    # A line break in a header would be refused by the e-mail library (and is how header
    # injection works), so a multi-line subject from a template is folded into one line.
    return " ".join(text.split())


def _close_quietly(connection: smtplib.SMTP) -> None:
    try:
        connection.quit()
    except (smtplib.SMTPException, OSError):
        # quit() is a courtesy to the server; the socket is closed below either way.
        pass
    finally:
        connection.close()


def _parse_bool(key: str, value: str) -> bool:
    folded = value.strip().lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    raise ValueError(f"SMTP URL option {key} must be 1/0, true/false, yes/no or on/off")


class SmtpChannel:
    """Deliver messages as plain-text UTF-8 e-mails through an SMTP server.

    Each message goes to ``message.address`` with ``From`` set to ``sender``, the message's
    subject, a ``Date`` from ``message.created_at`` and a ``Message-ID`` derived from
    ``message.id``, so every attempt at the same message carries the same Message-ID and
    mail systems that de-duplicate on it show it once. ``Auto-Submitted: auto-generated``
    tells auto-responders not to answer.

    One connection is opened on first use and kept for the following messages (checked with
    ``NOOP`` before reuse, reopened when the server dropped it); :meth:`close` ends it.
    Messages on one channel are sent one at a time; use several channels to send in parallel.

    Failures raise :class:`DeliveryError`. Not retryable: the message has no address or an
    unusable one, or the server answered the sender, recipient or content of this message
    with a permanent 5xx reply (e.g. ``550 no such user``). Everything else is retryable:
    refused connections, time-outs, TLS failures, 4xx replies such as greylisting, and also
    a refused login or a missing STARTTLS, because those are about the channel's
    configuration rather than the message, and an operator can fix them before the
    message's attempts run out.

    Args:
        host: the SMTP server.
        port: its port (25; 587 is the usual submission port with ``starttls``, 465 with
            ``use_ssl``).
        sender: the ``From`` address, optionally with a display name
            (``"CRM <crm@example.com>"``).
        use_ssl: connect with TLS from the start (SMTPS, usually port 465).
        starttls: upgrade a plain connection with STARTTLS before logging in.
        username: log in with this user name (requires ``password``).
        password: the password; never shown by ``repr()``.
        timeout: seconds to wait for the connection and for each server reply.
        name: the channel name messages refer to.
        ssl_context: TLS settings; the default verifies the server certificate against the
            system's trusted authorities.

    """

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        sender: str,
        use_ssl: bool = False,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        name: str = "email",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not host:
            raise ValueError("SMTP host must not be empty")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"SMTP port must be between 1 and 65535, got {port!r}")
        if use_ssl and starttls:
            raise ValueError(
                "use_ssl (TLS from the start, port 465) and starttls (upgrade a plain "
                "connection, port 587) exclude each other; pick one"
            )
        if (username is None) != (password is None):
            raise ValueError("SMTP login needs both username and password")
        if not timeout > 0:
            raise ValueError(f"timeout must be more than zero seconds, got {timeout!r}")
        if not name:
            raise ValueError("channel name must not be empty")
        envelope_from = parseaddr(sender)[1]
        if "@" not in envelope_from or "\r" in sender or "\n" in sender:
            raise ValueError(f"sender must be an e-mail address, got {sender!r}")
        self.name = name
        self._host = host
        self._port = port
        self._sender = sender
        self._envelope_from = envelope_from
        self._domain = self._message_id_domain(envelope_from)
        self._use_ssl = use_ssl
        self._starttls = starttls
        self._username = username
        self._password = password
        self._timeout = float(timeout)
        self._ssl_context = ssl_context
        self._connection: smtplib.SMTP | None = None
        # One SMTP conversation cannot interleave two messages.
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, ssl_context: ssl.SSLContext | None = None) -> SmtpChannel:
        """Build a channel from ``smtp://user:pass@host:port?sender=...&starttls=1``.

        ``smtp://`` is a plain connection (port 25 unless given), upgraded with STARTTLS when
        ``starttls=1``; ``smtps://`` is TLS from the start (port 465 unless given). Options:
        ``sender`` (required), ``starttls``, ``timeout`` (seconds), ``name``. User name and
        password are optional and percent-decoded, so ``@``, ``:``, ``/``, ``?``, ``#`` and
        ``%`` in them must be written as ``%40``, ``%3A``, ``%2F``, ``%3F``, ``%23``, ``%25``.
        Option values are percent-decoded too, but ``+`` stays a plus sign.

        :raises ValueError: for a malformed URL or an unknown option; the message never
            repeats the password.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad SMTP URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("smtp", "smtps"):
            raise ValueError(
                f"SMTP URL must start with smtp:// or smtps://, got {scheme or 'no'} scheme"
            )
        if not parts.hostname:
            raise ValueError("SMTP URL has no host")
        if parts.path not in ("", "/") or parts.fragment:
            raise ValueError("SMTP URL takes no path or fragment; put options in the query")
        options: dict[str, str] = {}
        # Not parse_qs: it turns "+" into a space, and "+" is common in sender addresses.
        for pair in parts.query.split("&"):
            if not pair:
                continue
            raw_key, equals, raw_value = pair.partition("=")
            key, value = unquote(raw_key), unquote(raw_value)
            if not equals:
                raise ValueError(f"SMTP URL option {key!r} has no value; write {key}=...")
            if key not in _URL_OPTIONS:
                hints = suggest(key, _URL_OPTIONS)
                hint = f" (did you mean {' or '.join(repr(h) for h in hints)}?)" if hints else ""
                raise ValueError(
                    f"unknown SMTP URL option {key!r}{hint}; known: {', '.join(_URL_OPTIONS)}"
                )
            if key in options:
                raise ValueError(f"SMTP URL option {key!r} is given more than once")
            options[key] = value
        if not options.get("sender"):
            raise ValueError("SMTP URL needs a sender, e.g. ?sender=crm@example.com")
        timeout = 10.0
        if "timeout" in options:
            try:
                timeout = float(options["timeout"])
            except ValueError:
                raise ValueError(
                    f"SMTP URL option timeout must be seconds, got {options['timeout']!r}"
                ) from None
        use_ssl = scheme == "smtps"
        return cls(
            parts.hostname,
            port if port is not None else (465 if use_ssl else 25),
            sender=options["sender"],
            use_ssl=use_ssl,
            starttls=_parse_bool("starttls", options.get("starttls", "")),
            username=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
            timeout=timeout,
            name=options.get("name", "email"),
            ssl_context=ssl_context,
        )

    def __repr__(self) -> str:
        login = ""
        if self._username is not None:
            login = f", username={self._username!r}, password='***'"
        tls = ", use_ssl=True" if self._use_ssl else ", starttls=True" if self._starttls else ""
        return (
            f"SmtpChannel({self._host!r}, {self._port}, sender={self._sender!r}{tls}{login}, "
            f"name={self.name!r})"
        )

    def deliver(self, message: OutgoingMessage) -> None:
        """Send one message; raise :class:`DeliveryError` when it was not accepted."""
        email, address = self._compose(message)
        with self._lock:
            connection = self._usable_connection(message)
            try:
                connection.send_message(email, from_addr=self._envelope_from, to_addrs=[address])
            except (smtplib.SMTPException, OSError) as exc:
                # The conversation may be in any state after a failure; start afresh next time.
                self._connection = None
                _close_quietly(connection)
                raise self._send_error(exc, message) from exc

    def close(self) -> None:
        """Say goodbye to the server and close the connection, if one is open."""
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            _close_quietly(connection)

    # -- composing ---------------------------------------------------------------------

    @staticmethod
    def _message_id_domain(envelope_from: str) -> str:
        domain = envelope_from.rpartition("@")[2]
        try:
            ascii_domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return "crmflow.invalid"
        return ascii_domain if _ATOM.fullmatch(ascii_domain) else "crmflow.invalid"

    def _message_id(self, message_id: str) -> str:
        left = message_id
        if not _ATOM.fullmatch(left):
            # Outbox ids are normally plain; anything else is hashed so the header stays
            # valid and still the same for every attempt.
            left = hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:40]
        return f"<crmflow.{left}@{self._domain}>"

    def _compose(self, message: OutgoingMessage) -> tuple[EmailMessage, str]:
        address = message.address.strip()
        if not address:
            raise DeliveryError(
                f"recipient {message.recipient!r} has no email address",
                channel=self.name,
                retryable=False,
                message_id=message.id,
            )
        if "@" not in address or any(c.isspace() or c in "<>," for c in address):
            raise DeliveryError(
                f"recipient {message.recipient!r} has an unusable email address {address!r}",
                channel=self.name,
                retryable=False,
                message_id=message.id,
            )
        email = EmailMessage(policy=_POLICY)
        email["From"] = self._sender
        email["To"] = address
        email["Subject"] = _one_line(message.subject)
        email["Date"] = format_datetime(message.created_at)
        email["Message-ID"] = self._message_id(message.id)
        email["Auto-Submitted"] = "auto-generated"
        email.set_content(message.body, charset="utf-8")
        return email, address

    # -- connecting --------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _usable_connection(self, message: OutgoingMessage) -> smtplib.SMTP:
        connection = self._connection
        if connection is not None:
            try:
                code, _ = connection.noop()
            except (smtplib.SMTPException, OSError):
                code = 0
            if code == 250:
                return connection
            self._connection = None
            _close_quietly(connection)
        try:
            connection = self._open()
        except (smtplib.SMTPException, OSError) as exc:
            raise self._connect_error(exc, message) from exc
        self._connection = connection
        return connection

    def _open(self) -> smtplib.SMTP:
        connection: smtplib.SMTP
        if self._use_ssl:
            connection = smtplib.SMTP_SSL(
                self._host, self._port, timeout=self._timeout, context=self._context()
            )
        else:
            connection = smtplib.SMTP(self._host, self._port, timeout=self._timeout)
        try:
            connection.ehlo_or_helo_if_needed()
            if self._starttls:
                connection.starttls(context=self._context())
                connection.ehlo()
            if self._username is not None and self._password is not None:
                self._login(connection, self._username, self._password)
        except BaseException:
            _close_quietly(connection)
            raise
        return connection

    @staticmethod
    def _login(connection: smtplib.SMTP, username: str, password: str) -> None:
        if username.isascii() and password.isascii():
            connection.login(username, password)
            return
        # smtplib sends credentials as ASCII only; AUTH PLAIN (RFC 4616) carries UTF-8, so
        # non-ASCII credentials are sent that way directly.
        mechanisms = connection.esmtp_features.get("auth", "").upper().split()
        if "PLAIN" not in mechanisms:
            raise smtplib.SMTPNotSupportedError(
                "a non-ASCII user name or password needs AUTH PLAIN, which the server "
                "does not offer"
            )
        credentials = b"\0" + username.encode("utf-8") + b"\0" + password.encode("utf-8")
        token = base64.b64encode(credentials).decode("ascii")
        code, reply = connection.docmd("AUTH", "PLAIN " + token)
        if code != 235:
            raise smtplib.SMTPAuthenticationError(code, reply)

    # -- classifying failures ----------------------------------------------------------

    def _where(self) -> str:
        return f"{self._host}:{self._port}"

    def _connect_error(self, exc: BaseException, message: OutgoingMessage) -> DeliveryError:
        code: int | None = None
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            code = exc.smtp_code
            reason = (
                f"{self._where()} refused the login of user {self._username!r}: "
                f"{code} {_server_text(exc.smtp_error)}"
            )
        elif isinstance(exc, smtplib.SMTPNotSupportedError):
            reason = f"{self._where()} does not support what the channel needs: {exc}"
        elif isinstance(exc, smtplib.SMTPResponseException):
            code = exc.smtp_code
            reason = f"{self._where()} answered {code} {_server_text(exc.smtp_error)}"
        elif isinstance(exc, ssl.SSLCertVerificationError):
            reason = f"TLS certificate of {self._where()} not accepted: {exc.verify_message}"
        elif isinstance(exc, TimeoutError):
            reason = f"no answer from {self._where()} within {self._timeout:g} s"
        elif isinstance(exc, OSError) and exc.strerror:
            reason = f"cannot connect to {self._where()}: {exc.strerror}"
        else:
            reason = f"cannot talk to {self._where()}: {exc or type(exc).__name__}"
        return DeliveryError(
            reason, channel=self.name, retryable=True, message_id=message.id, code=code
        )

    def _send_error(self, exc: BaseException, message: OutgoingMessage) -> DeliveryError:
        code: int | None = None
        retryable = True
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            refusals = list(exc.recipients.values())
            code, text = refusals[0] if refusals else (0, b"")
            reason = f"{self._where()} refused recipient {message.address!r}: {code} " + (
                _server_text(text)
            )
        elif isinstance(exc, smtplib.SMTPResponseException):
            code = exc.smtp_code
            what = "sender" if isinstance(exc, smtplib.SMTPSenderRefused) else "message"
            reason = f"{self._where()} refused the {what}: {code} {_server_text(exc.smtp_error)}"
        elif isinstance(exc, smtplib.SMTPNotSupportedError):
            # e.g. a non-ASCII address and a server without SMTPUTF8: it will not change.
            retryable = False
            reason = f"{self._where()} cannot take this message: {exc}"
        elif isinstance(exc, TimeoutError):
            reason = f"no answer from {self._where()} within {self._timeout:g} s"
        else:
            reason = f"connection to {self._where()} failed while sending: {exc}"
        if code is not None and 500 <= code < 600:
            retryable = False
        return DeliveryError(
            reason, channel=self.name, retryable=retryable, message_id=message.id, code=code
        )
