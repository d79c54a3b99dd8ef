"""One pluggy plugin manager per engine.

Built-in features (SQL and in-memory storage) are registered exactly as a third-party plugin
would be; installed packages join through the ``crmflow`` entry-point group, and the host's
own plugins through ``Engine(plugins=[...])``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

from crmflow._errors import PluginError
from crmflow.plugins import directory, hookspecs, memory_storage, sql_storage

__all__ = ["BUILTIN_PLUGINS", "make_plugin_manager"]

#: Built-in plugins, under the names their entry points use.
BUILTIN_PLUGINS: dict[str, object] = {
    "sql_storage": sql_storage,
    "memory_storage": memory_storage,
    "reports": directory,
}


def make_plugin_manager(
    plugins: Sequence[object] = (), *, load_entry_points: bool = True
) -> pluggy.PluginManager:
    """Build a plugin manager with the built-ins, installed plugins and ``plugins``.

    Raises :class:`PluginError` when a plugin implements a hook that does not exist (a typo
    would otherwise be ignored silently) or with arguments the hook does not offer.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    for name, plugin in BUILTIN_PLUGINS.items():
        manager.register(plugin, name=name)
    if load_entry_points:
        # Entry points named like a built-in are skipped: the built-in is already registered.
        manager.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
    for plugin in plugins:
        try:
            manager.register(plugin)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"cannot register plugin {plugin!r}: {exc}") from exc
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"{exc} (hook implementations must be named after a hook in crmflow.plugins.hookspecs)"
        ) from exc
    return manager
