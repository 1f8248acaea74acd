"""Input files of the operator repo and the translation of validation errors into Problems.

A ``SourceFile`` keeps the bytes it was parsed from, so that only when a problem
is found is the text composed again with positions (loading never tracks them).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from yaml.nodes import Node

from inventory._yaml import (
    Found,
    Position,
    YamlSyntaxError,
    compose,
    key_path_at,
    locate,
    parse_yaml,
)
from inventory.errors import Problem

__all__ = [
    "KeyPath",
    "SourceFile",
    "format_key_path",
    "problems_from_validation_error",
    "suggest",
]

KeyPath = Sequence[str | int]


def format_key_path(path: KeyPath) -> str:
    """Dotted key path as shown to users: ``groups.canary.rollout.waves[2]``."""
    out = ""
    for element in path:
        if isinstance(element, int):
            out += f"[{element}]"
        else:
            out += f".{element}" if out else str(element)
    return out


def suggest(word: str, choices: Sequence[str]) -> str:
    """'; did you mean X?' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass
class SourceFile:
    """One input file: where it is, its bytes, and the YAML text parsed from them."""

    path: Path
    rel: Path
    data: bytes
    text: bytes
    _node: Node | None = field(default=None, repr=False)
    _composed: bool = field(default=False, repr=False)
    _index: dict[int, dict[str, tuple[Node, Node]]] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, path: Path, root: Path) -> SourceFile:
        """Read a file; the text is its bytes (templates are rendered by the caller)."""
        data = path.read_bytes()
        try:
            rel = path.relative_to(root)
        except ValueError:
            rel = path
        return cls(path=path, rel=rel, data=data, text=data)

    def parse(self) -> tuple[Any, list[Problem]]:
        """Parse the text as one YAML document; a syntax problem is returned, not raised."""
        try:
            return parse_yaml(self.text), []
        except YamlSyntaxError as e:
            if e.duplicate_key and e.line is not None and e.column is not None:
                path = key_path_at(self._composed_root(), e.line, e.column)
                key_path = format_key_path(path) if path else ""
                return None, [Problem(self.rel, e.line, e.column, key_path, e.message)]
            return None, [Problem(self.rel, e.line, e.column, "", f"YAML: {e.message}")]

    def find(self, path: KeyPath) -> Found:
        """Where ``path`` sits in this file (composed on first use)."""
        return locate(self._composed_root(), path, self._index)

    def _composed_root(self) -> Node | None:
        if not self._composed:
            self._node = compose(self.text)
            self._composed = True
        return self._node

    def problem(self, path: KeyPath, message: str, *, at_value: bool = False) -> Problem:
        """A Problem at ``path`` (its key, or its value when ``at_value``)."""
        found = self.find(path)
        pos: Position | None = found.value if at_value else found.best
        if found.depth < len(path):
            pos = found.value
        return Problem(
            self.rel,
            pos.line if pos else None,
            pos.column if pos else None,
            format_key_path(path),
            message,
        )

    def where(self, path: KeyPath) -> str:
        """``file:line`` of ``path``, for messages naming another place."""
        found = self.find(path)
        pos = found.best
        return f"{self.rel.as_posix()}:{pos.line}" if pos else self.rel.as_posix()


# -- validation errors -> problems -------------------------------------------------------

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "datetime_type": "a date and time such as 2027-01-01T00:00:00Z",
    "datetime_parsing": "a date and time such as 2027-01-01T00:00:00Z",
    "datetime_from_date_parsing": "a date and time such as 2027-01-01T00:00:00Z",
    "none_required": "nothing (null)",
}


def problems_from_validation_error(
    source: SourceFile,
    error: ValidationError,
    data: Any,
    model: type[BaseModel],
    prefix: KeyPath = (),
) -> list[Problem]:
    """One Problem per wrong place in ``data`` (validated against ``model``).

    Errors of a union's alternatives at one place are merged into one message;
    unknown keys get the allowed keys and a "did you mean" suggestion.
    """
    grouped: dict[tuple[str | int, ...], list[dict[str, Any]]] = {}
    branch_only: dict[tuple[str | int, ...], bool] = {}
    for err in error.errors(include_url=False):
        loc = _data_path(data, err["loc"], keep_last=err["type"] == "missing")
        grouped.setdefault(loc, []).append(dict(err))
        from_branch = len(err["loc"]) > len(loc) and err["type"] != "missing"
        branch_only[loc] = branch_only.get(loc, True) and from_branch
    ancestors = {loc[:i] for loc in grouped for i in range(len(loc))}
    problems = []
    for loc, errs in grouped.items():
        # A union alternative of the wrong shape (a string where the value is a
        # list) is noise when another alternative got further into the value.
        if branch_only[loc] and loc in ancestors:
            continue
        full = (*prefix, *loc)
        problems.append(_problem_for(source, full, loc, errs, model))
    return problems


def _data_path(data: Any, loc: Sequence[str | int], *, keep_last: bool) -> tuple[str | int, ...]:
    """The part of pydantic's location that names keys in the data (drops union tags)."""
    out: list[str | int] = []
    current = data
    for i, element in enumerate(loc):
        in_dict = isinstance(current, dict) and element in current
        in_list = isinstance(current, list) and isinstance(element, int) and element < len(current)
        if in_dict or in_list:
            out.append(element)
            current = current[element]
        elif keep_last and i == len(loc) - 1:
            out.append(element)
        elif isinstance(current, dict) and element == "[key]":
            break
    return tuple(out)


def _problem_for(
    source: SourceFile,
    full: tuple[str | int, ...],
    loc: tuple[str | int, ...],
    errs: list[dict[str, Any]],
    model: type[BaseModel],
) -> Problem:
    types_ = [e["type"] for e in errs]
    first = errs[0]
    if "extra_forbidden" in types_:
        key = str(loc[-1]) if loc else ""
        allowed = _allowed_keys(model, loc[:-1])
        hint = suggest(key, allowed)
        listing = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return source.problem(full, f"unknown key {key!r}{hint}{listing}")
    if "missing" in types_:
        key = str(loc[-1]) if loc else ""
        return source.problem(full, f"required key {key!r} is missing")
    found = source.find(full)
    raw = found.value.raw if found.value and found.depth == len(full) else None
    shown = _describe(first.get("input"), raw)
    for err in errs:
        if err["type"] in ("enum", "literal_error"):
            expected = _enum_values(model, loc) or str(err.get("ctx", {}).get("expected", ""))
            options = expected.split(" | ") if " | " in expected else []
            value = str(err.get("input"))
            hint = suggest(value, options) if options else ""
            also = " (or a list of them)" if len(errs) > 1 else ""
            return source.problem(
                full, f"found {shown}; allowed: {expected}{also}{hint}", at_value=True
            )
    for err in errs:
        if err["type"] == "value_error":
            message = str(err["msg"]).removeprefix("Value error, ")
            if "as a number, not a version" in message and raw is not None:
                message = (
                    f"found the number {raw} (YAML reads it as {err.get('input')!r}), "
                    f"not a version; quote it: '{raw}'"
                )
            return source.problem(full, message, at_value=True)
    expected_any = [_EXPECTED[t] for t in types_ if t in _EXPECTED]
    if expected_any:
        wanted = " or ".join(dict.fromkeys(expected_any))
        return source.problem(full, f"expected {wanted}, found {shown}", at_value=True)
    message = str(first["msg"])
    message = message[0].lower() + message[1:] if message else message
    message = message.replace("input should be", "must be")
    return source.problem(full, f"{message}, found {shown}", at_value=True)


def _describe(value: Any, raw: str | None) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if raw is not None and isinstance(value, int | float):
        return raw
    return repr(value) if isinstance(value, str) else str(value)


def _unwrap(tp: Any) -> list[Any]:
    """The alternatives of a type: Optional/Union members, Annotated stripped."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        out: list[Any] = []
        for arg in typing.get_args(tp):
            out.extend(_unwrap(arg))
        return out
    return [tp]


def _step(tp: Any, element: str | int) -> Any:
    for alt in _unwrap(tp):
        origin = typing.get_origin(alt)
        if isinstance(alt, type) and issubclass(alt, BaseModel) and isinstance(element, str):
            info = alt.model_fields.get(element)
            if info is not None:
                return info.annotation
        elif origin is dict and isinstance(element, str):
            return typing.get_args(alt)[1]
        elif origin is list and isinstance(element, int):
            return typing.get_args(alt)[0]
    return None


def _type_at(model: type[BaseModel], path: Sequence[str | int]) -> Any:
    tp: Any = model
    for element in path:
        tp = _step(tp, element)
        if tp is None:
            return None
    return tp


def _allowed_keys(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    tp = _type_at(model, path)
    if tp is None:
        return []
    for alt in _unwrap(tp):
        if isinstance(alt, type) and issubclass(alt, BaseModel):
            return list(alt.model_fields)
    return []


def _enum_values(model: type[BaseModel], path: Sequence[str | int]) -> str:
    tp = _type_at(model, path)
    if tp is None:
        return ""
    candidates = list(_unwrap(tp))
    for alt in list(candidates):
        if typing.get_origin(alt) is list:
            candidates.extend(_unwrap(typing.get_args(alt)[0]))
    for alt in candidates:
        if isinstance(alt, type) and issubclass(alt, Enum):
            return " | ".join(str(m.value) for m in alt)
        if typing.get_origin(alt) is typing.Literal:
            return " | ".join(str(a) for a in typing.get_args(alt))
    return ""
