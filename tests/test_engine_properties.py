"""Random event sequences on the shipped workflows never reach a state the definition forbids."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmflow import Actor, CrmflowError, Engine, WorkflowDef, load_definitions

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
DEFINITIONS = {d.name: d for d in load_definitions(WORKFLOWS)}
ROLES = sorted({r for d in DEFINITIONS.values() for r in d.roles})

money = st.decimals(min_value=0, max_value=20000, places=2, allow_nan=False, allow_infinity=False)
customer = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["ACME", "Globex"]),
        "credit_limit": money,
        "open_balance": money,
        "payment_terms": st.sampled_from(["prepaid", "net30"]),
        "lock_owner": st.booleans(),
        "owner": st.sampled_from(["alice", "bob"]),
    }
)


def _allowed_moves(defn: WorkflowDef, state: str, trigger: str) -> set[str]:
    dests = set()
    for t in defn.transitions_from(state):
        if t.trigger == trigger:
            dests.add(defn.leaf_state(t.dest) if t.dest else state)
    return dests


def _data_for(defn: WorkflowDef, data: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in data.items() if k in defn.fields}


step = st.tuples(
    st.sampled_from(sorted({t for d in DEFINITIONS.values() for t in d.triggers})),
    st.sampled_from(ROLES),
    customer,
    st.booleans(),
    st.fixed_dictionaries(
        {"prepayment_received": st.booleans(), "first_order_no": st.none() | st.just("PO-1")}
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflow=st.sampled_from(sorted(DEFINITIONS)), steps=st.lists(step, max_size=12))
def test_random_sequences_stay_inside_the_definition(workflow: str, steps: list) -> None:  # type: ignore[type-arg]
    defn = DEFINITIONS[workflow]
    with Engine([defn], rules_backend="python", load_entry_points=False) as engine:
        starter = Actor("starter", roles=set(defn.start_roles) or {"anyone"})
        sample = {"str": "X", "decimal": Decimal("100"), "date": "2026-02-01"}
        required = {n: sample[f.type] for n, f in defn.fields.items() if f.required}
        engine.start(workflow, "K", actor=starter, data=required)
        for trigger, role, facts, override, data in steps:
            before = engine.get("K")
            try:
                result = engine.fire(
                    "K",
                    trigger,
                    actor=Actor("u", roles={role}),
                    facts={
                        "customer": {
                            k: v for k, v in facts.items() if k in defn.facts.get("customer", {})
                        }
                    },
                    data=_data_for(defn, data),
                    override="because" if override else None,
                )
            except CrmflowError:
                after = engine.get("K")
                assert (after.state, after.version) == (before.state, before.version)
                continue
            after = engine.get("K")
            assert after.state in defn.states and not defn.states[after.state].children
            if result.ok:
                assert after.state in _allowed_moves(defn, before.state, trigger)
                assert after.version == before.version + 1
                assert not defn.states[before.state].final
            else:
                assert (after.state, after.version) == (before.state, before.version)
        assert engine.verify("K").ok


def test_kept_machine_answers_match_a_fresh_machine_for_every_pair() -> None:
    # The machine keeps each (state, trigger) answer; asked in any order, and again, it must
    # answer as a machine that has never been asked anything does.
    from crmflow.engine._machine import WorkflowMachine

    for defn in DEFINITIONS.values():
        pairs = [
            (state, t.trigger)
            for state, spec in defn.states.items()
            if not spec.children
            for t in defn.transitions_from(state)
        ]
        assert pairs, defn.name
        kept = WorkflowMachine(defn)
        for state, trigger in [*pairs, *reversed(pairs)]:
            assert kept.fire(state, trigger) == WorkflowMachine(defn).fire(state, trigger)
            assert kept.fire(state, trigger) in _allowed_moves(defn, state, trigger)
