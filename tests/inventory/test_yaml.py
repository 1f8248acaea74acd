"""The YAML reader: one meaning on the fast and the fallback path, repeated keys refused."""

from __future__ import annotations

from typing import Any

import pytest

from inventory import _yaml
from inventory._yaml import YamlSyntaxError, compose, locate, parse_yaml

#: (YAML text, value read) under the JSON schema both readers follow
SEMANTICS: list[tuple[bytes, Any]] = [
    (b"a: 3.10\n", {"a": 3.1}),
    (b"a: '3.10'\n", {"a": "3.10"}),
    (b"a: yes\nb: no\nc: on\n", {"a": "yes", "b": "no", "c": "on"}),
    (b"a: true\nb: false\n", {"a": True, "b": False}),
    (b"a: null\nb:\n", {"a": None, "b": None}),
    (b"mode: 0755\n", {"mode": "0755"}),
    (b"n: 12\nm: -3\nf: 1.5e3\n", {"n": 12, "m": -3, "f": 1500.0}),
    (b"when: 2027-01-01T00:00:00Z\n", {"when": "2027-01-01T00:00:00Z"}),
    (b"12345: x\n", {"12345": "x"} if _yaml._HAVE_RYML else {12345: "x"}),
    (b"l: [a, 'b', 1]\nm: {k: v}\n", {"l": ["a", "b", 1], "m": {"k": "v"}}),
    (b"text: |\n  two\n  lines\n", {"text": "two\nlines\n"}),
    (b"base: &b {x: 1}\nd:\n  <<: *b\n  y: 2\n", {"base": {"x": 1}, "d": {"x": 1, "y": 2}}),
    (b"---\na: 1\n", {"a": 1}),
    (b"\xef\xbb\xbfa: 1\n", {"a": 1}),
    (b"- a\n- b\n", ["a", "b"]),
    (b"", None),
    (b"# only a comment\n", None),
    (b"nan: inf\nword: info\n", {"nan": "inf", "word": "info"}),
    (b"a: !!str 3.10\n", {"a": "3.10"}),
    ("site: 'München'\n".encode(), {"site": "München"}),
]


@pytest.mark.parametrize(("text", "expected"), SEMANTICS)
def test_reads_json_schema_values(text: bytes, expected: Any) -> None:
    """Plain scalars are typed as in JSON (yes stays text, 3.10 is a number)."""
    assert parse_yaml(text) == expected


@pytest.mark.parametrize(
    "text",
    [t for t, _ in SEMANTICS if t.strip() and not t.startswith(b"12345")],
)
def test_fast_and_fallback_agree(text: bytes) -> None:
    """rapidyaml and PyYAML (JSON-schema resolvers) read the same values."""
    assert _yaml._parse_pyyaml(text) == parse_yaml(text)


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        (
            b"a: 1\nb: 2\na: 3\n",
            3,
            1,
            "duplicate key 'a': first defined at line 1, column 1; "
            "YAML would silently keep only the last one",
        ),
        (
            b"x:\n  - {k: 1, k: 2}\n",
            2,
            12,
            "duplicate key 'k': first defined at line 2, column 6; "
            "YAML would silently keep only the last one",
        ),
        (b"a: [1, 2\n", 2, 1, "did not find expected ',' or ']' (while parsing a flow sequence)"),
        (
            b"a:\n\tb: 1\n",
            2,
            1,
            "found character that cannot start any token (while scanning for the next token); "
            "line 2 is indented with a tab: YAML indents with spaces only",
        ),
        (
            b"devices:\n  x:\n    platform: linux\n     site: b\n",
            4,
            10,
            "mapping values are not allowed in this context; line 4 is indented 5 spaces, "
            "more than line 3 (4), which already has a value: indent it like the key it "
            "belongs beside",
        ),
        (
            b"a:\n  b: 1\n c: 2\n",
            3,
            2,
            "did not find expected key (while parsing a block mapping); line 3 is indented "
            "1 space, like no key above it (indents used above: 0, 2): indent it like the key "
            "it belongs beside",
        ),
        (
            b"a: b: c\n",
            1,
            5,
            "mapping values are not allowed in this context; a value that contains ': ' must "
            "be quoted",
        ),
        (
            b"a: 1\n---\nb: 2\n",
            2,
            1,
            "but found another document (expected a single document in the stream)",
        ),
    ],
    ids=[
        "dup-top",
        "dup-in-list",
        "flow",
        "tab",
        "over-indented",
        "under-indented",
        "colon",
        "two-docs",
    ],
)
def test_syntax_errors_have_positions(text: bytes, line: int, column: int, message: str) -> None:
    """Syntax errors and repeated keys carry the parser's 1-based line and column."""
    with pytest.raises(YamlSyntaxError) as info:
        parse_yaml(text)
    assert (info.value.line, info.value.column, info.value.message) == (line, column, message)


@pytest.mark.parametrize(
    ("text", "unsafe"),
    [
        (b"a: !!str 3.10\n", True),
        (b"- !custom x\n", True),
        (b"a: [!!int '1']\n", True),
        (b"description: don't touch!\n", False),
        (b"nan: 1\n", True),
        (b"a: -inf\n", True),
        (b"a: Infinity\n", True),
        (b"tags: [info, infra, nano, dev-inf-01]\n", False),
    ],
)
def test_fast_path_avoids_what_rapidyaml_gets_wrong(text: bytes, unsafe: bool) -> None:
    """Tags and nan/inf words go to PyYAML; an exclamation mark in text does not."""
    assert _yaml._fast_path_unsafe(text) is unsafe


def test_merge_key_override_is_not_a_duplicate() -> None:
    """Overriding a merged key is allowed; only keys written twice are refused."""
    text = b"base: &b {x: 1, y: 1}\nd:\n  <<: *b\n  x: 2\n"
    assert parse_yaml(text) == {"base": {"x": 1, "y": 1}, "d": {"x": 2, "y": 1}}


def test_locate_keys_values_and_partial_paths() -> None:
    """locate finds keys, values and list items, and stops at the deepest existing node."""
    root = compose(b"a:\n  b: [1, 2, x]\n  c: 3\n")
    found = locate(root, ["a", "b", 2])
    assert found.depth == 3 and found.key is None
    assert found.value is not None and (found.value.line, found.value.column) == (2, 13)
    found = locate(root, ["a", "c"])
    assert found.key is not None and (found.key.line, found.key.column) == (3, 3)
    assert found.value is not None and found.value.raw == "3"
    found = locate(root, ["a", "zz", "q"])
    assert found.depth == 1 and found.value is not None and found.value.line == 2


def test_gc_is_restored_after_parse_and_failure() -> None:
    """The collector is paused while loading and enabled again, even after an error."""
    import gc

    assert gc.isenabled()
    parse_yaml(b"a: 1\n")
    assert gc.isenabled()
    with pytest.raises(YamlSyntaxError):
        parse_yaml(b"a: [\n")
    assert gc.isenabled()
