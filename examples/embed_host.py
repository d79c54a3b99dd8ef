"""A host application embedding crmflow: an ERP's order screen, in a few functions.

The ERP owns customers and their balances; crmflow owns the order's process. The ERP supplies
customer facts through a plugin (asked only when a rule needs them), mirrors committed
transitions into its own event log, and shows users what they can do next and why not.

Run: python examples/embed_host.py [--db FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from crmflow import Actor, Engine, FireResult, TransitionContext, hookimpl

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"


class Erp:
    """The host's own data and event log."""

    def __init__(self) -> None:
        self.customers: dict[str, dict[str, Any]] = {
            "C-100": {
                "name": "Northwind",
                "credit_limit": Decimal("50000"),
                "open_balance": Decimal("12000"),
                "payment_terms": "net30",
            },
            "C-200": {
                "name": "Contoso",
                "credit_limit": Decimal("5000"),
                "open_balance": Decimal("4500"),
                "payment_terms": "prepaid",
            },
        }
        self.events: list[str] = []

    @hookimpl
    def crmflow_provide_facts(
        self, namespace: str, data: Mapping[str, Any], needed: Sequence[str]
    ) -> Mapping[str, Any] | None:
        """Answer the customer namespace from the ERP's customer table."""
        if namespace != "customer":
            return None
        return self.customers[str(data["customer_id"])]

    @hookimpl
    def crmflow_after_fire(self, context: TransitionContext, result: FireResult) -> None:
        """Mirror every committed transition into the ERP's event log."""
        self.events.append(
            f"{context.key}: {context.from_state} -> {context.to_state} by {context.actor.id}"
        )


def order_screen(engine: Engine, key: str, user: Actor) -> str:
    """What the ERP shows on an order: its state and the buttons, greyed out with a reason."""
    order = engine.get(key)
    lines = [f"{key} [{order.state}] amount {order.data['amount']}"]
    for option in engine.available(key, actor=user):
        if option.allowed:
            lines.append(f"  [{option.trigger}]")
        else:
            why = "; ".join(r.message for r in option.reasons)
            lines.append(f"  ({option.trigger}: {why})")
    return "\n".join(lines)


def main(db: Path) -> list[str]:
    """Run the host's morning and return the ERP's event log."""
    erp = Erp()
    rep = Actor("li", roles={"sales_rep"})
    manager = Actor("zhao", roles={"sales_manager"})
    warehouse = Actor("wu", roles={"warehouse"})
    with Engine.from_path(WORKFLOWS, store=f"sqlite:///{db}", plugins=[erp]) as engine:
        engine.start(
            "sales_order", "SO-1", actor=rep, data={"customer_id": "C-100", "amount": 9000}
        )
        engine.start("sales_order", "SO-2", actor=rep, data={"customer_id": "C-200", "amount": 800})
        print(engine.fire("SO-1", "approve", actor=rep).explain())
        print(engine.fire("SO-2", "approve", actor=rep).explain())
        print(
            engine.fire(
                "SO-2", "approve", actor=manager, override="long-standing customer"
            ).explain()
        )
        print(order_screen(engine, "SO-2", warehouse))
        print(engine.fire("SO-1", "ship", actor=warehouse).explain())
    print("ERP event log:", *erp.events, sep="\n  ")
    return erp.events


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    if args.db is None:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "erp.db")
    else:
        main(args.db)
