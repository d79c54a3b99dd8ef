"""Notification channels against real servers on loopback, and the retry policy.

SMTP tests run an aiosmtpd server in a thread; webhook tests run a ThreadingHTTPServer.
Both listen on ephemeral ports. TLS tests make a throw-away self-signed certificate with the
``cryptography`` package or the ``openssl`` binary, and are skipped when neither exists.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import inspect
import json
import logging
import random
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmflow import CrmflowError
from crmflow.plugins import notifiers
from crmflow.plugins.notifiers import (
    Channel,
    DeliveryError,
    LogChannel,
    OutgoingMessage,
    RetryPolicy,
    SmtpChannel,
    WebhookChannel,
    compute_signature,
    verify_signature,
)

CHINESE_SUBJECT = "订单 SO-1001 待审批"
CHINESE_BODY = "您好，\n请审批订单 SO-1001，金额 ¥8,000.00。\n谢谢！"  # noqa: RUF001
SECRET = "whsec-例-0123456789"


def make_message(**changes: Any) -> OutgoingMessage:
    values: dict[str, Any] = {
        "id": "ob-42",
        "channel": "email",
        "recipient": "u-7",
        "address": "approver@example.com",
        "subject": CHINESE_SUBJECT,
        "body": CHINESE_BODY,
        "instance_key": "SO-1001",
        "event": "transition:approve",
        "attempt": 1,
        "created_at": datetime(2026, 1, 5, 9, 0, tzinfo=UTC),
        "metadata": {"amount": Decimal("8000.00"), "due": date(2026, 1, 9), "tags": ["vip"]},
    }
    values.update(changes)
    return OutgoingMessage(**values)


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it) but not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (in the kernel backlog) but never says a word."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    yield sock.getsockname()[1]
    sock.close()


# --- TLS material ------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def _cert_with_cryptography(cert: Path, key: Path) -> bool:
    try:
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return False
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        # Key identifiers: Python 3.13's strict verification refuses a trust anchor without.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(private.public_key()), False
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return True


def _cert_with_openssl(cert: Path, key: Path) -> bool:
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return True


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    folder = tmp_path_factory.mktemp("tls")
    files = TlsFiles(folder / "cert.pem", folder / "key.pem")
    if not (
        _cert_with_cryptography(files.cert, files.key) or _cert_with_openssl(files.cert, files.key)
    ):
        pytest.skip("needs the cryptography package or the openssl binary to make a certificate")
    return files


# --- SMTP server ---------------------------------------------------------------------------


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    login: bytes | None

    def parsed(self) -> email.message.EmailMessage:
        parsed = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed


class RecordingHandler:
    """aiosmtpd handler: keeps every accepted mail; optionally refuses recipients."""

    def __init__(self, rcpt_reply: str | None = None) -> None:
        self.rcpt_reply = rcpt_reply
        self.received: list[ReceivedMail] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        login = session.auth_data.login if session.authenticated else None
        self.received.append(
            ReceivedMail(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                bytes(envelope.original_content or envelope.content),
                session.ssl is not None,
                login,
            )
        )
        return "250 Message accepted"


@dataclass
class SmtpServer:
    controller: Any
    handler: RecordingHandler
    host: str = "127.0.0.1"
    running: bool = True

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.controller.stop()


StartSmtp = Callable[..., SmtpServer]


@pytest.fixture
def start_smtp() -> Iterator[StartSmtp]:
    controller_module = pytest.importorskip(
        "aiosmtpd.controller", reason="aiosmtpd is needed for the SMTP tests"
    )

    class EphemeralController(controller_module.Controller):  # type: ignore[misc,name-defined]
        # The stock controller connects to its configured port to check it is up; with
        # port 0 the real port is only known once the server is bound.
        def _trigger_server(self) -> None:
            self.port = self.server.sockets[0].getsockname()[1]
            super()._trigger_server()

    servers: list[SmtpServer] = []

    def start(handler: RecordingHandler | None = None, **kwargs: Any) -> SmtpServer:
        handler = handler or RecordingHandler()
        controller = EphemeralController(
            handler, hostname="127.0.0.1", port=0, server_hostname="localhost", **kwargs
        )
        controller.start()
        server = SmtpServer(controller, handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def password_authenticator(user: bytes, password: bytes) -> Callable[..., Any]:
    from aiosmtpd.smtp import AuthResult

    def authenticate(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        ok = auth_data.login == user and auth_data.password == password
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return authenticate


# --- SMTP tests ----------------------------------------------------------------------------


def test_smtp_delivers_utf8_mail_with_a_stable_message_id(start_smtp: StartSmtp) -> None:
    server = start_smtp()
    channel = SmtpChannel(server.host, server.port, sender="CRM 系统 <crm@example.com>")
    message = make_message()
    try:
        channel.deliver(message)
        channel.deliver(dataclasses.replace(message, attempt=2))
    finally:
        channel.close()
    first, second = server.handler.received
    assert first.mail_from == "crm@example.com"
    assert first.rcpt_tos == ["approver@example.com"]
    mail = first.parsed()
    assert mail["To"] == "approver@example.com"
    assert mail["Subject"] == CHINESE_SUBJECT
    assert mail["From"].addresses[0].display_name == "CRM 系统"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["Date"].datetime == message.created_at
    assert mail.get_content_charset() == "utf-8"
    assert mail.get_content().rstrip("\n") == CHINESE_BODY
    # Non-ASCII text travels 7-bit safe, whatever the relays in between support.
    first.content.decode("ascii")
    assert mail["Message-ID"] == second.parsed()["Message-ID"]
    assert mail["Message-ID"] == "<crmflow.ob-42@example.com>"


def test_smtp_message_id_is_valid_and_stable_for_any_outbox_id(start_smtp: StartSmtp) -> None:
    server = start_smtp()
    odd_id = "row 7 <of> the outbox"
    ids = []
    for _ in range(2):
        channel = SmtpChannel(server.host, server.port, sender="crm@example.com")
        channel.deliver(make_message(id=odd_id))
        channel.close()
    for received in server.handler.received:
        ids.append(received.parsed()["Message-ID"])
    assert ids[0] == ids[1]
    assert " " not in ids[0] and ids[0].startswith("<crmflow.") and ids[0].endswith("@example.com>")


def test_smtp_connection_refused_is_retryable(refusing_port: int) -> None:
    channel = SmtpChannel("127.0.0.1", refusing_port, sender="crm@example.com", timeout=5)
    with pytest.raises(DeliveryError) as caught:
        channel.deliver(make_message())
    assert caught.value.retryable is True
    assert caught.value.channel == "email"
    assert caught.value.message_id == "ob-42"
    assert f"127.0.0.1:{refusing_port}" in str(caught.value)


def test_smtp_server_gone_after_a_delivery_is_retryable(start_smtp: StartSmtp) -> None:
    server = start_smtp()
    channel = SmtpChannel(server.host, server.port, sender="crm@example.com", timeout=5)
    channel.deliver(make_message())
    server.stop()
    with pytest.raises(DeliveryError) as caught:
        channel.deliver(make_message(id="ob-43"))
    assert caught.value.retryable is True
    channel.close()
    channel.close()  # closing twice is harmless


def test_smtp_silent_server_times_out_retryably(silent_port: int) -> None:
    channel = SmtpChannel("127.0.0.1", silent_port, sender="crm@example.com", timeout=0.2)
    with pytest.raises(DeliveryError) as caught:
        channel.deliver(make_message())
    assert caught.value.retryable is True


def test_smtp_permanent_recipient_refusal_is_not_retryable(start_smtp: StartSmtp) -> None:
    server = start_smtp(RecordingHandler(rcpt_reply="550 5.1.1 No such user here"))
    channel = SmtpChannel(server.host, server.port, sender="crm@example.com")
    with pytest.raises(DeliveryError) as caught:
        channel.deliver(make_message())
    assert caught.value.retryable is False
    assert caught.value.code == 550
    assert "No such user" in str(caught.value)
    assert server.handler.received == []
    # The channel recovers: the next message goes through on a fresh connection.
    server.handler.rcpt_reply = None
    channel.deliver(make_message(id="ob-43"))
    channel.close()
    assert len(server.handler.received) == 1


def test_smtp_transient_recipient_refusal_is_retryable(start_smtp: StartSmtp) -> None:
    server = start_smtp(RecordingHandler(rcpt_reply="450 4.2.0 Greylisted, try again later"))
    channel = SmtpChannel(server.host, server.port, sender="crm@example.com")
    with pytest.raises(DeliveryError) as caught:
        channel.deliver(make_message())
    channel.close()
    assert caught.value.retryable is True
    assert caught.value.code == 450


@pytest.mark.parametrize("address", ["", "   "])
def test_smtp_recipient_without_address_is_not_retryable(address: str) -> None:
    # No server: the failure is decided before any connection is made.
    channel = SmtpChannel("127.0.0.1", 1, sender="crm@example.com")
    with pytest.raises(DeliveryError, match="recipient 'u-7' has no email address") as caught:
        channel.deliver(make_message(address=address))
    assert caught.value.retryable is False


def test_smtp_unusable_address_is_not_retryable() -> None:
    channel = SmtpChannel("127.0.0.1", 1, sender="crm@example.com")
    with pytest.raises(DeliveryError) as caught:
        channel.deliver(make_message(address="a@example.com, b@example.com"))
    assert caught.value.retryable is False


def test_smtp_multiline_subject_cannot_inject_headers(start_smtp: StartSmtp) -> None:
    server = start_smtp()
    channel = SmtpChannel(server.host, server.port, sender="crm@example.com")
    channel.deliver(make_message(subject="Approve\r\nBcc: attacker@example.com"))
    channel.close()
    mail = server.handler.received[0].parsed()
    assert mail["Bcc"] is None
    assert mail["Subject"] == "Approve Bcc: attacker@example.com"
    assert server.handler.received[0].rcpt_tos == ["approver@example.com"]


def test_smtp_starttls_and_login(start_smtp: StartSmtp, tls_files: TlsFiles) -> None:
    password = "p@ss:wörd/?#"
    server = start_smtp(
        tls_context=tls_files.server_context(),
        require_starttls=True,
        auth_required=True,
        authenticator=password_authenticator(b"crm", password.encode()),
    )
    url = (
        f"smtp://crm:p%40ss%3Aw%C3%B6rd%2F%3F%23@127.0.0.1:{server.port}"
        "?starttls=1&sender=crm+alerts@example.com&timeout=5"
    )
    channel = SmtpChannel.from_url(url, ssl_context=tls_files.client_context())
    assert password not in repr(channel) and "p%40ss" not in repr(channel)
    channel.deliver(make_message())
    channel.close()
    received = server.handler.received[0]
    assert received.tls is True
    assert received.login == b"crm"
    assert received.mail_from == "crm+alerts@example.com"
    assert received.parsed().get_content().rstrip("\n") == CHINESE_BODY


def test_smtp_refused_login_is_retryable_and_hides_the_password(
    start_smtp: StartSmtp, tls_files: TlsFiles
) -> None:
    server = start_smtp(
        tls_context=tls_files.server_context(),
        require_starttls=True,
        auth_required=True,
        authenticator=password_authenticator(b"crm", b"right"),
    )
    channel = SmtpChannel(
        server.host,
        server.port,
        sender="crm@example.com",
        starttls=True,
        username="crm",
        password="wrong-secret",
        ssl_context=tls_files.client_context(),
    )
    with pytest.raises(DeliveryError) as caught:
        channel.deliver(make_message())
    assert caught.value.retryable is True
    assert caught.value.code == 535
    assert "wrong-secret" not in str(caught.value)
    assert server.handler.received == []


def test_smtp_untrusted_certificate_is_refused(start_smtp: StartSmtp, tls_files: TlsFiles) -> None:
    server = start_smtp(tls_context=tls_files.server_context(), require_starttls=True)
    # A context that trusts nothing: the self-signed certificate cannot be verified.
    channel = SmtpChannel(
        server.host,
        server.port,
        sender="crm@example.com",
        starttls=True,
        ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),
    )
    with pytest.raises(DeliveryError, match="certificate") as caught:
        channel.deliver(make_message())
    assert caught.value.retryable is True
    assert server.handler.received == []


def test_smtps_implicit_tls_from_url(start_smtp: StartSmtp, tls_files: TlsFiles) -> None:
    server = start_smtp(
        ssl_context=tls_files.server_context(),
        auth_require_tls=False,  # aiosmtpd only counts STARTTLS as TLS for AUTH
        authenticator=password_authenticator(b"crm", b"s3cret"),
    )
    channel = SmtpChannel.from_url(
        f"smtps://crm:s3cret@localhost:{server.port}?sender=crm@example.com&name=mail",
        ssl_context=tls_files.client_context(),
    )
    assert channel.name == "mail"
    channel.deliver(make_message())
    channel.close()
    assert server.handler.received[0].login == b"crm"


def test_smtp_from_url_defaults_and_repr() -> None:
    plain = SmtpChannel.from_url("smtp://mail.example.com?sender=crm@example.com")
    assert repr(plain) == (
        "SmtpChannel('mail.example.com', 25, sender='crm@example.com', name='email')"
    )
    tls = SmtpChannel.from_url("smtps://u:topsecret@mail.example.com?sender=crm@example.com")
    assert repr(tls) == (
        "SmtpChannel('mail.example.com', 465, sender='crm@example.com', use_ssl=True, "
        "username='u', password='***', name='email')"
    )
    assert "topsecret" not in repr(tls)
    submission = SmtpChannel.from_url(
        "smtp://mail.example.com:587?starttls=yes&sender=crm@example.com"
    )
    assert "587" in repr(submission) and "starttls=True" in repr(submission)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://u:pw@mail.example.com?sender=a@b.c", "smtp:// or smtps://"),
        ("smtp://u:pw@mail.example.com", "needs a sender"),
        ("smtp://u:pw@mail.example.com?sender=a@b.c&startls=1", "did you mean 'starttls'"),
        ("smtp://u:pw@mail.example.com?sender=a@b.c&starttls=maybe", "starttls must be"),
        ("smtp://u:pw@mail.example.com?sender=a@b.c&sender=d@e.f", "more than once"),
        ("smtp://u:pw@mail.example.com:99999?sender=a@b.c", "bad SMTP URL"),
        ("smtp://u:pw@mail.example.com/inbox?sender=a@b.c", "no path"),
        ("smtps://u:pw@mail.example.com?sender=a@b.c&starttls=1", "exclude each other"),
        ("smtp://u:pw@mail.example.com?sender=a@b.c&timeout=soon", "timeout must be seconds"),
        ("smtp://u@mail.example.com?sender=a@b.c", "both username and password"),
    ],
)
def test_smtp_from_url_refuses_bad_urls_without_echoing_the_password(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error) as caught:
        SmtpChannel.from_url(url)
    assert ":pw" not in str(caught.value)


def test_smtp_constructor_validation() -> None:
    with pytest.raises(ValueError, match="sender"):
        SmtpChannel("mail.example.com", sender="not an address")
    with pytest.raises(ValueError, match="port"):
        SmtpChannel("mail.example.com", 0, sender="crm@example.com")
    with pytest.raises(ValueError, match="host"):
        SmtpChannel("", sender="crm@example.com")


# --- webhook receiver ----------------------------------------------------------------------


@dataclass
class CapturedRequest:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    base_url: str
    status: int = 204
    answer: bytes = b""
    reply_headers: dict[str, str] = field(default_factory=dict)
    requests: list[CapturedRequest] = field(default_factory=list)


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: Any

    def do_POST(self) -> None:
        receiver: Receiver = self.server.receiver
        body = self.rfile.read(int(self.headers["Content-Length"]))
        receiver.requests.append(CapturedRequest(self.path, dict(self.headers.items()), body))
        self.send_response(receiver.status)
        for key, value in receiver.reply_headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(receiver.answer)))
        self.end_headers()
        self.wfile.write(receiver.answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_server() -> Iterator[ThreadingHTTPServer]:
    # One server per module: shutting one down waits for its poll interval.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ReceiverHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def receiver(http_server: ThreadingHTTPServer) -> Receiver:
    host, port = http_server.server_address[:2]
    state = Receiver(f"http://{host!s}:{port}")
    http_server.receiver = state  # type: ignore[attr-defined]
    return state


def header(request: CapturedRequest, name: str) -> str:
    folded = {key.lower(): value for key, value in request.headers.items()}
    return folded[name.lower()]


# --- webhook tests -------------------------------------------------------------------------


def test_webhook_posts_signed_json(receiver: Receiver) -> None:
    channel = WebhookChannel(
        receiver.base_url + "/hooks/crm", secret=SECRET, headers={"Authorization": "Bearer t"}
    )
    message = make_message(channel="webhook", address="")
    channel.deliver(message)
    (request,) = receiver.requests
    assert request.path == "/hooks/crm"
    assert header(request, "Content-Type") == "application/json; charset=utf-8"
    assert header(request, "Authorization") == "Bearer t"
    assert header(request, "X-Crmflow-Delivery") == "ob-42"
    payload = json.loads(request.body.decode("utf-8"))
    assert payload == {
        "id": "ob-42",
        "event": "transition:approve",
        "instance_key": "SO-1001",
        "recipient": "u-7",
        "subject": CHINESE_SUBJECT,
        "body": CHINESE_BODY,
        "created_at": "2026-01-05T09:00:00+00:00",
        "attempt": 1,
        "metadata": {"amount": "8000.00", "due": "2026-01-09", "tags": ["vip"]},
    }
    timestamp = header(request, "X-Crmflow-Timestamp")
    signature = header(request, "X-Crmflow-Signature")
    assert signature.startswith("sha256=")
    assert verify_signature(SECRET, request.body, timestamp, signature)
    assert verify_signature(SECRET.encode(), request.body, int(timestamp), signature)


def test_webhook_signature_refuses_tampering_and_staleness(receiver: Receiver) -> None:
    WebhookChannel(receiver.base_url, secret=SECRET).deliver(make_message())
    (request,) = receiver.requests
    body = request.body
    stamp = header(request, "X-Crmflow-Timestamp")
    signature = header(request, "X-Crmflow-Signature")
    sent = int(stamp)

    assert verify_signature(SECRET, body, stamp, signature, now=sent + 299)
    assert not verify_signature(SECRET, body.replace(b"8000.00", b"9000.00"), stamp, signature)
    assert not verify_signature("another secret", body, stamp, signature)
    assert not verify_signature(SECRET, body, str(sent + 1), signature)
    assert not verify_signature(SECRET, body, stamp, signature, now=sent + 301)
    assert not verify_signature(SECRET, body, stamp, signature, now=sent - 301)
    assert not verify_signature(
        SECRET, body, stamp, signature, now=datetime.fromtimestamp(sent, UTC) + timedelta(hours=1)
    )
    assert not verify_signature(
        SECRET, body, stamp, signature, tolerance=timedelta(seconds=10), now=sent + 11
    )
    assert not verify_signature(SECRET, body, stamp, signature.removeprefix("sha256="))
    assert not verify_signature(SECRET, body, "not-a-number", signature)
    assert not verify_signature(SECRET, body, stamp, "sha256=签名")


def test_compute_signature_matches_the_documented_recipe() -> None:
    import hashlib
    import hmac

    body = b'{"id":"ob-1"}'
    expected = hmac.new(b"k", b"1767603600." + body, hashlib.sha256).hexdigest()
    assert compute_signature("k", body, 1767603600) == "sha256=" + expected
    assert verify_signature("k", body, "1767603600", "sha256=" + expected, now=1767603600)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (401, False), (404, False), (410, False), (422, False),
     (408, True), (429, True), (500, True), (502, True), (503, True)],
)  # fmt: skip
def test_webhook_status_classification(receiver: Receiver, status: int, retryable: bool) -> None:
    receiver.status = status
    receiver.answer = b"nope"
    channel = WebhookChannel(receiver.base_url, secret=SECRET)
    with pytest.raises(DeliveryError) as caught:
        channel.deliver(make_message())
    assert caught.value.retryable is retryable
    assert caught.value.code == status
    assert "nope" in str(caught.value)


def test_webhook_503_with_retry_after(receiver: Receiver) -> None:
    receiver.status = 503
    receiver.reply_headers = {"Retry-After": "120"}
    with pytest.raises(DeliveryError) as caught:
        WebhookChannel(receiver.base_url, secret=SECRET).deliver(make_message())
    assert caught.value.retryable is True
    assert caught.value.retry_after == timedelta(seconds=120)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_webhook_any_2xx_is_delivered(receiver: Receiver, status: int) -> None:
    receiver.status = status
    WebhookChannel(receiver.base_url, secret=SECRET).deliver(make_message())
    assert len(receiver.requests) == 1


def test_webhook_redirect_is_not_followed(receiver: Receiver) -> None:
    receiver.status = 302
    receiver.reply_headers = {"Location": receiver.base_url + "/elsewhere"}
    with pytest.raises(DeliveryError, match="redirects are not followed") as caught:
        WebhookChannel(receiver.base_url + "/hook", secret=SECRET).deliver(make_message())
    assert caught.value.retryable is False
    assert [r.path for r in receiver.requests] == ["/hook"]


def test_webhook_nobody_listening_is_retryable(refusing_port: int) -> None:
    channel = WebhookChannel(f"http://127.0.0.1:{refusing_port}/hook", secret=SECRET)
    with pytest.raises(DeliveryError) as caught:
        channel.deliver(make_message())
    assert caught.value.retryable is True
    assert caught.value.code is None


def test_webhook_silent_server_times_out_retryably(silent_port: int) -> None:
    channel = WebhookChannel(f"http://127.0.0.1:{silent_port}/", secret=SECRET, timeout=0.2)
    with pytest.raises(DeliveryError) as caught:
        channel.deliver(make_message())
    assert caught.value.retryable is True


def test_webhook_recipient_url_overrides_the_channel_url(
    receiver: Receiver, refusing_port: int
) -> None:
    channel = WebhookChannel(f"http://127.0.0.1:{refusing_port}/default", secret=SECRET)
    channel.deliver(make_message(address=receiver.base_url + "/users/u-7"))
    # An address that is not a URL (an e-mail address, say) leaves the channel URL in use.
    channel_default = WebhookChannel(receiver.base_url + "/default", secret=SECRET)
    channel_default.deliver(make_message(address="approver@example.com"))
    assert [r.path for r in receiver.requests] == ["/users/u-7", "/default"]


def test_webhook_never_shows_secret_or_url_token(refusing_port: int) -> None:
    url = f"http://127.0.0.1:{refusing_port}/hooks/T000/B000/tok-SECRETPATH?key=tok-QUERY"
    channel = WebhookChannel(url, secret=SECRET)
    assert SECRET not in repr(channel)
    assert "tok-" not in repr(channel)
    with pytest.raises(DeliveryError) as caught:
        channel.deliver(make_message())
    assert "tok-" not in str(caught.value)


def test_webhook_metadata_that_is_not_json_is_not_retryable(receiver: Receiver) -> None:
    channel = WebhookChannel(receiver.base_url, secret=SECRET)
    with pytest.raises(DeliveryError, match="JSON") as caught:
        channel.deliver(make_message(metadata={"handle": object()}))
    assert caught.value.retryable is False
    with pytest.raises(DeliveryError, match="JSON"):
        channel.deliver(make_message(metadata={"ratio": float("nan")}))
    assert receiver.requests == []


def test_webhook_constructor_validation() -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookChannel("ftp://example.com/", secret=SECRET)
    with pytest.raises(ValueError, match="secret"):
        WebhookChannel("https://example.com/", secret="")
    with pytest.raises(ValueError, match="cannot be replaced"):
        WebhookChannel("https://example.com/", secret=SECRET, headers={"x-crmflow-signature": "x"})
    with pytest.raises(ValueError, match="line breaks"):
        WebhookChannel("https://example.com/", secret=SECRET, headers={"X-A": "1\r\nX-B: 2"})
    with pytest.raises(ValueError, match="tolerance"):
        verify_signature(SECRET, b"", "0", "", tolerance=-1)


# --- log channel ---------------------------------------------------------------------------


def test_log_channel_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    channel = LogChannel()
    with caplog.at_level(logging.INFO, logger="crmflow.notify"):
        channel.deliver(make_message(subject="Approve\nFAKE LINE"))
    (record,) = caplog.records
    assert record.name == "crmflow.notify"
    assert record.levelno == logging.INFO
    text = record.getMessage()
    assert "'u-7'" in text and "'SO-1001'" in text and "transition:approve" in text
    assert "\n" not in text
    assert CHINESE_BODY not in text
    channel.close()


def test_log_channel_never_fails() -> None:
    class Broken(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("broken filter")

    logger = logging.getLogger("crmflow.notify.test-broken")
    broken = Broken()
    logger.addFilter(broken)
    try:
        LogChannel(logger_name=logger.name).deliver(make_message())
    finally:
        logger.removeFilter(broken)


def test_channels_satisfy_the_protocol() -> None:
    channels: list[Channel] = [
        LogChannel(),
        SmtpChannel("mail.example.com", sender="crm@example.com"),
        WebhookChannel("https://example.com/hook", secret=SECRET),
    ]
    for channel in channels:
        assert isinstance(channel, Channel)
    assert [c.name for c in channels] == ["log", "email", "webhook"]


# --- message and error ---------------------------------------------------------------------


def test_outgoing_message_is_frozen_and_copies_metadata() -> None:
    metadata = {"a": 1}
    message = make_message(metadata=metadata)
    metadata["a"] = 2
    assert message.metadata["a"] == 1
    with pytest.raises(TypeError):
        message.metadata["a"] = 3  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.attempt = 2  # type: ignore[misc]
    naive = make_message(created_at=datetime(2026, 1, 5, 9, 0))
    assert naive.created_at == datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="1-based"):
        make_message(attempt=0)


def test_delivery_error_is_a_crmflow_error() -> None:
    error = DeliveryError("boom", channel="email", retryable=False, message_id="ob-1", code=550)
    assert isinstance(error, CrmflowError)
    assert str(error) == "channel 'email': message 'ob-1': boom (not retryable)"
    assert (error.reason, error.channel, error.retryable, error.code) == (
        "boom",
        "email",
        False,
        550,
    )


def test_every_public_name_is_documented() -> None:
    assert notifiers.__doc__
    for name in notifiers.__all__:
        obj = getattr(notifiers, name)
        assert obj.__doc__, name
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and callable(member):
                    assert member.__doc__, f"{name}.{attr}"


# --- retry policy --------------------------------------------------------------------------


def test_delays_grow_and_are_capped_without_jitter() -> None:
    policy = RetryPolicy(jitter=False)
    rng = random.Random(0)
    delays = [policy.delay(n, rng).total_seconds() for n in range(1, 11)]
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert policy.delay(100_000, rng) == timedelta(hours=1)
    assert RetryPolicy(factor=3, jitter=False).delay(10**12, rng) == timedelta(hours=1)
    constant = RetryPolicy(factor=1, base=timedelta(minutes=5), jitter=False)
    assert {constant.delay(n, rng) for n in range(1, 20)} == {timedelta(minutes=5)}


def test_jittered_delays_stay_in_the_upper_half_and_grow() -> None:
    policy = RetryPolicy()
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(timedelta(hours=1), timedelta(seconds=30) * 2 ** (attempt - 1))
        for _ in range(50):
            delay = policy.delay(attempt, rng)
            assert ceiling / 2 <= delay <= ceiling
    # The earliest possible retry moves later with every attempt until the cap.
    low = [min(policy.delay(n, rng) for _ in range(50)) for n in range(1, 8)]
    assert low == sorted(low)


def test_delays_are_deterministic_for_a_seeded_rng() -> None:
    policy = RetryPolicy()
    first = [policy.delay(n, random.Random(1234)) for n in range(1, 9)]
    second = [policy.delay(n, random.Random(1234)) for n in range(1, 9)]
    assert first == second
    rng_a, rng_b = random.Random(99), random.Random(99)
    now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert [policy.next_attempt_at(now, n, rng_a) for n in range(1, 10)] == [
        policy.next_attempt_at(now, n, rng_b) for n in range(1, 10)
    ]


def test_next_attempt_at_gives_up_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, jitter=False)
    now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    rng = random.Random(0)
    assert policy.next_attempt_at(now, 1, rng) == now + timedelta(seconds=30)
    assert policy.next_attempt_at(now, 2, rng) == now + timedelta(seconds=60)
    assert policy.next_attempt_at(now, 3, rng) is None
    assert policy.next_attempt_at(now, 4, rng) is None
    assert RetryPolicy(max_attempts=1).next_attempt_at(now, 1, rng) is None
    with pytest.raises(ValueError, match="1-based"):
        policy.next_attempt_at(now, 0, rng)
    with pytest.raises(ValueError, match="1-based"):
        policy.delay(0, rng)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"max_attempts": 2.5}, "max_attempts must be a whole number"),
        ({"factor": 0.5}, "factor must be"),
        ({"factor": float("inf")}, "factor must be"),
        ({"base": timedelta(0)}, "base must be a duration greater than zero"),
        ({"base": timedelta(seconds=-1)}, "base must be"),
        ({"cap": timedelta(seconds=10)}, "cap must be"),
        ({"jitter": "yes"}, "jitter must be"),
    ],
)
def test_retry_policy_validation(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RetryPolicy(**kwargs)


def test_retry_policy_from_mapping() -> None:
    policy = RetryPolicy.from_mapping({"max_attempts": 5, "base": "30s", "cap": "1h"})
    assert policy == RetryPolicy(max_attempts=5, base=timedelta(seconds=30), cap=timedelta(hours=1))
    assert RetryPolicy.from_mapping({}) == RetryPolicy()
    assert RetryPolicy.from_mapping({"base": "1m", "factor": 3, "jitter": False}) == RetryPolicy(
        base=timedelta(minutes=1), factor=3, jitter=False
    )
    assert RetryPolicy.from_mapping({"cap": "1d 12h"}).cap == timedelta(hours=36)
    with pytest.raises(ValueError, match="did you mean 'max_attempts'"):
        RetryPolicy.from_mapping({"max_attempt": 5})
    with pytest.raises(ValueError, match="base must be a duration such as '30s'"):
        RetryPolicy.from_mapping({"base": 30})
    with pytest.raises(ValueError, match="retry policy cap: bad duration"):
        RetryPolicy.from_mapping({"cap": "1 hour"})
    with pytest.raises(ValueError, match="cap must be"):
        RetryPolicy.from_mapping({"base": "2h", "cap": "1h"})


policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 50),
    base=st.timedeltas(timedelta(microseconds=1), timedelta(hours=2)),
    factor=st.floats(1, 100, allow_nan=False, allow_infinity=False),
    cap=st.timedeltas(timedelta(hours=2), timedelta(days=30)),
    jitter=st.booleans(),
)


@given(policy=policies, attempt=st.integers(1, 100_000), seed=st.integers(0, 2**32))
def test_delay_is_never_negative_nor_above_cap(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    delay = policy.delay(attempt, random.Random(seed))
    assert timedelta(0) <= delay <= policy.cap
    assert delay == policy.delay(attempt, random.Random(seed))
    now = datetime(2026, 1, 5, tzinfo=UTC)
    at = policy.next_attempt_at(now, attempt, random.Random(seed))
    if attempt >= policy.max_attempts:
        assert at is None
    else:
        assert at == now + delay


@pytest.mark.parametrize("smtputf8", [False, True])
def test_smtp_international_address_needs_smtputf8(start_smtp: StartSmtp, smtputf8: bool) -> None:
    server = start_smtp(enable_SMTPUTF8=smtputf8)
    channel = SmtpChannel(server.host, server.port, sender="crm@example.com")
    message = make_message(address="用户@例子.中国")
    if smtputf8:
        channel.deliver(message)
        assert server.handler.received[0].rcpt_tos == ["用户@例子.中国"]
    else:
        # The server lacks a feature this message needs; retrying would not change that.
        with pytest.raises(DeliveryError, match="SMTPUTF8") as caught:
            channel.deliver(message)
        assert caught.value.retryable is False
    channel.close()


@pytest.mark.parametrize("bad_id", ["ob-1\r\nX-Evil: 1", "订单-1", ""])
def test_webhook_refuses_ids_that_cannot_be_a_header(receiver: Receiver, bad_id: str) -> None:
    channel = WebhookChannel(receiver.base_url, secret=SECRET)
    with pytest.raises(DeliveryError, match="X-Crmflow-Delivery") as caught:
        channel.deliver(make_message(id=bad_id))
    assert caught.value.retryable is False
    assert receiver.requests == []


def test_messages_and_errors_survive_pickling() -> None:
    import pickle

    message = make_message()
    copy = pickle.loads(pickle.dumps(message))
    assert copy == message
    assert isinstance(copy.metadata, type(message.metadata))
    error = DeliveryError(
        "busy", channel="webhook", retryable=True, message_id="ob-1", code=503,
        retry_after=timedelta(seconds=5),
    )  # fmt: skip
    restored = pickle.loads(pickle.dumps(error))
    assert (restored.reason, restored.channel, restored.retryable, restored.code) == (
        "busy",
        "webhook",
        True,
        503,
    )
    assert restored.retry_after == timedelta(seconds=5)
    assert str(restored) == str(error)
