"""The engine's clock-driven side: ``tick``, personal reminders, subscriptions, the outbox.

:class:`TimerOperations` is a base class of :class:`~crmflow.engine._runtime.Engine`.

``tick()`` does two things at the clock's now:

1. **Due timers.** It claims due timers in batches (a lease per worker, so several workers on
   one PostgreSQL share the work and a crashed worker's timers are claimed again when the
   lease runs out) and runs each one. A workflow timer fires its trigger through the same path
   as a host call (rules, history, effects), without the role check, as the actor
   ``timer:<name>``; its notification is queued in the same transaction; and the timer is
   marked fired in that transaction too, so a timer fires once even if two workers race.
   Personal reminders and subscriptions queue their notification and move to their next
   occurrence.
2. **The outbox.** It claims notifications whose next attempt is due and hands each to its
   channel. A failure is retried with exponential back-off and jitter
   (:class:`~crmflow.plugins.notifiers.RetryPolicy`) up to the maximum number of attempts,
   then the row is ``dead``; a permanent failure (an address the server refuses) is ``dead``
   at once. One channel raising never stops the others.

**Missed occurrences.** After downtime a recurring reminder or subscription fires once, for the
most recent occurrence it missed, then continues from the next one; it never replays every
missed slot. A reminder repeating "every 30 minutes until acknowledged" keeps its grid
(10:00, 10:30, 11:00 ...) and skips the repeats that fell into the downtime.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from crmflow._clock import parse_duration
from crmflow._errors import (
    ConcurrencyConflict,
    CrmflowError,
    InvalidData,
    MissingFact,
    PluginError,
    UnknownTrigger,
)
from crmflow._types import Actor, FireResult
from crmflow.engine._automations import render
from crmflow.engine._calendar import ALWAYS, zone_info
from crmflow.engine._cron import (
    missed_occurrence,
    next_occurrence,
    next_repeat,
    validate_cron,
)
from crmflow.engine._effects import rule_facts
from crmflow.engine._model import TimerDef
from crmflow.engine._notify import CompiledNotify, new_id
from crmflow.plugins._storage_api import OutboxRecord, StorageTx, TimerRecord
from crmflow.plugins.notifiers import DeliveryError, OutgoingMessage
from crmflow.rules import RuleEvaluationError

if TYPE_CHECKING:
    import pluggy

    from crmflow._clock import Clock
    from crmflow.engine._calendar import BusinessCalendar
    from crmflow.engine._compile import CompiledWorkflow
    from crmflow.engine._notify import NotificationFactory
    from crmflow.plugins._storage_api import InstanceRecord, Storage
    from crmflow.plugins.notifiers import Channel, RetryPolicy
    from crmflow.plugins.org_directory import OrgDirectory

__all__ = ["TickReport", "TimerOperations"]

log = logging.getLogger("crmflow")

#: How long a worker owns what it claimed before another may take it over.
DEFAULT_LEASE = timedelta(minutes=5)
#: A longer lease would leave a dead worker's timers waiting for more than a day.
MAX_LEASE = timedelta(days=1)
#: Timers or notifications claimed per round trip.
DEFAULT_BATCH = 200


@dataclass(frozen=True)
class TickReport:
    """What one :meth:`TimerOperations.tick` did.

    ``fired`` counts timers that ran (their trigger fired or their notification went out),
    ``refused`` timers whose trigger a rule refused (recorded in the history), ``skipped``
    timers with nothing left to do (their instance is gone or the trigger no longer applies),
    ``lost`` timers or notifications another worker finished first, ``failed`` timers that
    raised (they are tried again once their lease runs out). ``delivered``, ``retrying`` and
    ``dead`` count outbox deliveries.
    """

    fired: int = 0
    refused: int = 0
    skipped: int = 0
    lost: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0
    failed: int = 0

    def __add__(self, other: TickReport) -> TickReport:
        """Field-wise sum (a worker adds up its ticks)."""
        return TickReport(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[int, ...]:
        """The counts in field order."""
        return (
            self.fired,
            self.refused,
            self.skipped,
            self.lost,
            self.delivered,
            self.retrying,
            self.dead,
            self.failed,
        )

    @property
    def idle(self) -> bool:
        """Whether the tick found nothing to do."""
        return not any(self.as_tuple())


class _TimerLost(Exception):
    """Internal: another worker finished (or someone cancelled) the timer first: roll back."""


def default_worker() -> str:
    """A claimant name unique to this process: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class TimerOperations:
    """Timers, reminders, subscriptions and notification delivery (mixed into ``Engine``)."""

    if TYPE_CHECKING:
        store: Storage
        clock: Clock
        calendar: BusinessCalendar | None
        org: OrgDirectory | None
        channels: dict[str, Channel]
        retry: RetryPolicy
        plugins: pluggy.PluginManager
        _notifications: NotificationFactory

        def _compiled_for(self, record: InstanceRecord) -> CompiledWorkflow: ...
        def _fire(
            self,
            key: str,
            trigger: str,
            *,
            actor: Actor,
            data: Mapping[str, Any] | None = None,
            facts: Mapping[str, Any] | None = None,
            override: str | None = None,
            idempotency_key: str | None = None,
            expected_version: int | None = None,
            system: bool = False,
            in_tx: Callable[[StorageTx], None] | None = None,
            extra_outbox: Sequence[OutboxRecord] = (),
            event: str | None = None,
        ) -> FireResult: ...
        def _record_refusal(
            self,
            record: InstanceRecord,
            actor: Actor,
            trigger: str,
            kind: str,
            reason: str,
            details: Mapping[str, Any],
            *,
            in_tx: Callable[[StorageTx], None] | None = None,
            outbox: Sequence[OutboxRecord] = (),
        ) -> None: ...
        def _write_change(
            self,
            record: InstanceRecord,
            actor: Actor,
            *,
            kind: str,
            trigger: str,
            reason: str,
            details: Mapping[str, Any],
            event: str | None = None,
            outbox: Sequence[OutboxRecord] = (),
            in_tx: Callable[[StorageTx], None] | None = None,
        ) -> tuple[int, dict[str, Any]]: ...

    #: This engine's name as a claimant of timers and notifications; each ``tick`` claims as
    #: ``<worker_id>/<n>`` unless given a ``worker``.
    worker_id: str
    #: How long a tick's claim lasts (see ``Engine(lease=...)``).
    lease: timedelta
    #: Jitter for retry delays (per engine: no shared random state).
    _rng: random.Random

    def _init_timers(self, lease: timedelta | str = DEFAULT_LEASE) -> None:
        try:
            self.lease = parse_duration(lease)
        except ValueError as exc:
            raise CrmflowError(f"lease: {exc}") from None
        if not timedelta(0) < self.lease <= MAX_LEASE:
            raise CrmflowError(f"lease must be longer than zero and at most a day, got {lease!r}")
        self.worker_id = default_worker()
        self._rng = random.Random()
        self._calls = itertools.count(1)

    def _worker(self, worker: str | None) -> str:
        if worker is not None:
            return worker
        # One claimant per call: two threads ticking one engine must not be able to finish
        # each other's claims (a claim whose lease ran out is someone else's to finish).
        return f"{self.worker_id}/{next(self._calls)}"

    # -- tick -----------------------------------------------------------------------------

    def tick(
        self, *, worker: str | None = None, limit: int | None = None, deliver: bool = True
    ) -> TickReport:
        """Fire every due timer and deliver the due outbox, at the clock's now.

        ``limit`` caps how many timers (and notifications) this call handles, so a worker can
        interleave other work; ``worker`` names the claimant (default: host, pid and a random
        part). See the module documentation for the exact rules.
        """
        who = self._worker(worker)
        report = TickReport()
        handled = 0
        while limit is None or handled < limit:
            size = DEFAULT_BATCH if limit is None else min(DEFAULT_BATCH, limit - handled)
            # Each batch's lease starts when it is claimed, not when the tick began.
            now = self.clock.now()
            batch = self.store.claim_due_timers(now, who, lease=self.lease, limit=size)
            if not batch:
                break
            for index, timer in enumerate(batch):
                if index and self._running_late(now):
                    # Hand the rest back while the claims are still ours: claimed again at
                    # once (by this loop or another worker), never run on an expired lease.
                    for rest in batch[index:]:
                        self.store.release_timer(rest.id, who)
                    break
                report = report + self._run_timer(timer, who, now)
            handled += len(batch)
        if deliver:
            report = report + self.deliver_outbox(worker=who, limit=limit)
        return report

    def _run_timer(self, timer: TimerRecord, worker: str, now: datetime) -> TickReport:
        try:
            if timer.kind in ("reminder", "subscription"):
                return self._run_personal(timer, worker, now)
            return self._run_instance_timer(timer, worker, now)
        except _TimerLost:
            return TickReport(lost=1)
        except ConcurrencyConflict:
            # A host changed the instance meanwhile: try again at the next tick.
            self.store.release_timer(timer.id, worker)
            return TickReport()
        except Exception:
            # One broken timer must not stop the others or the outbox. It keeps its claim:
            # handed back at once, the same tick would claim it again and spin on it for ever;
            # when the lease runs out, the next tick (of any worker) tries it again.
            log.exception(
                "timer %s (%s) failed; it will be tried again when its lease runs out (%s)",
                timer.id,
                timer.name,
                self.lease,
            )
            return TickReport(failed=1)

    def _finisher(
        self,
        timer: TimerRecord,
        worker: str,
        now: datetime,
        *,
        next_due: datetime | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> Callable[[StorageTx], None]:
        def finish(tx: StorageTx) -> None:
            if not tx.finish_timer(timer.id, worker, at=now, next_due=next_due, payload=payload):
                raise _TimerLost()

        return finish

    def _finish_alone(self, timer: TimerRecord, worker: str, now: datetime) -> None:
        try:
            with self.store.transaction() as tx:
                self._finisher(timer, worker, now)(tx)
        except _TimerLost:
            pass

    # -- workflow timers ------------------------------------------------------------------

    def _timer_def(
        self, compiled: CompiledWorkflow, timer: TimerRecord
    ) -> tuple[TimerDef, CompiledNotify | None] | None:
        if timer.kind == "automation":
            try:
                auto = compiled.automations[int(timer.payload["automation"])]
                number = int(timer.payload["action"])
                action = auto.defn.actions[number]
            except (KeyError, IndexError, ValueError):
                return None
            if action.timer is None:
                return None
            return action.timer, auto.notifies.get(number)
        for tdef in compiled.defn.timers:
            if tdef.name == timer.name:
                return tdef, compiled.timer_notifies.get(tdef.name)
        return None

    def _run_instance_timer(self, timer: TimerRecord, worker: str, now: datetime) -> TickReport:
        key = timer.instance_key or ""
        record = self.store.get_instance(key)
        found = None
        if record is not None:
            compiled = self._compiled_for(record)
            found = self._timer_def(compiled, timer)
        if record is None or found is None:
            log.warning("timer %s (%s) has nothing to act on any more", timer.id, timer.name)
            self._finish_alone(timer, worker, now)
            return TickReport(skipped=1)
        tdef, notify = found
        name = tdef.name
        actor = Actor(f"timer:{name}")
        outbox: list[OutboxRecord] = []
        if notify is not None:
            facts = rule_facts(
                record.data,
                key=record.key,
                state=record.state,
                workflow=record.workflow,
                owner=record.owner,
                actor=actor,
                now=now,
                fields=compiled.defn.fields,
            )
            calendar = compiled.defn.calendar or self.calendar
            rendered = render(notify, facts, calendar.zone if calendar else None)
            if rendered is not None:
                outbox = self._notifications.build(
                    to=notify.defn.to,
                    subject=rendered[0],
                    body=rendered[1],
                    channels=notify.defn.channels,
                    owner=record.owner,
                    instance_key=record.key,
                    event=f"timer:{name}",
                    at=now,
                    timer_id=timer.id,
                )
        finish = self._finisher(timer, worker, now)
        if tdef.fire is not None:
            try:
                result = self._fire(
                    key,
                    tdef.fire,
                    actor=actor,
                    system=True,
                    in_tx=finish,
                    extra_outbox=outbox,
                    event="timer",
                )
            except UnknownTrigger:
                log.warning("timer %s: %s cannot fire from %s", name, tdef.fire, record.state)
                self._finish_alone(timer, worker, now)
                return TickReport(skipped=1)
            except (MissingFact, InvalidData, PluginError, RuleEvaluationError) as exc:
                # Nobody can supply what the rules need at this hour: record it as a refusal
                # (with the notification, which still goes out) instead of retrying forever.
                self._record_refusal(
                    record,
                    actor,
                    tdef.fire,
                    "refused",
                    f"timer {name} could not fire {tdef.fire}: {exc}",
                    {"timer": name},
                    in_tx=finish,
                    outbox=outbox,
                )
                return TickReport(refused=1)
            return TickReport(fired=1) if result.ok else TickReport(refused=1)
        self._write_change(
            record,
            actor,
            kind="timer",
            trigger=f"timer:{name}",
            reason=f"timer {name} fell due at {timer.due_at.isoformat()}",
            details={"timer": name, "due_at": timer.due_at.isoformat()},
            event="timer",
            outbox=outbox,
            in_tx=finish,
        )
        return TickReport(fired=1)

    # -- personal reminders and subscriptions ---------------------------------------------

    def add_reminder(
        self,
        user: str,
        *,
        message: str,
        cron: str | None = None,
        at: datetime | None = None,
        repeat_every: str | timedelta | None = None,
        timezone: str | None = None,
        working_time: bool = False,
        channels: Sequence[str] = (),
        name: str | None = None,
    ) -> TimerRecord:
        """Remind ``user`` of ``message``: once ``at`` a moment, or on a ``cron`` schedule.

        ``cron`` is a five-field expression read in ``timezone`` (``0 10 * * 1``: Mondays at
        10:00 local time); the default is the user's time zone in the org directory, else
        the business calendar's, else UTC. ``repeat_every`` (``"30m"``) repeats each
        occurrence until the user acknowledges it (:meth:`acknowledge`). With
        ``working_time`` a reminder due outside the business calendar's hours is deferred to
        the next working moment, never skipped.
        Returns the stored timer; its ``id`` cancels it (:meth:`cancel_timer`).
        """
        if (cron is None) == (at is None):
            raise InvalidData("cron", "give either cron= or at=")
        if not message.strip():
            raise InvalidData("message", "a reminder needs a message")
        if cron is not None:
            try:
                validate_cron(cron)
            except ValueError as exc:
                raise InvalidData("cron", str(exc)) from None
        try:
            every = parse_duration(repeat_every) if repeat_every is not None else None
        except ValueError as exc:
            raise InvalidData("repeat_every", str(exc)) from None
        timezone = self._zone(timezone or self._user_zone(user))
        now = self.clock.now()
        if cron is not None:
            first = next_occurrence(cron, now - timedelta(microseconds=1), timezone)
        else:
            assert at is not None
            if at.tzinfo is None:
                raise InvalidData("at", "give a time-zone-aware datetime")
            first = at
        payload: dict[str, Any] = {
            "message": message,
            "cron": cron,
            "timezone": timezone,
            "repeat_seconds": every.total_seconds() if every else None,
            "working_time": working_time,
            "channels": list(channels),
            "occurrence": first.isoformat(),
        }
        return self._insert_personal(
            "reminder", name or f"reminder-{uuid.uuid4().hex[:8]}", user, first, payload
        )

    @staticmethod
    def _zone(name: str) -> str:
        try:
            zone_info(name)
        except ValueError as exc:
            raise InvalidData("timezone", str(exc)) from None
        return name

    def _user_zone(self, user: str) -> str:
        org = self.org
        if org is not None:
            try:
                zone = org.user(user).timezone
            except CrmflowError:
                zone = None
            if zone:
                return str(zone)
        return self.calendar.timezone if self.calendar is not None else "UTC"

    def subscribe(
        self,
        user: str,
        report: str,
        *,
        cron: str,
        params: Mapping[str, Any] | None = None,
        timezone: str | None = None,
        channels: Sequence[str] = (),
        name: str | None = None,
    ) -> TimerRecord:
        """Send ``user`` the report ``report`` on a ``cron`` schedule (``0 17 * * *``).

        The report is rendered by the ``crmflow_render_report`` hook (built in:
        ``instances_by_state`` with ``params={"workflow": ...}``). Cancel with
        :meth:`cancel_timer`.
        """
        try:
            validate_cron(cron)
        except ValueError as exc:
            raise InvalidData("cron", str(exc)) from None
        timezone = self._zone(timezone or self._user_zone(user))
        if self.render_report(report, params or {}, user=user) is None:
            raise InvalidData("report", f"no plugin renders the report {report!r}")
        first = next_occurrence(cron, self.clock.now(), timezone)
        payload = {
            "report": report,
            "params": dict(params or {}),
            "cron": cron,
            "timezone": timezone,
            "channels": list(channels),
        }
        return self._insert_personal(
            "subscription", name or f"{report}-{uuid.uuid4().hex[:8]}", user, first, payload
        )

    def _insert_personal(
        self, kind: str, name: str, user: str, due: datetime, payload: Mapping[str, Any]
    ) -> TimerRecord:
        if payload.get("working_time"):
            due = (self.calendar or ALWAYS).next_working_moment(due)
        record = TimerRecord(
            id=new_id(),
            kind=kind,
            name=name,
            due_at=due,
            created_at=self.clock.now(),
            owner=user,
            payload=dict(payload),
        )
        with self.store.transaction() as tx:
            tx.insert_timers([record])
        return record

    def cancel_timer(self, timer_id: str) -> bool:
        """Cancel a pending reminder, subscription or timer; ``False`` when none was pending."""
        with self.store.transaction() as tx:
            return tx.cancel_timer(timer_id, at=self.clock.now())

    def timers(
        self, *, key: str | None = None, owner: str | None = None, pending: bool = True
    ) -> list[TimerRecord]:
        """Timers of an instance or a user (pending ones unless ``pending=False``)."""
        return self.store.timers(
            instance_key=key, owner=owner, statuses={"pending"} if pending else None
        )

    def _run_personal(self, timer: TimerRecord, worker: str, now: datetime) -> TickReport:
        payload = dict(timer.payload)
        user = timer.owner or ""
        cron = payload.get("cron")
        zone = str(payload.get("timezone") or "UTC")
        every_s = payload.get("repeat_seconds")
        every = timedelta(seconds=float(every_s)) if every_s else None
        occurrence = datetime.fromisoformat(str(payload.get("occurrence") or timer.due_at))
        if cron:
            # After downtime only the latest missed occurrence is reminded of.
            latest = missed_occurrence(cron, occurrence, now, zone)
            if latest is not None:
                occurrence = latest
        stamp = occurrence.isoformat()
        # Only a repeating reminder can have been acknowledged in a way that matters here.
        acknowledged = (
            timer.kind == "reminder"
            and every is not None
            and any(
                row.acknowledged_at is not None
                for row in self.store.outbox(timer_id=timer.id)
                if row.metadata.get("occurrence") == stamp
            )
        )
        outbox: list[OutboxRecord] = []
        if not acknowledged:
            if timer.kind == "subscription":
                subject, body = self._render_report(timer, user, now)
                event = f"report:{payload['report']}"
            else:
                subject, body, event = str(payload["message"]), "", "reminder"
            outbox = [
                replace(row, metadata={**row.metadata, "occurrence": stamp})
                for row in self._notifications.build(
                    to=[f"user:{user}"],
                    subject=subject,
                    body=body,
                    channels=list(payload.get("channels") or ()),
                    owner=user,
                    instance_key=None,
                    event=event,
                    at=now,
                    timer_id=timer.id,
                )
            ]
        following = next_occurrence(cron, now, zone) if cron else None
        next_due = following
        if every is not None and not acknowledged and timer.kind == "reminder":
            repeat = next_repeat(occurrence, every, now)
            # Repeats stop where the next occurrence begins.
            if following is None or repeat < following:
                next_due = repeat
        if next_due is not None and next_due == following:
            occurrence = following
        if next_due is not None and payload.get("working_time"):
            next_due = (self.calendar or ALWAYS).next_working_moment(next_due)
        payload["occurrence"] = occurrence.isoformat()
        with self.store.transaction() as tx:
            self._finisher(timer, worker, now, next_due=next_due, payload=payload)(tx)
            if outbox:
                tx.insert_outbox(outbox)
        return TickReport(fired=1) if outbox else TickReport(skipped=1)

    def _render_report(self, timer: TimerRecord, user: str, now: datetime) -> tuple[str, str]:
        payload = timer.payload
        rendered = self.render_report(
            str(payload["report"]), payload.get("params") or {}, user=user, at=now
        )
        if rendered is None:
            return (
                f"Report {payload['report']!r} is not available",
                "No plugin renders this report; check the subscription.",
            )
        return rendered

    def render_report(
        self, report: str, params: Mapping[str, Any], *, user: str, at: datetime | None = None
    ) -> tuple[str, str] | None:
        """Render ``report`` as (subject, body) through the ``crmflow_render_report`` hook."""
        at = at or self.clock.now()
        result = self.plugins.hook.crmflow_render_report(
            report=report, params=dict(params), engine=self, user=user, at=at
        )
        return None if result is None else (str(result[0]), str(result[1]))

    # -- notifications --------------------------------------------------------------------

    def deliver_outbox(self, *, worker: str | None = None, limit: int | None = None) -> TickReport:
        """Deliver every notification whose next attempt is due (part of :meth:`tick`)."""
        who = self._worker(worker)
        delivered = retrying = dead = lost = handled = 0
        while limit is None or handled < limit:
            size = DEFAULT_BATCH if limit is None else min(DEFAULT_BATCH, limit - handled)
            now = self.clock.now()
            batch = self.store.claim_due_outbox(now, who, lease=self.lease, limit=size)
            if not batch:
                break
            for index, row in enumerate(batch):
                if index and self._running_late(now):
                    # As for timers: what is left goes back before the lease runs out, so no
                    # other worker can take a row over while this one still delivers it.
                    for rest in batch[index:]:
                        self._hand_back(rest, who)
                    break
                status = self._deliver_one(row, who, now)
                delivered += status == "delivered"
                retrying += status == "pending"
                dead += status == "dead"
                lost += status == "lost"
            handled += len(batch)
        return TickReport(delivered=delivered, retrying=retrying, dead=dead, lost=lost)

    def _running_late(self, claimed_at: datetime) -> bool:
        """Whether half of a batch's lease has gone: the rest is handed back, not risked."""
        return self.clock.now() - claimed_at >= self.lease / 2

    def _hand_back(self, row: OutboxRecord, worker: str) -> None:
        """Release a claimed notification unchanged (due again at once)."""
        self.store.finish_delivery(
            row.id,
            worker,
            status="pending",
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            last_error=row.last_error,
            delivered_at=None,
        )

    def _deliver_one(self, row: OutboxRecord, worker: str, now: datetime) -> str:
        attempt = row.attempts + 1
        error = ""
        retryable = True
        retry_after: timedelta | None = None
        if row.channel == "inbox":
            status = "delivered"  # stored is delivered: the inbox is this very table
        else:
            channel = self.channels.get(row.channel)
            if channel is None:
                status, error, retryable = "failed", f"no channel named {row.channel!r}", False
            else:
                try:
                    channel.deliver(
                        OutgoingMessage(
                            id=row.id,
                            channel=row.channel,
                            recipient=row.recipient,
                            address=row.address,
                            subject=row.subject,
                            body=row.body,
                            instance_key=row.instance_key or "",
                            event=row.event,
                            attempt=attempt,
                            created_at=row.created_at,
                            metadata=dict(row.metadata),
                        )
                    )
                    status = "delivered"
                except DeliveryError as exc:
                    status, error, retryable = "failed", str(exc), exc.retryable
                    retry_after = exc.retry_after
                except Exception as exc:
                    # A channel bug must not lose the message: treat it as worth retrying.
                    log.exception("channel %s raised while delivering %s", row.channel, row.id)
                    status, error = "failed", f"{type(exc).__name__}: {exc}"
        next_at: datetime | None = None
        if status == "failed":
            next_at = self.retry.next_attempt_at(now, attempt, self._rng) if retryable else None
            if next_at is not None and retry_after is not None:
                next_at = max(next_at, now + retry_after)
            status = "pending" if next_at is not None else "dead"
        recorded = self.store.finish_delivery(
            row.id,
            worker,
            status=status,
            attempts=attempt,
            next_attempt_at=next_at,
            last_error=error,
            delivered_at=now if status == "delivered" else None,
        )
        # The claim was no longer ours (its lease ran out and another worker took the row):
        # what that worker records stands.
        return status if recorded else "lost"

    def notifications(
        self,
        *,
        key: str | None = None,
        recipient: str | None = None,
        channel: str | None = None,
        status: str | None = None,
    ) -> list[OutboxRecord]:
        """Queued and sent notifications with their delivery status, attempts and last error."""
        return self.store.outbox(
            instance_key=key,
            recipient=recipient,
            channel=channel,
            statuses={status} if status else None,
        )

    def inbox(self, user: str, *, unread: bool = False) -> list[OutboxRecord]:
        """``user``'s in-app messages, oldest first (only unread ones with ``unread``)."""
        rows = self.store.outbox(recipient=user, channel="inbox")
        return [r for r in rows if not unread or r.read_at is None]

    def _own(self, notification_id: str, user: str) -> OutboxRecord:
        row = self.store.get_outbox(notification_id)
        if row is None:
            raise CrmflowError(f"no notification with id {notification_id!r}")
        if user not in (row.recipient, row.intended):
            raise CrmflowError(f"notification {notification_id!r} is not addressed to {user!r}")
        return row

    def mark_read(self, notification_id: str, *, user: str) -> OutboxRecord:
        """Mark a notification read by ``user`` (its recipient, or whom it was meant for)."""
        self._own(notification_id, user)
        row = self.store.mark_outbox(notification_id, read_at=self.clock.now())
        assert row is not None
        return row

    def acknowledge(self, notification_id: str, *, user: str) -> OutboxRecord:
        """Acknowledge a reminder: it stops repeating until its next occurrence."""
        self._own(notification_id, user)
        now = self.clock.now()
        row = self.store.mark_outbox(notification_id, read_at=now, acknowledged_at=now)
        assert row is not None
        return row

    def requeue_notification(self, notification_id: str) -> OutboxRecord:
        """Send a ``dead`` notification again, once its cause is fixed (an address, a server).

        It becomes ``pending``, due now, with a fresh set of attempts under the retry policy;
        its last error stays until the next attempt. Raises :class:`CrmflowError` when there is
        no such notification, when it is not dead, or when its recipient could not be resolved
        when it was queued (sending it again would reach nobody).
        """
        row = self.store.get_outbox(notification_id)
        if row is None:
            raise CrmflowError(f"no notification with id {notification_id!r}")
        if row.status != "dead":
            raise CrmflowError(
                f"notification {notification_id!r} is {row.status}, not dead: only dead "
                "notifications are sent again"
            )
        if _unresolved(row):
            raise CrmflowError(
                f"notification {notification_id!r} has no recipient: {row.last_error}; fix the "
                "org directory, then the next notification of this kind will reach someone"
            )
        requeued = self.store.requeue_outbox(notification_id, self.clock.now())
        if requeued is None:
            raise CrmflowError(
                f"notification {notification_id!r} is no longer dead: another process sent it "
                "again first"
            )
        return requeued

    def requeue_dead(
        self,
        *,
        key: str | None = None,
        channel: str | None = None,
        recipient: str | None = None,
    ) -> list[OutboxRecord]:
        """Send every dead notification the filters select again (see ``notifications``).

        Notifications whose recipient could not be resolved are left as they are (see
        :meth:`requeue_notification`). Returns the rows made pending.
        """
        done: list[OutboxRecord] = []
        rows = self.notifications(key=key, channel=channel, recipient=recipient, status="dead")
        for row in rows:
            if _unresolved(row):
                continue
            requeued = self.store.requeue_outbox(row.id, self.clock.now())
            if requeued is not None:
                done.append(requeued)
        return done


def _unresolved(row: OutboxRecord) -> bool:
    """Whether a notification was queued for a recipient spec nobody could be found for."""
    # Rows queued before the flag existed: an unresolved row keeps the spec as its recipient
    # (a resolved one names a user, never a spec such as ``role:sales_manager``).
    return bool(row.metadata.get("unresolved")) or row.recipient == row.metadata.get("spec")
