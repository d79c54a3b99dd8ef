"""Plugin hooks, the per-engine plugin manager, and the built-in plugins.

Write a plugin by implementing hooks from :mod:`crmflow.plugins.hookspecs`, marked with
:data:`hookimpl`, and pass it to ``Engine(plugins=[...])`` or publish it under the ``crmflow``
entry-point group.
"""

from crmflow.plugins._storage_api import (
    HistoryDraft,
    HistoryRecord,
    InstanceRecord,
    Storage,
    StorageTx,
)
from crmflow.plugins.hookspecs import hookimpl

__all__ = [
    "HistoryDraft",
    "HistoryRecord",
    "InstanceRecord",
    "Storage",
    "StorageTx",
    "hookimpl",
]
