"""A team-chat group robot as a notification channel, written as a plugin.

Chat services such as WeCom and DingTalk let a group add a "robot": a webhook URL (with a token
in its query string) that accepts a JSON POST such as

    {"msgtype": "text", "text": {"content": "Order SO-1 has shipped"}}

and shows the text in the group. ``ChatRobotChannel`` delivers crmflow notifications that way,
and ``ChatRobotPlugin`` hands it to the engine through the ``crmflow_notification_channels``
hook, so a YAML ``channels: [chat]`` or ``Engine(default_channels=[..., "chat"])`` reaches the
group. Failures are reported the way the outbox expects:

- HTTP 5xx, 408 and 429 answers, time-outs and refused or dropped connections raise a
  retryable ``DeliveryError`` (the row stays ``pending`` and is tried again with back-off,
  never sooner than a ``Retry-After`` the service sent);
- any other 4xx answer and 3xx (redirects are not followed) raise a non-retryable one (the row
  is ``dead`` at once);
- a 2xx answer whose JSON says ``"errcode"`` other than 0 is a refusal too: retryable for the
  services' rate-limit codes, not retryable for the others (a bad token, a malformed message).

Each outbox row is one POST: a notification addressed to three people goes to the group three
times, so address chat notifications to one recipient spec (the ``owner``, say). The robot URL
carries a token, so only its scheme, host and port appear in error messages. Robots do not drop
duplicates; delivery is at least once, like every crmflow channel. Only the standard library is
used, so the ``https_proxy``/``no_proxy`` environment variables apply (keep ``127.0.0.1`` in
``no_proxy`` for the demo below if you set a proxy).

``main()`` runs the whole thing on one machine: a loopback HTTP server stands in for the chat
service, a sales order is approved and shipped (the workflow notifies the order's owner on
``ship``), ``engine.tick()`` delivers the outbox, and the script prints what the chat service
received and what the outbox recorded.

Run: python examples/chat_channel.py [--db FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import Message
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from crmflow import Actor, Engine, FireResult, VirtualClock, hookimpl
from crmflow.plugins.notifiers import Channel, DeliveryError, OutgoingMessage, RetryPolicy

HERE = Path(__file__).resolve().parent
WORKFLOWS = HERE.parent / "workflows"
ORG = HERE / "org.yaml"
SHANGHAI = ZoneInfo("Asia/Shanghai")

#: ``errcode`` values that mean "too many messages, slow down": WeCom's 45009 and DingTalk's
#: 130101. Any other non-zero ``errcode`` is taken as a refusal of the message for good.
RATE_LIMIT_CODES = frozenset({45009, 130101})
#: The longest text a group robot accepts, in UTF-8 bytes (WeCom's limit for text messages).
MAX_CONTENT_BYTES = 2048
_ANSWER_LIMIT = 64 * 1024


def _origin(url: str) -> str:
    """``scheme://host:port`` of ``url``: the part that may be shown (the rest holds a token)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _retry_after(headers: Message | None) -> timedelta | None:
    """The wait a ``Retry-After`` header asks for (seconds or an HTTP date), if any."""
    value = (headers.get("Retry-After") or "").strip() if headers is not None else ""
    if value.isdigit():
        return timedelta(seconds=int(value))
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(timedelta(0), when - datetime.now(UTC))


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary, marked with …."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - len("…".encode())].decode("utf-8", "ignore") + "…"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Report a redirect as an answer instead of re-posting the message somewhere else."""

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


class ChatRobotChannel:
    """Post each message as a text message to a group robot's webhook URL.

    Args:
        url: the robot's webhook URL, token included
            (``https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...`` for WeCom,
            ``https://oapi.dingtalk.com/robot/send?access_token=...`` for DingTalk).
        name: the channel name notifications refer to.
        timeout: seconds to wait for the connection and for the answer.
        mentions: crmflow user id to chat user id; a message to a user listed here
            @-mentions them in the group (``"mentioned_list"``).
        retryable_codes: ``errcode`` values worth another attempt (rate limits).

    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "chat",
        timeout: float = 5.0,
        mentions: Mapping[str, str] | None = None,
        retryable_codes: Collection[int] = RATE_LIMIT_CODES,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a chat robot URL must be an absolute http:// or https:// URL")
        if not timeout > 0:
            raise ValueError(f"timeout must be more than zero seconds, got {timeout!r}")
        self.name = name
        self._url = url
        self._where = _origin(url)
        self._timeout = float(timeout)
        self._mentions = dict(mentions or {})
        self._retryable_codes = frozenset(retryable_codes)
        self._opener = urllib.request.build_opener(_NoRedirect())

    def __repr__(self) -> str:
        return f"ChatRobotChannel({self._where + '/...'!r}, name={self.name!r})"

    def payload(self, message: OutgoingMessage) -> dict[str, Any]:
        """The JSON document posted for ``message``."""
        content = message.subject if not message.body else f"{message.subject}\n{message.body}"
        text: dict[str, Any] = {"content": _shorten(content, MAX_CONTENT_BYTES)}
        if message.recipient in self._mentions:
            text["mentioned_list"] = [self._mentions[message.recipient]]
        return {"msgtype": "text", "text": text}

    def deliver(self, message: OutgoingMessage) -> None:
        """POST one message; raise :class:`DeliveryError` unless the robot accepted it."""
        body = json.dumps(self.payload(message), ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(
            self._url,
            data=body,
            headers={"Content-Type": "application/json; charset=utf-8"},
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                answer = response.read(_ANSWER_LIMIT)
        except urllib.error.HTTPError as exc:
            with exc:
                self._http_error(message, exc)
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                self._fail(message, f"no answer within {self._timeout:g} s", cause=exc)
            self._fail(message, f"cannot connect: {exc.reason}", cause=exc)
        except TimeoutError as exc:
            self._fail(message, f"no answer within {self._timeout:g} s", cause=exc)
        except (http.client.HTTPException, OSError) as exc:
            self._fail(message, f"connection failed: {exc or type(exc).__name__}", cause=exc)
        self._check_answer(message, answer)

    def close(self) -> None:
        """Nothing to release: every message uses its own connection."""

    def _check_answer(self, message: OutgoingMessage, answer: bytes) -> None:
        # Chat services answer 200 to a refused message too; the JSON says why.
        try:
            document = json.loads(answer or b"{}")
        except ValueError:
            return  # a 2xx answer without JSON: taken as accepted
        code = document.get("errcode", 0) if isinstance(document, dict) else 0
        if code in (0, None):
            return
        errmsg = document.get("errmsg")
        detail = f"errcode {code}" + (f": {errmsg}" if errmsg else "")
        self._fail(message, detail, retryable=code in self._retryable_codes)

    def _http_error(self, message: OutgoingMessage, exc: urllib.error.HTTPError) -> NoReturn:
        status = exc.code
        try:
            text = " ".join(exc.read(200).decode("utf-8", "replace").split())
        except (OSError, http.client.HTTPException):
            text = ""
        retryable = status in (408, 429) or status >= 500
        raise DeliveryError(
            f"{self._where} answered {status} {exc.reason}" + (f": {text}" if text else ""),
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
        retryable: bool = True,
        cause: BaseException | None = None,
    ) -> NoReturn:
        raise DeliveryError(
            f"{self._where}: {reason}",
            channel=self.name,
            retryable=retryable,
            message_id=message.id,
        ) from cause


class ChatRobotPlugin:
    """Gives an engine the chat channel: ``Engine(plugins=[ChatRobotPlugin(url)])``."""

    def __init__(
        self,
        url: str,
        *,
        name: str = "chat",
        timeout: float = 5.0,
        mentions: Mapping[str, str] | None = None,
    ) -> None:
        self.channel = ChatRobotChannel(url, name=name, timeout=timeout, mentions=mentions)

    @hookimpl
    def crmflow_notification_channels(self) -> list[Channel]:
        """The chat channel, collected once when the engine starts."""
        return [self.channel]


# ---------------------------------------------------------------------------------------------
# A loopback stand-in for the chat service
# ---------------------------------------------------------------------------------------------


class _RobotServer(ThreadingHTTPServer):
    daemon_threads = True
    service: ChatService


class _RobotHandler(BaseHTTPRequestHandler):
    server: _RobotServer

    def do_POST(self) -> None:
        service = self.server.service
        length = int(self.headers.get("Content-Length") or 0)
        document = json.loads(self.rfile.read(length).decode("utf-8"))
        with service.lock:
            service.received.append(document)
            service.paths.append(self.path)
            status, answer, delay = service.status, service.answer, service.delay
            if answer is None:
                ok = 200 <= status < 300
                answer = {"errcode": 0 if ok else -1, "errmsg": "ok" if ok else "system busy"}
            headers = dict(service.headers)
        if delay:
            time.sleep(delay)
        body = json.dumps(answer).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a time-out test)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the demo's output to what the chat service received."""


class ChatService:
    """A group robot endpoint on 127.0.0.1 that records every message posted to it.

    ``status`` is the HTTP status it answers with; ``answer`` the JSON body (by default the
    ``{"errcode": 0, "errmsg": "ok"}`` of an accepted message, or an error for a status other
    than 2xx); ``headers`` extra answer headers (a ``Retry-After``, say); ``delay`` how long it
    waits before answering. Each may be changed while it runs. ``received`` holds the JSON
    documents posted to it and ``paths`` the request paths, token included.
    """

    def __init__(
        self,
        *,
        status: int = 200,
        answer: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.status = status
        self.headers: Mapping[str, str] = dict(headers or {})
        self.answer = answer
        self.delay = delay
        self.received: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        self._server = _RobotServer(("127.0.0.1", 0), _RobotHandler)
        self._server.service = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """The robot's webhook URL, with a token in it like the real ones."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/cgi-bin/webhook/send?key=demo-robot-key"

    def __enter__(self) -> ChatService:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


# ---------------------------------------------------------------------------------------------
# The host
# ---------------------------------------------------------------------------------------------


def build_engine(
    db: Path,
    robot_url: str,
    clock: VirtualClock,
    *,
    timeout: float = 5.0,
    retry: RetryPolicy | None = None,
) -> Engine:
    """An engine that tells people in their in-app inbox and in the team's chat group."""
    return Engine.from_path(
        WORKFLOWS,
        store=f"sqlite:///{db}",
        clock=clock,
        org=ORG,
        plugins=[ChatRobotPlugin(robot_url, timeout=timeout, mentions={"alice": "AliceChen"})],
        default_channels=["inbox", "chat"],
        retry=retry,
    )


def ship_order(engine: Engine, key: str) -> FireResult:
    """Alice's order is approved and shipped; the workflow then notifies her (the owner)."""
    alice = Actor("alice", roles={"sales_rep"})
    wang = Actor("wang", roles={"warehouse"})
    customer = {
        "name": "Ningbo Paper",
        "credit_limit": Decimal("50000"),
        "open_balance": Decimal("12000"),
        "payment_terms": "net30",
    }
    engine.start(
        "sales_order", key, actor=alice, data={"customer_id": "C-NP", "amount": Decimal("8000")}
    )
    for trigger, actor in (("approve", alice), ("ship", wang)):
        result = engine.fire(key, trigger, actor=actor, facts={"customer": customer})
        if not result.ok:
            raise RuntimeError(result.explain())
    return result


def main(db: Path) -> list[dict[str, Any]]:
    """Ship an order, deliver the outbox, and return what the chat service received."""
    clock = VirtualClock(datetime(2026, 1, 12, 9, 0, tzinfo=SHANGHAI))
    with ChatService() as chat, build_engine(db, chat.url, clock) as engine:
        shipped = ship_order(engine, "SO-1")
        for queued in shipped.effects["notifications"]:
            print(f"queued: {queued['channel']} to {queued['to']}: {queued['subject']}")
        report = engine.tick()
        print(f"tick: {report.delivered} delivered, {report.retrying} to retry, {report.dead} dead")
        for document in chat.received:
            print("chat service received:", json.dumps(document, ensure_ascii=False))
        for row in engine.notifications(key="SO-1"):
            print(
                f"outbox: {row.channel} to {row.recipient}: {row.status}, attempts={row.attempts}"
            )
        return list(chat.received)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    if args.db is None:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "chat.db")
    else:
        main(args.db)
