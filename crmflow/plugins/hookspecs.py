"""Every hook a crmflow plugin can implement.

A plugin is any object or module with functions named after these specs and marked with
:data:`hookimpl`. Register it with ``Engine(plugins=[...])`` or through the ``crmflow``
entry-point group. Each engine has its own plugin manager; a misspelled hook name is an error
when the engine starts (``check_pending``).

Hooks marked *first result wins* stop at the first implementation that returns something other
than ``None``; the others collect every non-``None`` result in a list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from datetime import datetime

    from crmflow._types import FireResult, TransitionContext
    from crmflow.plugins._storage_api import Storage, StorageTx
    from crmflow.plugins.notifiers import Channel
    from crmflow.plugins.org_directory import Recipient
    from crmflow.rules import FunctionSpec

PROJECT_NAME = "crmflow"

#: Marker for hook specifications (used by crmflow itself).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marker for hook implementations (used by plugins).
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def crmflow_open_storage(url: str) -> Storage | None:
    """Open the storage back end for ``url``; *first result wins*.

    :param url: the engine's store URL, e.g. ``sqlite:///crm.db``, ``postgresql://...`` or
        ``memory://``.
    :return: a :class:`~crmflow.plugins.Storage`, or ``None`` when this plugin does not handle
        the URL's scheme.
    """


# ---------------------------------------------------------------------------------------------
# Facts
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def crmflow_provide_facts(
    namespace: str, instance_key: str, workflow: str, data: Mapping[str, Any], needed: Sequence[str]
) -> Mapping[str, Any] | None:
    """Supply a fact namespace the host owns (a customer's open balance in the ERP).

    Called only when a rule about to be evaluated reads ``namespace`` and the caller did not
    pass it in ``facts=``; *first result wins*.

    :param namespace: the fact namespace, e.g. ``customer``.
    :param instance_key: the instance being evaluated.
    :param workflow: the workflow's name.
    :param data: the instance's data (read-only), e.g. to find ``customer_id``.
    :param needed: the attributes the rules read from the namespace.
    :return: a mapping of attribute to value, or ``None`` to let another provider answer.
    """


# ---------------------------------------------------------------------------------------------
# Rule functions
# ---------------------------------------------------------------------------------------------


@hookspec
def crmflow_rule_functions() -> Sequence[FunctionSpec] | None:
    """Register functions rule expressions may call.

    Called once when the engine starts; all results are collected.

    :return: a sequence of :class:`~crmflow.rules.FunctionSpec` (name, parameter and return
        types, implementation). Names must not clash with built-ins or each other.
    """


# ---------------------------------------------------------------------------------------------
# Transition observers
# ---------------------------------------------------------------------------------------------


@hookspec
def crmflow_before_commit(context: TransitionContext, tx: StorageTx) -> None:
    """Observe a state change inside its storage transaction, just before commit.

    Raising here aborts the whole command: nothing it would have written is stored.
    Plugins may write their own rows through ``tx``.

    :param context: what is changing (instance, trigger, states, actor, data changes).
    :param tx: the open storage transaction.
    """


@hookspec
def crmflow_after_fire(context: TransitionContext, result: FireResult) -> None:
    """Observe a committed state change (after commit).

    Exceptions are logged and do not undo the change, which is already durable.

    :param context: what changed.
    :param result: the result returned to the caller.
    """


# ---------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def crmflow_run_action(
    name: str, params: Mapping[str, Any], context: TransitionContext, tx: StorageTx
) -> Mapping[str, Any] | None:
    """Run a named custom action declared in YAML, inside the fire's transaction.

    *First result wins*.

    :param name: the action's name.
    :param params: the parameters written in YAML.
    :param context: the transition being applied.
    :param tx: the open storage transaction.
    :return: a JSON-compatible mapping describing the action's effect (listed in the fire's
        result), or ``None`` when this plugin does not know the action.
    """


@hookspec
def crmflow_known_actions() -> Sequence[str] | None:
    """Names of the custom actions this plugin implements, so that lint can check references.

    :return: action names.
    """


# ---------------------------------------------------------------------------------------------
# Notifications
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def crmflow_resolve_recipients(
    spec: str, owner: str | None, at: datetime, instance_key: str | None
) -> Sequence[Recipient] | None:
    """Say who receives a notification addressed to ``spec``; *first result wins*.

    The built-in implementation is the YAML org directory (``Engine(org=...)``); a host with
    its own user directory implements this hook instead.

    :param spec: ``owner``, ``manager``, ``role:NAME``, ``user:ID`` or ``unit:PATH``.
    :param owner: the owner of the instance the notification is about (``None`` for a
        personal reminder).
    :param at: the engine clock's now, for delegations in effect at that moment.
    :param instance_key: the instance, or ``None``.
    :return: :class:`~crmflow.plugins.org_directory.Recipient` items (an empty sequence when
        nobody holds the spec), or ``None`` to let another plugin answer.
    """


@hookspec
def crmflow_notification_channels() -> Sequence[Channel] | None:
    """Channels this plugin delivers notifications on (e-mail, webhook, SMS ...).

    Called once when the engine starts; all results are collected. A channel has a ``name``
    (what YAML's ``channels:`` refers to), ``deliver(message)`` raising
    :class:`~crmflow.plugins.notifiers.DeliveryError` on failure, and ``close()``.
    """


@hookspec(firstresult=True)
def crmflow_render_report(
    report: str, params: Mapping[str, Any], engine: Any, user: str, at: datetime
) -> tuple[str, str] | None:
    """Render a subscribed report as ``(subject, body)``; *first result wins*.

    The built-in ``instances_by_state`` report lists the instances of ``params["workflow"]``
    by state.

    :param report: the report's name, as given to ``Engine.subscribe``.
    :param params: the subscription's parameters.
    :param engine: the engine (read what the report needs through its public API).
    :param user: the subscriber.
    :param at: the engine clock's now.
    :return: the subject and body, or ``None`` when this plugin does not know the report.
    """


__all__ = [
    "PROJECT_NAME",
    "crmflow_after_fire",
    "crmflow_before_commit",
    "crmflow_known_actions",
    "crmflow_notification_channels",
    "crmflow_open_storage",
    "crmflow_provide_facts",
    "crmflow_render_report",
    "crmflow_resolve_recipients",
    "crmflow_rule_functions",
    "crmflow_run_action",
    "hookimpl",
    "hookspec",
]
