"""Reading operator YAML fast, and finding where a key path sits when something is wrong.

Two readers with the same meaning (the YAML 1.2 JSON schema: plain ``true``,
``false``, ``null``/empty and JSON numbers are typed, every other scalar is a
string — so ``yes`` stays a string and ``0755`` stays text):

* fast: rapidyaml parses into a C++ tree, emits JSON, orjson reads it. About
  ten times faster than PyYAML's C loader on a 100k-device file.
* fallback: PyYAML (C loader when built) with JSON-schema resolvers, used when
  rapidyaml is missing, refuses the text, emits something that is not JSON, or
  the text uses a construct the fast path would get wrong (tags, nan/inf words).

Positions are not tracked while loading: only when a problem is found does
``locate`` re-compose the text with marks to name line and column.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from fleetbase.gcpause import gc_paused

__all__ = [
    "Found",
    "Position",
    "YamlSyntaxError",
    "compose",
    "key_path_at",
    "locate",
    "parse_yaml",
]

try:
    import ryml

    _HAVE_RYML = True
except ImportError:  # pragma: no cover - rapidyaml is a dependency; this is the safety net
    _HAVE_RYML = False


class YamlSyntaxError(Exception):
    """The text is not one well-formed YAML document (or repeats a key)."""

    def __init__(
        self,
        message: str,
        line: int | None,
        column: int | None,
        *,
        duplicate_key: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.duplicate_key = duplicate_key


@dataclass(frozen=True)
class Position:
    """1-based line and column of a node, and its text as written when it is a scalar."""

    line: int
    column: int
    raw: str | None = None


_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _JsonSchemaLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """PyYAML loader resolving plain scalars like the YAML 1.2 JSON schema."""

    yaml_implicit_resolvers: dict[Any, Any] = {}

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[str, ScalarNode] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            first = seen.get(key_node.value)
            if first is not None:
                mark = key_node.start_mark
                raise YamlSyntaxError(
                    f"duplicate key {key_node.value!r}: first defined at line "
                    f"{first.start_mark.line + 1}, column {first.start_mark.column + 1}; "
                    "YAML would silently keep only the last one",
                    mark.line + 1,
                    mark.column + 1,
                    duplicate_key=True,
                )
            seen[key_node.value] = key_node
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return result


_JsonSchemaLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|false)$"), list("tf")
)
_JsonSchemaLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:null|)$"), ["n", ""]
)
_JsonSchemaLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^-?(?:0|[1-9][0-9]*)$"), list("-0123456789")
)
_JsonSchemaLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"),
    list("-.0123456789"),
)
_JsonSchemaLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


class _MarkLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """Composes only: locating a key needs structure and raw text, not typed scalars,
    and skipping the resolver's regular expressions makes this a third faster."""

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        if kind is ScalarNode:
            return "tag:yaml.org,2002:str"
        return "tag:yaml.org,2002:map" if kind is MappingNode else "tag:yaml.org,2002:seq"


def parse_yaml(text: bytes | str) -> Any:
    """Parse one YAML document into plain Python values; raise YamlSyntaxError.

    Raises for syntax errors, several documents in one file, and a key repeated
    inside one mapping, each with 1-based line and column.
    """
    data = text.encode() if isinstance(text, str) else text
    if not data.strip():
        return None
    if b"&" in data and _ANCHOR_RE.search(data):
        check_alias_expansion(data)  # before any parser expands the aliases
    with gc_paused():
        if _HAVE_RYML and not _fast_path_unsafe(data):
            result = _parse_fast(data)
            if result is not _FALLBACK:
                return result
        return _parse_pyyaml(data)


_FALLBACK = object()

#: An anchor: "&" where a node starts (not inside a word, as in "R&D").
_ANCHOR_RE = re.compile(rb"(?:^|[\s\[{,])&\S")

#: Nodes a document may expand to through aliases, beyond ten times its own node count.
MAX_ALIAS_EXPANSION = 100_000


def check_alias_expansion(data: bytes) -> None:
    """Refuse a document whose aliases expand it far beyond its own size (a "billion
    laughs" bomb), or that refers to an anchor from inside itself; raises YamlSyntaxError.

    Counted on PyYAML's node graph, where an alias is the anchored node itself, so
    the count costs one pass over the document's own nodes.
    """
    try:
        root = yaml.compose(data, Loader=_MarkLoader)
    except yaml.YAMLError:
        return  # the parser proper reports the syntax error with its position
    except RecursionError as e:
        raise YamlSyntaxError("the document nests too deeply", None, None) from e
    if root is None:
        return
    expanded: dict[int, int] = {}
    distinct = 0
    busy: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            busy.discard(key)
            expanded[key] = 1 + sum(expanded[id(c)] for c in _children(node))
            continue
        if key in expanded:
            continue
        if key in busy:
            mark = node.start_mark
            raise YamlSyntaxError(
                "an alias refers to the anchor it is inside (a recursive document)",
                mark.line + 1,
                mark.column + 1,
            )
        distinct += 1
        busy.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in expanded)
    total = expanded[id(root)]
    limit = 10 * distinct + MAX_ALIAS_EXPANSION
    if total > limit:
        raise YamlSyntaxError(
            f"aliases expand this document to {total:,} values from {distinct:,} written "
            f"(at most {limit:,} allowed): refusing what looks like an alias bomb",
            None,
            None,
        )


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _fast_path_unsafe(data: bytes) -> bool:
    # Tags change a scalar's type and rapidyaml's JSON emitter drops them; it
    # also rewrites the words nan/inf/infinity (even as keys) to .nan/.inf.
    start = data.find(b"!")
    while start != -1:
        if start == 0 or data[start - 1 : start] in b" \t\n[{,":
            return True  # a tag starts a node; "!" inside text ("done!") does not
        start = data.find(b"!", start + 1)
    low = data.lower()
    for word in (b"nan", b"inf"):
        start = low.find(word)
        while start != -1:
            end = start + len(word)
            if word == b"inf" and low.startswith(b"inity", end):
                end += 5
            before = low[start - 1 : start] if start else b" "
            after = low[end : end + 1] or b" "
            if before in b" \t\n:[{,.+-" and not after.isalnum() and after not in b"_.-":
                return True
            start = low.find(word, start + 1)
    return False


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    # rapidyaml's C++ error handler prints to fd 2 before raising; the caller
    # reports the error itself (with PyYAML's clearer message).
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _parse_fast(data: bytes) -> Any:
    # Parsed in a copy the tree points into (it unescapes scalars there): half the
    # time of parse_in_arena, which copies the text into the tree's growing arena.
    source = bytearray(data)
    try:
        with _stderr_silenced():
            tree = ryml.parse_in_place(source)
    except Exception:
        return _FALLBACK  # let PyYAML name the syntax error
    root = tree.root_id()
    stream = tree.is_stream(root)
    if stream:
        if tree.num_children(root) != 1:
            return _FALLBACK  # PyYAML reports "expected a single document"
        root = tree.first_child(root)
    elif not tree.has_val(root) and not tree.is_container(root):
        return None
    if b"*" in data or b"<<" in data:
        tree.resolve()
    try:
        # Emitted into a buffer Python owns: emit_json_malloc's buffer is never freed.
        buffer = bytearray(ryml.compute_json_length(tree, root))
        result = orjson.loads(ryml.emit_json_in_place(tree, buffer, root))
    except Exception:
        return _FALLBACK
    if _count_nodes(result) != tree.size() - (1 if stream else 0):
        return _FALLBACK  # a repeated key was dropped: PyYAML names it with its line
    return result


def _count_nodes(value: Any) -> int:
    """Number of values in a JSON-like structure, containers included."""
    # Level by level, so that the loops run in comprehensions and ``map``.
    total = 1
    level = [value] if type(value) in _CONTAINERS else []
    while level:
        total += sum(map(len, level))
        children = [
            child
            for item in level
            if type(item) is dict
            for child in item.values()
            if type(child) in _CONTAINERS and child
        ]
        children += [
            child
            for item in level
            if type(item) is list
            for child in item
            if type(child) in _CONTAINERS and child
        ]
        level = children
    return total


_CONTAINERS = (dict, list)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _spaces(n: int) -> str:
    return f"{n} space{'s' if n != 1 else ''}"


def _layout_hint(data: bytes, line: int, message: str) -> str:
    """What the parser's message means for the line at fault: a tab, or a key indented wrong.

    Empty when nothing about the layout explains the error.
    """
    lines = data.decode("utf-8", "replace").splitlines()
    if not 0 < line <= len(lines):
        return ""
    text = lines[line - 1]
    lead = text[: len(text) - len(text.lstrip(" \t"))]
    if "\t" in lead:
        return f"; line {line} is indented with a tab: YAML indents with spaces only"
    above = [
        (n, t)
        for n, t in enumerate(lines[: line - 1], 1)
        if t.strip() and not t.lstrip().startswith("#")
    ]
    here = _indent(text)
    if message.startswith("mapping values are not allowed"):
        if above:
            n, prev = above[-1]
            if here > _indent(prev) and not prev.rstrip().endswith(":"):
                return (
                    f"; line {line} is indented {_spaces(here)}, more than line {n} "
                    f"({_indent(prev)}), which already has a value: indent it like the key "
                    "it belongs beside"
                )
        return "; a value that contains ': ' must be quoted"
    if message.startswith(("expected <block end>", "did not find expected key")) and above:
        levels = sorted({_indent(t) for _, t in above})
        if here not in levels:
            shown = ", ".join(str(i) for i in levels)
            return (
                f"; line {line} is indented {_spaces(here)}, like no key above it "
                f"(indents used above: {shown}): indent it like the key it belongs beside"
            )
    return ""


def _parse_pyyaml(data: bytes) -> Any:
    try:
        return yaml.load(data, Loader=_JsonSchemaLoader)
    except YamlSyntaxError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        message = e.problem or "invalid YAML"
        if e.context:
            message = f"{message} ({e.context})"
        if mark is None:
            raise YamlSyntaxError(message, None, None) from e
        message += _layout_hint(data, mark.line + 1, message)
        raise YamlSyntaxError(message, mark.line + 1, mark.column + 1) from e
    except yaml.YAMLError as e:
        raise YamlSyntaxError(str(e), None, None) from e
    except (ValueError, TypeError) as e:
        # e.g. an unhashable (sequence) mapping key, or a bad !!binary payload
        raise YamlSyntaxError(str(e), None, None) from e


def compose(text: bytes | str) -> Node | None:
    """Compose text into a node tree carrying positions; None for an empty document."""
    try:
        with gc_paused():
            node: Node | None = yaml.compose(text, Loader=_MarkLoader)
    except yaml.YAMLError:
        return None
    return node


@dataclass(frozen=True)
class Found:
    """Where a key path sits: its key (for mapping entries) and its value, if present."""

    key: Position | None
    value: Position | None
    depth: int

    @property
    def best(self) -> Position | None:
        """The key's position when there is one (so unknown keys point at themselves)."""
        return self.key or self.value


def locate(
    root: Node | None,
    path: Sequence[str | int],
    index: dict[int, dict[str, tuple[Node, Node]]] | None = None,
) -> Found:
    """Find ``path`` in a composed document; ``depth`` counts the elements found.

    When the path is only partly present, ``value`` is the deepest node reached
    (e.g. the mapping that lacks a required key). Pass the same ``index`` for
    many lookups in one document: large mappings are then searched in O(1).
    """
    if root is None:
        return Found(None, None, 0)
    node: Node = root
    key_node: Node | None = None
    depth = 0
    for element in path:
        nxt: tuple[Node | None, Node] | None = None
        if isinstance(node, MappingNode):
            nxt = _child(node, str(element), index)
        elif (
            isinstance(node, SequenceNode)
            and isinstance(element, int)
            and 0 <= element < len(node.value)
        ):
            nxt = (None, node.value[element])
        if nxt is None:
            return Found(None, _position(node), depth)
        key_node, node = nxt
        depth += 1
    key = _position(key_node) if key_node is not None else None
    return Found(key, _position(node), depth)


def _child(
    node: MappingNode, key: str, index: dict[int, dict[str, tuple[Node, Node]]] | None
) -> tuple[Node, Node] | None:
    if index is None or len(node.value) < 16:
        found = None
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.value == key:
                found = (k, v)  # the last one wins, as it does when loading
        return found
    table = index.get(id(node))
    if table is None:
        table = {k.value: (k, v) for k, v in node.value if isinstance(k, ScalarNode)}
        index[id(node)] = table
    return table.get(key)


def key_path_at(root: Node | None, line: int, column: int) -> list[str | int] | None:
    """Key path of the mapping key written at 1-based ``line``:``column``, if any."""
    if root is None:
        return None
    stack: list[tuple[Node, list[str | int]]] = [(root, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, MappingNode):
            for k, v in node.value:
                if not isinstance(k, ScalarNode):
                    continue
                if (k.start_mark.line + 1, k.start_mark.column + 1) == (line, column):
                    return [*path, k.value]
                if v.start_mark.line + 1 <= line <= v.end_mark.line + 1:
                    stack.append((v, [*path, k.value]))
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                if item.start_mark.line + 1 <= line <= item.end_mark.line + 1:
                    stack.append((item, [*path, i]))
    return None


def _position(node: Node) -> Position:
    raw = node.value if isinstance(node, ScalarNode) else None
    return Position(node.start_mark.line + 1, node.start_mark.column + 1, raw)
