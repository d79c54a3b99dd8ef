"""A safe YAML reader that keeps the source position of every key and value.

PyYAML's ``compose`` gives nodes with line and column marks; this module walks those nodes
itself into plain Python values (``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``,
``None``) and records, per key path, where each mapping key and each value was written.

What it refuses, each as a :class:`~crmflow.DefinitionError` with source, line, column, path:

* texts over a size limit (1 MiB by default), more nodes than a limit, nesting deeper than 64;
* anchors and aliases (the "billion laughs" bomb needs them, and workflows do not);
* duplicate mapping keys (PyYAML silently keeps the last one);
* tags other than the standard ``str``, ``int``, ``float``, ``bool``, ``null``, ``seq``, ``map``
  (so ``!!python/object`` never reaches a constructor);
* keys that are not scalars, and more than one document.

Scalars are resolved the YAML 1.2 core-schema way: only ``true``/``false`` are booleans, so
``on``, ``off``, ``yes``, ``no``, ``y``, ``n`` stay strings (``on`` is a key in workflows).
Timestamps stay strings; a field type that wants a date converts the text itself.
Mapping keys are always the key's text as written, so ``1:``, ``true:`` and ``on:`` are the keys
``"1"``, ``"true"`` and ``"on"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, NodeEvent

from crmflow._errors import DefinitionError
from crmflow.engine._model import SourcePos

__all__ = [
    "DEFAULT_LIMITS",
    "KeyPath",
    "YamlDocument",
    "YamlLimits",
    "format_path",
    "read_text_file",
    "read_yaml_file",
    "read_yaml_text",
]

#: A position inside a document: mapping keys (str) and sequence indexes (int).
KeyPath = tuple[str | int, ...]

_TAG_PREFIX = "tag:yaml.org,2002:"
_STR = _TAG_PREFIX + "str"
_INT = _TAG_PREFIX + "int"
_FLOAT = _TAG_PREFIX + "float"
_BOOL = _TAG_PREFIX + "bool"
_NULL = _TAG_PREFIX + "null"
_SEQ = _TAG_PREFIX + "seq"
_MAP = _TAG_PREFIX + "map"
_ALLOWED_TAGS = frozenset({_STR, _INT, _FLOAT, _BOOL, _NULL, _SEQ, _MAP})


@dataclass(frozen=True)
class YamlLimits:
    """Caps on what one document may cost to read.

    Attributes:
        max_bytes: the largest accepted text, in UTF-8 bytes.
        max_depth: the deepest nesting of collections (the document root is depth 1).
        max_nodes: the most nodes (scalars, sequences, mappings) in one document.

    """

    max_bytes: int = 1024 * 1024
    max_depth: int = 64
    max_nodes: int = 100_000


#: The limits used when none are given.
DEFAULT_LIMITS = YamlLimits()


def format_path(path: KeyPath) -> str:
    """Render a key path as ``transitions[2].to`` (sequence indexes in brackets)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


@dataclass(frozen=True)
class YamlDocument:
    """A parsed document: plain data plus where each part was written.

    Attributes:
        data: the document as plain Python values (``None`` for an empty document).
        source: the file name (or ``"<string>"``) used in positions and errors.
        values: 1-based (line, column) of each value, by key path (``()`` is the root).
        keys: 1-based (line, column) of each mapping key, by the key path of its value.
        raw: the text of each scalar as written, by key path (exact decimals need it).
        blocks: for block scalars, (line, column, length) of each content line, by key path.

    """

    data: Any
    source: str
    values: Mapping[KeyPath, tuple[int, int]] = field(default_factory=dict)
    keys: Mapping[KeyPath, tuple[int, int]] = field(default_factory=dict)
    raw: Mapping[KeyPath, str] = field(default_factory=dict)
    blocks: Mapping[KeyPath, tuple[tuple[int, int, int], ...]] = field(default_factory=dict)

    def pos(self, path: KeyPath) -> SourcePos:
        """Position of the value at ``path``, falling back to the nearest enclosing value."""
        return self._find(self.values, path)

    def key_pos(self, path: KeyPath) -> SourcePos:
        """Position of the mapping key whose value is at ``path`` (the value's when no key)."""
        if path in self.keys:
            line, column = self.keys[path]
            return SourcePos(self.source, line, column, format_path(path))
        return self.pos(path)

    def _find(self, table: Mapping[KeyPath, tuple[int, int]], path: KeyPath) -> SourcePos:
        probe = path
        while probe not in table and probe:
            probe = probe[:-1]
        line, column = table.get(probe, (0, 0))
        lines = self.blocks.get(path, ()) if table is self.values else ()
        return SourcePos(self.source, line, column, format_path(path), lines)


class _Resolver(yaml.resolver.Resolver):
    """Implicit scalar types of the YAML 1.2 core schema, without timestamps or merge keys."""

    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}


_Resolver.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Resolver.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Resolver.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)
_Resolver.add_implicit_resolver(_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


class _Loader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.composer.Composer,
    _Resolver,
):
    """A composer only (no constructor at all) that enforces the limits while composing.

    Checking depth while composing, not afterwards, keeps a deeply nested text from
    exhausting Python's recursion limit inside PyYAML.
    """

    def __init__(self, text: str, source: str, limits: YamlLimits) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Resolver.__init__(self)
        self._source = source
        self._limits = limits
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        """Compose one node, refusing aliases, anchors and documents over the limits."""
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        line, column = event.start_mark.line + 1, event.start_mark.column + 1
        if isinstance(event, AliasEvent):
            raise DefinitionError(
                f"aliases are not allowed (*{event.anchor})",
                source=self._source,
                line=line,
                column=column,
                hint="write the value out instead of referring to an anchor",
            )
        if isinstance(event, NodeEvent) and event.anchor is not None:
            raise DefinitionError(
                f"anchors are not allowed (&{event.anchor})",
                source=self._source,
                line=line,
                column=column,
                hint="write the value out instead of defining an anchor",
            )
        self._nodes += 1
        if self._nodes > self._limits.max_nodes:
            raise DefinitionError(
                f"document has more than {self._limits.max_nodes} nodes",
                source=self._source,
                line=line,
                column=column,
            )
        self._depth += 1
        try:
            if self._depth > self._limits.max_depth:
                raise DefinitionError(
                    f"nesting deeper than {self._limits.max_depth} levels",
                    source=self._source,
                    line=line,
                    column=column,
                )
            node: yaml.Node | None = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1


def _scalar_value(node: yaml.ScalarNode, source: str, path: KeyPath) -> Any:
    tag, text = node.tag, node.value

    def bad(kind: str) -> DefinitionError:
        return DefinitionError(
            f"{text!r} is not a valid {kind}",
            source=source,
            line=node.start_mark.line + 1,
            column=node.start_mark.column + 1,
            path=format_path(path),
        )

    if tag == _STR:
        return text
    if tag == _NULL:
        if text not in ("", "~", "null", "Null", "NULL"):
            raise bad("null")
        return None
    if tag == _BOOL:
        if text.lower() not in ("true", "false"):
            raise bad("boolean")
        return text.lower() == "true"
    if tag == _INT:
        try:
            if text.startswith("0o"):
                return int(text[2:], 8)
            if text.startswith("0x"):
                return int(text[2:], 16)
            # int() alone would also accept "1_000" and spaces; YAML 1.2 core does not.
            if not re.fullmatch(r"[-+]?[0-9]+", text):
                raise ValueError(text)
            return int(text)
        except ValueError:
            raise bad("integer") from None
    if tag == _FLOAT:
        lowered = text.lower()
        if lowered in (".inf", "+.inf"):
            return float("inf")
        if lowered == "-.inf":
            return float("-inf")
        if lowered == ".nan":
            return float("nan")
        try:
            if "_" in text:
                raise ValueError(text)
            return float(text)
        except ValueError:
            raise bad("number") from None
    raise AssertionError(f"unexpected tag {tag}")  # _check_tag ran first


class _Walker:
    """Turns composed nodes into plain values, recording positions by key path."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text_lines = text.splitlines()
        self.blocks: dict[KeyPath, tuple[tuple[int, int, int], ...]] = {}
        self.values: dict[KeyPath, tuple[int, int]] = {}
        self.keys: dict[KeyPath, tuple[int, int]] = {}
        self.raw: dict[KeyPath, str] = {}

    def _error(self, reason: str, node: yaml.Node, path: KeyPath, **extra: Any) -> DefinitionError:
        return DefinitionError(
            reason,
            source=self.source,
            line=node.start_mark.line + 1,
            column=node.start_mark.column + 1,
            path=format_path(path),
            **extra,
        )

    def _check_tag(self, node: yaml.Node, path: KeyPath) -> None:
        if node.tag not in _ALLOWED_TAGS:
            short = node.tag.replace(_TAG_PREFIX, "!!")
            raise self._error(
                f"tag {short!r} is not allowed",
                node,
                path,
                hint="only the standard tags !!str, !!int, !!float, !!bool, !!null, !!seq, "
                "!!map are accepted",
            )
        expected = {
            yaml.MappingNode: (_MAP,),
            yaml.SequenceNode: (_SEQ,),
            yaml.ScalarNode: (_STR, _INT, _FLOAT, _BOOL, _NULL),
        }[type(node)]
        if node.tag not in expected:
            short = node.tag.replace(_TAG_PREFIX, "!!")
            raise self._error(f"tag {short!r} does not fit this kind of node", node, path)

    def walk(self, node: yaml.Node, path: KeyPath) -> Any:
        """Return the plain value of ``node``, which sits at ``path``."""
        self._check_tag(node, path)
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        if isinstance(node, yaml.ScalarNode) and node.style in ("'", '"'):
            # Point at the text itself, so that a column inside an expression maps onto the file.
            column += 1
        elif isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
            # The text starts on the lines below the indicator; remember each one.
            # A block scalar ends at the start of the line after it (column 0).
            stop = node.end_mark.line + (1 if node.end_mark.column else 0)
            rows = [
                (index, self.text_lines[index].rstrip())
                for index in range(node.start_mark.line + 1, stop)
                if index < len(self.text_lines) and self.text_lines[index].strip()
            ]
            # More-indented lines keep their extra spaces in the value: measure from the base.
            base = min((len(text) - len(text.lstrip()) for _, text in rows), default=0)
            segments = [(index + 1, base + 1, len(text) - base) for index, text in rows]
            if segments:
                self.blocks[path] = tuple(segments)
                line, column = segments[0][0], segments[0][1]
        self.values[path] = (line, column)
        if isinstance(node, yaml.ScalarNode):
            self.raw[path] = node.value
            return _scalar_value(node, self.source, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, (*path, index)) for index, item in enumerate(node.value)]
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._error("mapping keys must be plain names", key_node, path)
            self._check_tag(key_node, path)
            key = key_node.value
            child = (*path, key)
            if key in result:
                first_line, first_column = self.keys[child]
                raise self._error(
                    f"duplicate key {key!r} (first defined at line {first_line}, "
                    f"column {first_column})",
                    key_node,
                    child,
                )
            self.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = self.walk(value_node, child)
        return result


def read_yaml_text(
    text: str, source: str = "<string>", limits: YamlLimits = DEFAULT_LIMITS
) -> YamlDocument:
    """Parse one YAML document safely, keeping positions.

    Raises:
        DefinitionError: on a syntax error or anything the module docstring lists as refused.

    """
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > limits.max_bytes:
        raise DefinitionError(
            f"file is {size} bytes, more than the limit of {limits.max_bytes}", source=source
        )
    loader: _Loader | None = None
    try:
        # The reader checks for forbidden characters already while being constructed.
        loader = _Loader(text, source, limits)
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = exc.problem or exc.context or "invalid YAML"
        raise DefinitionError(
            f"invalid YAML: {reason}",
            source=source,
            line=mark.line + 1 if mark else 0,
            column=mark.column + 1 if mark else 0,
        ) from None
    except yaml.reader.ReaderError as exc:
        # Raised for control characters; it carries an offset into the text, not a mark.
        before = text[: exc.position]
        raise DefinitionError(
            f"invalid YAML: control character #x{exc.character:04x} is not allowed",
            source=source,
            line=before.count("\n") + 1,
            column=len(before) - (before.rfind("\n") + 1) + 1,
        ) from None
    except yaml.YAMLError as exc:
        raise DefinitionError(f"invalid YAML: {exc}", source=source) from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        return YamlDocument(None, source)
    walker = _Walker(source, text)
    data = walker.walk(node, ())
    return YamlDocument(data, source, walker.values, walker.keys, walker.raw, walker.blocks)


def read_text_file(path: str | Path, limits: YamlLimits = DEFAULT_LIMITS) -> str:
    """Read a UTF-8 text file, refusing it before reading it all when it is too large.

    Raises:
        DefinitionError: when the file cannot be read, is too large, or is not UTF-8.

    """
    source = str(path)
    try:
        with open(path, "rb") as handle:
            # Read one byte past the limit: enough to know it is too large without reading it all.
            data = handle.read(limits.max_bytes + 1)
    except OSError as exc:
        raise DefinitionError(f"cannot read file: {exc.strerror or exc}", source=source) from None
    if len(data) > limits.max_bytes:
        raise DefinitionError(
            f"file is larger than the limit of {limits.max_bytes} bytes", source=source
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DefinitionError(
            f"file is not valid UTF-8 (byte {exc.start})", source=source, line=line, column=1
        ) from None


def read_yaml_file(path: str | Path, limits: YamlLimits = DEFAULT_LIMITS) -> YamlDocument:
    """Read and parse a YAML file (see :func:`read_text_file` and :func:`read_yaml_text`).

    Raises:
        DefinitionError: when the file cannot be read or is not acceptable YAML.

    """
    return read_yaml_text(read_text_file(path, limits), str(path), limits)
