"""A storage plugin: one SQLite file per client tenant, opened from a ``tenant://`` URL.

A host that serves several client companies from one installation can keep each client's
workflow instances, history, timers and outbox in a file of its own, so one client's data can
be backed up, moved or deleted without touching the others'. ``TenantStorage`` implements the
``crmflow_open_storage`` hook for URLs like

    tenant://acme                       <root>/acme.db under the plugin's default root
    tenant://acme?root=/var/lib/crm     /var/lib/crm/acme.db
    tenant://acme?synchronous=normal    faster commits (see docs/storage.md)

and answers with the built-in SQL storage (``crmflow.plugins.sql_storage``) opened on
``sqlite:///<root>/<tenant>.db``, so every guarantee of the SQLite back end holds. The root
directory is created when it does not exist. URLs of other schemes are left to the other
storage plugins.

A tenant name is 1 to 63 letters, digits, ``-`` or ``_``, starting with a letter or digit;
case does not matter (``tenant://ACME`` is ``acme.db``, on every file system).
Anything else (an empty name, ``..``, a slash, a port, percent escapes, a user part) is refused
with ``PluginError`` before any file is touched, so a tenant name taken from a request can
never reach a file outside the root. Unknown options are refused too.

``main()`` gives two tenants an engine each; both start an order with the same key, and each
sees only its own.

Run: python examples/tenant_storage.py [--root DIR]
"""

from __future__ import annotations

import argparse
import re
import tempfile
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from crmflow import Actor, Engine, PluginError, UnknownInstance, hookimpl
from crmflow.plugins import Storage, sql_storage

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"

SCHEME = "tenant"
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_OPTIONS = ("root", "synchronous")


def tenant_file(url: str, default_root: Path | None = None) -> tuple[Path, str]:
    """The SQLite file a ``tenant://`` URL names, and the ``synchronous`` option.

    :raises PluginError: the tenant name is empty or not allowed, the URL has a path, a port
        or an option other than ``root`` and ``synchronous``, or names no root directory.
    """
    parts = urlsplit(url)
    tenant = parts.netloc
    if not tenant:
        raise PluginError(f"store URL {url!r} names no tenant: write tenant://NAME")
    if not TENANT_NAME.fullmatch(tenant) or parts.path or parts.fragment:
        raise PluginError(
            f"store URL {url!r}: {tenant + parts.path!r} is not a tenant name "
            "(1 to 63 letters, digits, '-' or '_', starting with a letter or digit)"
        )
    try:
        options = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise PluginError(f"store URL {url!r}: malformed options: {exc}") from exc
    for name, values in options.items():
        if name not in _OPTIONS:
            raise PluginError(
                f"store URL {url!r}: unknown option {name!r} (known: {', '.join(_OPTIONS)})"
            )
        if len(values) != 1 or not values[0]:
            raise PluginError(f"store URL {url!r}: give {name}= once, with a value")
    root_option = options.get("root", [""])[0]
    root = Path(root_option) if root_option else default_root
    if root is None:
        raise PluginError(f"store URL {url!r} names no root directory: add ?root=DIR")
    root = root.expanduser().resolve()
    path = root / f"{tenant.lower()}.db"
    if path.parent != root:  # cannot happen with the name check above; kept as a last guard
        raise PluginError(f"store URL {url!r} leads outside {root}")
    return path, options.get("synchronous", ["full"])[0]


class TenantStorage:
    """The ``tenant://`` storage plugin: ``Engine(..., plugins=[TenantStorage(root)])``.

    Args:
        root: where tenants' files live unless the URL says ``?root=``; ``None`` makes the
            option required.

    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else None

    @hookimpl
    def crmflow_open_storage(self, url: str) -> Storage | None:
        """Open ``tenant://NAME`` URLs; ``None`` for every other scheme."""
        if urlsplit(url).scheme.lower() != SCHEME:
            return None
        path, synchronous = tenant_file(url, self.root)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Percent-encode the path: the SQLite URL is parsed again, and a '?' or '%' in a
        # directory name would otherwise be read as an option or an escape.
        sqlite_url = f"sqlite:///{quote(str(path), safe='/')}?synchronous={synchronous}"
        return sql_storage.crmflow_open_storage(sqlite_url)


def order_book(engine: Engine) -> list[str]:
    """One line per sales order the engine's tenant has."""
    return [
        f"{order.key} {order.data['customer_id']} {order.data['amount']} [{order.state}]"
        for order in engine.instances("sales_order")
    ]


def main(root: Path) -> dict[str, list[str]]:
    """Give two tenants an engine each under ``root``; return each tenant's order book."""
    plugin = TenantStorage(root)
    rep = Actor("li", roles={"sales_rep"})
    books: dict[str, list[str]] = {}
    orders = {
        "acme": [("SO-1", "C-ACME-7", Decimal("8000")), ("SO-2", "C-ACME-9", Decimal("120"))],
        "globex": [("SO-1", "C-GX-1", Decimal("45000"))],
    }
    for tenant, tenant_orders in orders.items():
        with Engine.from_path(WORKFLOWS, store=f"tenant://{tenant}", plugins=[plugin]) as engine:
            for key, customer, amount in tenant_orders:
                engine.start(
                    "sales_order",
                    key,
                    actor=rep,
                    data={"customer_id": customer, "amount": amount},
                )
    for tenant in orders:
        with Engine.from_path(WORKFLOWS, store=f"tenant://{tenant}", plugins=[plugin]) as engine:
            books[tenant] = order_book(engine)
            try:
                engine.get("SO-2")
                has_so2 = "has SO-2"
            except UnknownInstance:
                has_so2 = "has no SO-2"
            print(f"tenant {tenant} ({root / f'{tenant}.db'}), {has_so2}:")
            print(*(f"  {line}" for line in books[tenant]), sep="\n")
    try:
        Engine.from_path(WORKFLOWS, store="tenant://../acme", plugins=[plugin])
    except PluginError as exc:
        print(f"refused: {exc}")
    return books


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=None)
    args = parser.parse_args()
    if args.root is None:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
    else:
        main(args.root)
