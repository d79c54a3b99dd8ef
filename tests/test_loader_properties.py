"""Whatever text comes in, the loader answers with a definition or a DefinitionError."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmflow._errors import DefinitionError
from crmflow.engine._loader import load_workflow_text
from crmflow.engine._model import WorkflowDef

VALID_TEXTS = [
    (Path(__file__).parent / "fixtures" / name).read_text(encoding="utf-8")
    for name in ("sales_order.yaml", "deal.yaml")
]

# Characters that matter to YAML, plus letters that make keys and state names.
YAMLISH = st.text(
    alphabet=st.sampled_from(list("abcdefgnorstuwy_.*0129 \n-:[]{},&*!|>'\"#~?%@`\t")),
    max_size=200,
)

TOKENS = [
    "workflow",
    "states",
    "transitions",
    "rules",
    "fields",
    "from",
    "to",
    "trigger",
    "initial",
    "final",
    "true",
    "false",
    "yes",
    "on",
    "*",
    "&a",
    "*a",
    "!!python/object:x",
    "-",
    ":",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\n",
    "  ",
    "draft",
    "approved",
    "opportunity.negotiation",
    "1.5",
    "~",
    "!!int",
    "'",
    '"',
    "#",
    "effect",
    "block",
    "when",
    "message",
    "roles",
    "version",
]

settings.register_profile("crmflow", deadline=None, max_examples=150)
settings.load_profile("crmflow")


def only_definition_errors(text: str) -> None:
    try:
        result = load_workflow_text(text)
    except DefinitionError as exc:
        assert exc.source == "<string>"
        assert exc.line >= 0 and exc.column >= 0
        assert str(exc).startswith("<string>")
        return
    assert isinstance(result, WorkflowDef)
    assert result.initial_state in result.states


@given(YAMLISH)
def test_random_yamlish_text(text: str) -> None:
    only_definition_errors(text)


@given(st.lists(st.sampled_from(TOKENS), max_size=60).map(" ".join))
def test_random_token_soup(text: str) -> None:
    only_definition_errors(text)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(VALID_TEXTS)).splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "swap", "edit", "token"]))
        if action == "delete":
            del lines[index]
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], lines[index]
        elif action == "edit":
            line = lines[index]
            at = draw(st.integers(0, len(line)))
            cut = draw(st.integers(0, 5))
            lines[index] = line[:at] + draw(YAMLISH.filter(lambda s: len(s) < 6)) + line[at + cut :]
        else:
            line = lines[index]
            at = draw(st.integers(0, len(line)))
            lines[index] = line[:at] + draw(st.sampled_from(TOKENS)) + line[at:]
    return "".join(lines)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(mutated())
def test_mutations_of_valid_documents(text: str) -> None:
    only_definition_errors(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(TOKENS[:20]), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.fixed_dictionaries(
        {"workflow": st.sampled_from(["w", "W", 3]), "states": json_values},
        optional={"transitions": json_values, "rules": json_values, "fields": json_values},
    )
)
def test_structured_documents(data: dict[str, object]) -> None:
    import json

    # JSON is YAML (flow style), so this feeds well-formed but arbitrary shapes.
    only_definition_errors(json.dumps(data))
