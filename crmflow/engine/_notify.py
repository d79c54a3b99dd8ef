"""Turn a notification definition into outbox rows: render, resolve recipients, pick channels.

Subjects and bodies are rule-language templates, compiled once per workflow version against the
instance's fields (plus ``key``, ``state``, ``workflow``, ``owner``, ``actor`` and ``now``); an
automation's ``if:`` condition is compiled the same way. Rendering uses the pure-Python
evaluator: a template never needs durable_rules.

Recipients are resolved when the notification is created, inside the transaction of the change
that causes it, so a delegation in effect at that moment decides who receives it and the
history of the change can say so. A spec nobody can resolve still yields an outbox row, marked
``dead`` with the reason, so that nothing addressed is silently dropped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pluggy

from crmflow._errors import CrmflowError, DefinitionError, ExpressionError
from crmflow.engine._model import NotifyDef, SourcePos, WorkflowDef
from crmflow.plugins._storage_api import OutboxRecord
from crmflow.plugins.org_directory import Recipient
from crmflow.rules import CompiledRule, Schema, compile_rule
from crmflow.rules._rule import decide

__all__ = [
    "CompiledNotify",
    "NotificationFactory",
    "compile_condition",
    "compile_notify",
    "notification_schema",
]


@dataclass(frozen=True)
class CompiledNotify:
    """A notification with its templates (and optional condition) compiled as one rule.

    The rule's ``when`` is the condition (``True`` when there is none), its message the
    subject and its hint the body, so one evaluation decides and renders.
    """

    defn: NotifyDef
    rule: CompiledRule


def notification_schema(schema: Schema) -> Schema:
    """The names templates and conditions may read: fields, built-ins, ``actor``, ``now``.

    Host-owned fact namespaces are left out: a timer firing at night has no host call to
    supply them.
    """
    namespaces = {"actor": dict(schema.namespaces.get("actor", {}))}
    return Schema(
        fields=dict(schema.fields), namespaces=namespaces, functions=dict(schema.functions)
    )


def _definition_error(
    exc: ExpressionError, defn: WorkflowDef, pos: SourcePos, text: str, path: str
) -> DefinitionError:
    line, column = pos.locate(text, exc.line, exc.column)
    return DefinitionError(
        exc.reason,
        source=pos.source or defn.source,
        line=line,
        column=column,
        path=pos.path or path,
        suggestions=exc.suggestions,
        hint=exc.hint
        or "templates and conditions can read the instance's fields, key, state, owner, "
        "actor and now",
    )


def compile_notify(
    notify: NotifyDef,
    defn: WorkflowDef,
    schema: Schema,
    *,
    name: str,
    path: str,
) -> CompiledNotify:
    """Compile ``notify``'s templates or raise :class:`DefinitionError`."""
    try:
        rule = compile_rule(
            name,
            when="True",
            effect="warn",
            message=notify.subject,
            hint=notify.body,
            override_roles=(),
            schema=notification_schema(schema),
        )
    except ExpressionError as exc:
        if getattr(exc, "part", "") == "message":
            text = notify.subject
            pos = notify.positions.get("subject", notify.pos)
            where = f"{path}.subject"
        else:
            text = notify.body
            pos = notify.positions.get("body", notify.pos)
            where = f"{path}.body"
        raise _definition_error(exc, defn, pos, text, where) from exc
    return CompiledNotify(defn=notify, rule=rule)


def compile_condition(
    condition: str, defn: WorkflowDef, schema: Schema, *, name: str, pos: SourcePos, path: str
) -> CompiledRule:
    """Compile an automation's ``if:`` expression as a rule (fired means the condition holds)."""
    try:
        return compile_rule(
            name,
            when=condition,
            effect="warn",
            message=name,
            hint="",
            override_roles=(),
            schema=notification_schema(schema),
        )
    except ExpressionError as exc:
        raise _definition_error(exc, defn, pos, condition, path) from exc


def condition_holds(rule: CompiledRule, facts: Mapping[str, Any]) -> bool:
    """Evaluate a compiled condition over ``facts``."""
    return decide(rule, facts).fired


class NotificationFactory:
    """Builds outbox rows for one engine: resolution through the plugin hook, channel choice."""

    def __init__(
        self,
        plugins: pluggy.PluginManager,
        *,
        default_channels: Sequence[str],
        channels: Sequence[str],
    ) -> None:
        self._plugins = plugins
        self.default_channels = tuple(default_channels)
        self.channels = frozenset(channels)

    def resolve(
        self, spec: str, *, owner: str | None, at: datetime, instance_key: str | None
    ) -> list[Recipient] | str:
        """The recipients of ``spec``, or why they cannot be determined."""
        try:
            found = self._plugins.hook.crmflow_resolve_recipients(
                spec=spec, owner=owner, at=at, instance_key=instance_key
            )
        except CrmflowError as exc:
            return str(exc)
        if found is not None:
            return list(found)
        # Without a directory only the specs that name a user outright can be answered.
        user = owner if spec == "owner" else spec[5:] if spec.startswith("user:") else None
        if spec == "owner" and owner is None:
            return "the instance has no owner"
        if user:
            return [
                Recipient(
                    user=user,
                    intended=user,
                    delegated=False,
                    reason="",
                    email=None,
                    timezone=None,
                    spec=spec,
                    chain=(user,),
                )
            ]
        return (
            f"cannot resolve {spec!r} without an org directory: pass Engine(org=...) or "
            "register a plugin implementing crmflow_resolve_recipients"
        )

    def build(
        self,
        *,
        to: Sequence[str],
        subject: str,
        body: str,
        channels: Sequence[str],
        owner: str | None,
        instance_key: str | None,
        event: str,
        at: datetime,
        timer_id: str | None = None,
        skip: str | None = None,
    ) -> list[OutboxRecord]:
        """One outbox row per recipient and channel (de-duplicated); see the module docs.

        ``skip`` is the user who caused the change: nobody is told of their own action.
        """
        chosen = tuple(channels) or self.default_channels
        rows: list[OutboxRecord] = []
        seen: set[tuple[str, str]] = set()
        for spec in to:
            resolved = self.resolve(spec, owner=owner, at=at, instance_key=instance_key)
            if not resolved:
                resolved = (
                    f"nobody receives {spec!r}"
                    + (f" for {owner}" if owner else "")
                    + " (no active user holds it)"
                )
            if isinstance(resolved, str):
                rows.append(
                    self._row(
                        channel=chosen[0] if chosen else "log",
                        recipient=spec,
                        intended=spec,
                        address="",
                        subject=subject,
                        body=body,
                        instance_key=instance_key,
                        event=event,
                        at=at,
                        timer_id=timer_id,
                        status="dead",
                        last_error=resolved,
                        # Sending it again would reach nobody: see requeue_notification.
                        metadata={"spec": spec, "unresolved": True},
                    )
                )
                continue
            for recipient in resolved:
                if skip is not None and recipient.user == skip:
                    continue
                for channel in chosen:
                    if (recipient.user, channel) in seen:
                        continue
                    seen.add((recipient.user, channel))
                    metadata: dict[str, Any] = {"spec": spec}
                    if recipient.delegated:
                        metadata["delegation"] = recipient.reason
                    unknown = channel not in self.channels
                    rows.append(
                        self._row(
                            channel=channel,
                            recipient=recipient.user,
                            intended=recipient.intended,
                            # Channels pick what they need: an e-mail channel the address,
                            # a webhook ignores anything that is not a URL.
                            address=recipient.email or "",
                            subject=subject,
                            body=body,
                            instance_key=instance_key,
                            event=event,
                            at=at,
                            timer_id=timer_id,
                            status="dead" if unknown else "pending",
                            last_error=f"no channel named {channel!r} is configured"
                            if unknown
                            else "",
                            metadata=metadata,
                        )
                    )
        return rows

    @staticmethod
    def _row(
        *,
        channel: str,
        recipient: str,
        intended: str,
        address: str,
        subject: str,
        body: str,
        instance_key: str | None,
        event: str,
        at: datetime,
        timer_id: str | None,
        status: str,
        last_error: str,
        metadata: Mapping[str, Any],
    ) -> OutboxRecord:
        return OutboxRecord(
            id=new_id(),
            channel=channel,
            recipient=recipient,
            intended=intended,
            address=address,
            subject=subject,
            body=body,
            created_at=at,
            instance_key=instance_key,
            event=event,
            status=status,
            last_error=last_error,
            timer_id=timer_id,
            metadata=dict(metadata),
        )


def new_id() -> str:
    """A unique id that sorts in creation order (wall-clock nanoseconds, then randomness).

    The outbox lists rows by creation time, then id; rows created at the same (virtual) moment
    keep the order they were made in.
    """
    return f"{time.time_ns():020d}{uuid.uuid4().hex[:12]}"


def summarize(rows: Sequence[OutboxRecord]) -> list[dict[str, Any]]:
    """The fire result's view of queued notifications: channel, recipient, subject."""
    summary = []
    for row in rows:
        item: dict[str, Any] = {
            "channel": row.channel,
            "to": row.recipient,
            "subject": row.subject,
            "status": row.status,
        }
        if row.recipient != row.intended:
            item["intended"] = row.intended
            item["delegation"] = row.metadata.get("delegation", "")
        if row.last_error:
            item["error"] = row.last_error
        summary.append(item)
    return summary
