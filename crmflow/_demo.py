"""``crmflow demo``: the sales order story explained, then every shipped scenario.

First a sales order is driven through its guards and explained for a sales manager; then every
shipped scenario of every shipped workflow runs on the same SQLite file, printed as timelines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from crmflow._clock import VirtualClock
from crmflow._types import Actor, FireResult
from crmflow.engine._runtime import Engine
from crmflow.plugins.hookspecs import hookimpl

__all__ = ["run_demo"]

#: The explained story's order (the shipped scenarios use SO-1001 and up).
STORY = "SO-0001"

ALICE = Actor("alice", roles={"sales_rep"}, org="east/team-1")
BOB = Actor("bob", roles={"sales_manager"}, org="east")
WANG = Actor("wang", roles={"warehouse"}, org="logistics")
FIONA = Actor("fiona", roles={"finance"}, org="finance")
NAMES = {
    "alice": "Alice (sales rep)",
    "bob": "Bob (sales manager)",
    "wang": "Wang (warehouse)",
    "fiona": "Fiona (finance)",
}


class ErpCustomers:
    """Stands in for the host's ERP: customer facts, fetched only when a rule needs them."""

    def __init__(self, customers: Mapping[str, Mapping[str, Any]]) -> None:
        self.customers = customers
        self.lookups = 0

    @hookimpl
    def crmflow_provide_facts(
        self,
        namespace: str,
        instance_key: str,
        workflow: str,
        data: Mapping[str, Any],
        needed: Sequence[str],
    ) -> Mapping[str, Any] | None:
        """Look the order's customer up in the ERP."""
        if namespace != "customer":
            return None
        self.lookups += 1
        return self.customers.get(str(data.get("customer_id")))


def _say(clock: VirtualClock, text: str) -> None:
    print(f"{clock.now():%a %d %b %H:%M}  {text}")


def _explain(result: FireResult) -> None:
    if result.ok:
        print(f"                  done: {result.previous_state} -> {result.state}")
        for o in result.overrides:
            print(f"                  override of '{o.rule}' recorded: {o.reason}")
    else:
        print(f"                  REFUSED, the order stays {result.state}")
        for r in result.refusals:
            print(f"                  - rule '{r.rule}' ({r.effect}): {r.message}")
            if r.hint:
                print(f"                    what would make it pass: {r.hint}")
            if r.effect == "confirm" and r.override_roles:
                print(f"                    who may approve anyway: {', '.join(r.override_roles)}")
    for w in result.warnings:
        print(f"                  note ({w.rule}): {w.message}")
    for notice in result.effects.get("notifications", ()):
        via = f" (for {notice['intended']})" if notice.get("intended") else ""
        print(f"                  tells {notice['to']}{via}: {notice['subject']}")


def run_demo(db: Path, workflows: Path) -> int:
    """Run the story on a fresh SQLite file at ``db``; returns the exit code."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    clock = VirtualClock("2026-01-05T09:00:00+00:00")
    erp = ErpCustomers(
        {
            "C-ACME": {
                "name": "ACME Trading",
                "credit_limit": Decimal("10000"),
                "open_balance": Decimal("5000"),
                "payment_terms": "prepaid",
            },
        }
    )
    org = workflows.parent / "examples" / "org.yaml"
    with Engine.from_path(
        workflows,
        store=f"sqlite:///{db}",
        clock=clock,
        plugins=[erp],
        load_entry_points=False,
        org=org if org.is_file() else None,
    ) as engine:
        print(
            f"crmflow demo: sales order {STORY} on {db} (rules back end: {engine.rules_backend})\n"
        )
        print("ACME Trading: credit limit 10,000, already owes 5,000, pays in advance.\n")

        _say(clock, f"{NAMES['alice']} enters order {STORY} for ACME Trading, amount 8,000")
        engine.start(
            "sales_order",
            STORY,
            actor=ALICE,
            data={"customer_id": "C-ACME", "amount": Decimal("8000")},
        )
        print(f"                  the order is {engine.get(STORY).state}")

        clock.advance("5m")
        _say(clock, f"{NAMES['alice']} asks to approve it")
        _explain(engine.fire(STORY, "approve", actor=ALICE))
        options = engine.available(STORY, actor=ALICE)
        can = [o.trigger for o in options if o.allowed]
        cannot = [o.trigger for o in options if not o.allowed]
        print(
            f"                  Alice can now: {', '.join(can) or 'nothing'}; "
            f"held back: {', '.join(cannot) or 'nothing'}"
        )

        clock.advance("10m")
        _say(clock, f"{NAMES['alice']} tries again, overriding with a reason")
        _explain(
            engine.fire(
                STORY, "approve", actor=ALICE, override="customer promised to pay on Friday"
            )
        )

        clock.advance("5m")
        reason = "ACME has paid on time for six years; payment promised Friday"
        _say(clock, f'{NAMES["bob"]} approves over the limit: "{reason}"')
        _explain(engine.fire(STORY, "approve", actor=BOB, override=reason))

        clock.advance("2h")
        _say(clock, f"{NAMES['wang']} wants to ship the goods")
        _explain(engine.fire(STORY, "ship", actor=WANG))
        for option in engine.available(STORY, actor=WANG):
            if option.trigger == "ship" and not option.allowed:
                why = "; ".join(r.message for r in option.reasons)
                print(f"                  the warehouse sees '{option.trigger}' blocked: {why}")

        clock.advance("1d")
        _say(clock, f"{NAMES['fiona']} records that the prepayment arrived")
        _explain(
            engine.fire(
                STORY, "confirm_prepayment", actor=FIONA, data={"prepayment_received": True}
            )
        )

        clock.advance("30m")
        _say(clock, f"{NAMES['wang']} ships the goods")
        _explain(engine.fire(STORY, "ship", actor=WANG))

        clock.advance("1h")
        _say(clock, f"{NAMES['fiona']} invoices the order")
        _explain(
            engine.fire(
                STORY,
                "invoice",
                actor=FIONA,
                data={"invoice_no": "INV-7001"},
                idempotency_key="erp-invoice-7001",
            )
        )
        _say(clock, "the ERP retries the same invoice command (network hiccup)")
        again = engine.fire(
            STORY,
            "invoice",
            actor=FIONA,
            data={"invoice_no": "INV-7001"},
            idempotency_key="erp-invoice-7001",
        )
        print(f"                  recognised as a repeat: {again.replayed}; nothing changed twice")

        clock.advance("14d")
        _say(clock, f"{NAMES['fiona']} records the payment")
        _explain(engine.fire(STORY, "record_payment", actor=FIONA))

        print(f"\nHistory of {STORY} (who did what, when and why):")
        for entry in engine.history(STORY):
            who = NAMES.get(entry.actor, entry.actor)
            if entry.kind in ("refused", "denied"):
                move = f"(stays {entry.from_state})"
            else:
                move = f"{entry.from_state or '-'} -> {entry.to_state}"
            when = f"{entry.at:%a %d %b %H:%M}"
            line = (
                f"  {entry.seq:>2}. {when}  {who:<20} {entry.kind:<10} {entry.trigger:<18} {move}"
            )
            print(line.rstrip())
            if entry.reason:
                print(f"      why: {entry.reason}")
        report = engine.verify(STORY)
        status = "intact" if report.ok else f"TAMPERED at entry {report.first_bad_seq}"
        print(f"\nHistory check: {report.checked} entries, hash chain {status}.")
        print(
            f"The ERP was asked for customer facts {erp.lookups} times, "
            "only when a rule needed them."
        )
    scenarios = workflows / "scenarios"
    passed = True
    if scenarios.is_dir():
        passed = _run_scenarios(scenarios, workflows, db)
    print(f"\nThe database is kept at {db} for later queries.")
    return 0 if passed else 1


def _run_scenarios(scenarios: Path, workflows: Path, db: Path) -> bool:
    """Every shipped scenario on the same file, each printed as a timeline."""
    from crmflow.engine._simulate import ScenarioResult, simulate

    print("\nThe shipped scenarios: one story for each path and each rule of each workflow.\n")

    def show(result: ScenarioResult) -> None:
        print(result.timeline())
        print()

    report = simulate(
        [scenarios],
        workflows=workflows,
        store=f"sqlite:///{db}",
        on_result=show,
        load_entry_points=False,
    )
    for error in report.errors:
        print(error.render())
    print(report.summary())
    return report.ok
