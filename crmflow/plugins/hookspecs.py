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
    from crmflow._types import FireResult, TransitionContext
    from crmflow.plugins._storage_api import Storage, StorageTx
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


__all__ = [
    "PROJECT_NAME",
    "crmflow_after_fire",
    "crmflow_before_commit",
    "crmflow_known_actions",
    "crmflow_open_storage",
    "crmflow_provide_facts",
    "crmflow_rule_functions",
    "crmflow_run_action",
    "hookimpl",
    "hookspec",
]
