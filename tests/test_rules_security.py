"""Escape attempts from the public corpora: each is an ExpressionError and nothing runs."""

from __future__ import annotations

import builtins
from typing import Any

import pytest

from crmflow._errors import ExpressionError
from crmflow.rules import Schema, compile_rule, parse_expression

SCHEMA = Schema(
    fields={"amount": "decimal", "y": "list[str]", "key": "str"},
    namespaces={"customer": {"name": "str"}},
)

ATTEMPTS = [
    "__import__('os')",
    "__import__('os').system('touch /tmp/crmflow-pwned')",
    "().__class__.__bases__",
    "().__class__.__bases__[0].__subclasses__()",
    "amount.__class__",
    "customer.__dict__",
    "customer.name.__class__",
    "(lambda: 1)()",
    "[x for x in y]",
    "{x for x in y}",
    "{x: 1 for x in y}",
    "(x for x in y)",
    "2**999999",
    "9**9**9**9",
    "amount ** 2 > 1",
    "open('/etc/passwd')",
    "open('/etc/passwd').read()",
    "getattr(amount, 'x')",
    "eval('1')",
    "exec('1')",
    "compile('1', 'f', 'eval')",
    "globals()",
    "locals()['x']",
    "vars()",
    "dir()",
    "type(amount)",
    "amount.real",
    "key.format",
    "'{0.__class__}'.format(amount)",
    "f'{amount}'",
    "y[0]",
    "key[0:1]",
    "(x := 1)",
    "*y",
    "[*y]",
    "await amount",
    "not " * 200 + "amount",
    "(" * 100 + "amount" + ")" * 100,
    "-" * 500 + "1 > 0",
    "1" + "+1" * 600 + " > 0",
    "'" + "a" * 10_000 + "' == key",
    "key == '" + "a" * 1001 + "'",
    "a" * 2001,
    "amount > 1e999999",
    "amount > 1" + "0" * 40,
    "1j > 0",
    "b'x' == key",
    "amount if True else amount",
    "amount@amount",
    "~amount",
    "amount << 1",
    "_secret > 1",
    "__builtins__",
    "customer._private",
    "customer.name.upper()",
    "lower.__globals__",
    "len(key, key=1)",
    "print('x')",
    "breakpoint()",
    "__debug__",
    "amount\x00",
    "yield amount",
    "amount is not None",
    "...",
    "{}",
    "{1}",
    "(1, 2)",
]


@pytest.fixture
def no_execution(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the dangerous builtins record any call, so a test can prove none happened."""
    calls: list[str] = []
    # compile/getattr/__import__ are used legitimately (ast.parse, pytest); these are not.
    for name in ("open", "eval", "exec", "print", "breakpoint"):
        original = getattr(builtins, name)

        def spy(*args: Any, _n: str = name, _o: Any = original, **kw: Any) -> Any:
            calls.append(_n)
            return _o(*args, **kw)

        monkeypatch.setattr(builtins, name, spy)
    return calls


@pytest.mark.parametrize("text", ATTEMPTS, ids=lambda t: repr(t[:40]))
def test_escape_attempt_is_rejected(text: str, no_execution: list[str]) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_rule("r", when=text, effect="block", schema=SCHEMA)
    assert info.value.column >= 1
    assert info.value.part == "when"  # type: ignore[attr-defined]
    # The parser itself imports nothing and opens nothing while handling the text.
    assert no_execution == []


@pytest.mark.parametrize("text", ATTEMPTS[:20], ids=lambda t: repr(t[:40]))
def test_escape_attempt_in_template_is_rejected(text: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_rule("r", when="True", effect="block", message="{ " + text + " }", schema=SCHEMA)
    assert info.value.part == "message"  # type: ignore[attr-defined]


def test_dunder_column_is_precise() -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression("amount.__class__")
    assert info.value.column == len("amount.") + 1


def test_power_operator_column() -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression("amount ** 2")
    assert info.value.column == len("amount ") + 1


def test_no_file_was_created() -> None:
    import os

    assert not os.path.exists("/tmp/crmflow-pwned")


def test_rules_package_never_uses_eval() -> None:
    import pathlib

    import crmflow.rules

    root = pathlib.Path(crmflow.rules.__file__).parent
    for path in root.glob("*.py"):
        text = path.read_text()
        for banned in ("eval(", "exec(", "compile("):
            hits = [
                line
                for line in text.splitlines()
                if banned in line
                and "evaluate" not in line
                and "def " not in line
                and not line.lstrip().startswith(("#", '"', "*"))
            ]
            assert not [h for h in hits if f" {banned}" in h or h.lstrip().startswith(banned)], (
                path,
                hits,
            )


def test_rules_does_not_import_engine_or_plugins() -> None:
    import pathlib

    import crmflow.rules

    root = pathlib.Path(crmflow.rules.__file__).parent
    for path in root.glob("*.py"):
        text = path.read_text()
        assert "crmflow.engine" not in text and "crmflow.plugins" not in text, path
        if path.name != "_durable_backend.py":
            assert "import durable" not in text and "from durable" not in text, path
