"""The YAML reader refuses bombs, deep nesting, huge files, duplicate keys and foreign tags."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from crmflow._errors import DefinitionError
from crmflow.engine._loader import collect_errors, load_workflow_file, load_workflow_text
from crmflow.engine._yaml import YamlLimits, read_yaml_file, read_yaml_text

FIXTURES = Path(__file__).parent / "fixtures"

BILLION_LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_billion_laughs_is_refused_at_the_first_anchor() -> None:
    started = time.perf_counter()
    with pytest.raises(DefinitionError, match="anchors are not allowed") as info:
        read_yaml_text(BILLION_LAUGHS)
    assert time.perf_counter() - started < 1
    assert (info.value.line, info.value.column) == (1, 4)


def test_alias_without_anchor_is_refused() -> None:
    # An alias to an undefined anchor is a YAML error; either way it never expands.
    with pytest.raises(DefinitionError):
        read_yaml_text("a: *nowhere\n")


def test_alias_bomb_fixture_is_reported_by_collect_errors() -> None:
    errors = collect_errors(FIXTURES / "bad" / "alias_bomb.yaml")
    assert len(errors) == 1
    assert errors[0].line == 2
    assert "anchors" in errors[0].reason


@pytest.mark.parametrize("opener", ["[", "{a: "], ids=["sequences", "mappings"])
def test_deep_flow_nesting_is_refused(opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    text = opener * 5000 + "1" + closer * 5000
    with pytest.raises(DefinitionError, match="nesting deeper than 64") as info:
        read_yaml_text(text)
    assert info.value.line == 1


def test_deep_block_nesting_is_refused() -> None:
    text = "".join("  " * depth + f"k{depth}:\n" for depth in range(100))
    with pytest.raises(DefinitionError, match="nesting deeper than 64") as info:
        read_yaml_text(text)
    assert info.value.line == 64


def test_nesting_at_the_limit_is_accepted() -> None:
    text = "[" * 64 + "]" * 64
    assert read_yaml_text(text).data is not None


def test_huge_text_is_refused_before_parsing() -> None:
    text = "a: " + "x" * (1024 * 1024) + "\n"
    with pytest.raises(DefinitionError, match="more than the limit"):
        load_workflow_text(text)


def test_huge_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # sparse: big on paper, cheap on disk
    with pytest.raises(DefinitionError, match="larger than the limit") as info:
        load_workflow_file(path)
    assert info.value.source == str(path)


def test_size_limit_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text("a: 1234567890\n")
    with pytest.raises(DefinitionError, match="limit of 8 bytes"):
        read_yaml_file(path, YamlLimits(max_bytes=8))
    assert read_yaml_file(path).data == {"a": 1234567890}


def test_node_count_limit() -> None:
    text = "[" + ", ".join(["1"] * 200) + "]"
    with pytest.raises(DefinitionError, match="more than 100 nodes"):
        read_yaml_text(text, limits=YamlLimits(max_nodes=100))


def test_duplicate_key_points_at_the_second() -> None:
    text = "workflow: a\nstates: [x]\nworkflow: b\n"
    with pytest.raises(DefinitionError, match="duplicate key 'workflow'") as info:
        load_workflow_text(text, source="dup.yaml")
    err = info.value
    assert (err.source, err.line, err.column, err.path) == ("dup.yaml", 3, 1, "workflow")
    assert "line 1" in err.reason


def test_nested_duplicate_key() -> None:
    with pytest.raises(DefinitionError, match="duplicate key 'to'") as info:
        read_yaml_text("t:\n  - {to: a, to: b}\n")
    assert (info.value.line, info.value.column, info.value.path) == (2, 13, "t[0].to")


@pytest.mark.parametrize("word", ["on", "off", "yes", "no", "y", "n", "Yes", "NO", "On"])
def test_yaml_11_booleans_stay_strings(word: str) -> None:
    doc = read_yaml_text(f"{word}: {word}\nlist: [{word}]\n")
    assert doc.data == {word: word, "list": [word]}


def test_on_is_a_string_key() -> None:
    doc = read_yaml_text("on: {transition: approve}\n")
    assert doc.data == {"on": {"transition": "approve"}}
    assert doc.key_pos(("on",)).line == 1


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("False", False),
        ("12", 12),
        ("-3", -3),
        ("0x1F", 31),
        ("0o17", 15),
        ("1.5", 1.5),
        ("~", None),
        ("null", None),
        ("", None),
        ("2026-01-31", "2026-01-31"),
        ("2026-01-31T09:00:00", "2026-01-31T09:00:00"),
        ("1_000", "1_000"),
        ("012", 12),
        ("'true'", "true"),
        ("!!str 12", "12"),
        ("!!int '12'", 12),
    ],
)
def test_scalars_follow_yaml_12_core(text: str, value: object) -> None:
    assert read_yaml_text(f"v: {text}\n").data == {"v": value}


def test_keys_are_the_text_as_written() -> None:
    assert read_yaml_text("1: a\ntrue: b\n~: c\n").data == {"1": "a", "true": "b", "~": "c"}


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object:os.system",
        "!!python/object/apply:os.system",
        "!!python/name:os.system",
        "!!binary",
        "!!timestamp",
        "!!set",
        "!custom",
    ],
)
def test_foreign_tags_are_refused(tag: str) -> None:
    with pytest.raises(DefinitionError, match="is not allowed") as info:
        read_yaml_text(f"workflow: w\nx: {tag} 'echo hi'\n")
    assert (info.value.line, info.value.column, info.value.path) == (2, 4, "x")


def test_python_object_tag_in_a_workflow_file(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("workflow: !!python/object/apply:os.system ['touch pwned']\nstates: [a]\n")
    with pytest.raises(DefinitionError, match="python/object/apply"):
        load_workflow_file(path)
    assert not (tmp_path / "pwned").exists()


def test_complex_keys_are_refused() -> None:
    with pytest.raises(DefinitionError, match="plain names"):
        read_yaml_text("? [a, b]\n: c\n")


def test_control_characters_are_reported_with_position() -> None:
    with pytest.raises(DefinitionError, match="control character") as info:
        read_yaml_text("a: b\nc: \x07\n")
    assert (info.value.line, info.value.column) == (2, 4)


def test_invalid_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"workflow: w\ntitle: caf\xe9\n")
    with pytest.raises(DefinitionError, match="not valid UTF-8") as info:
        load_workflow_file(path)
    assert info.value.line == 2


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert read_yaml_file(path).data == {"a": 1}
