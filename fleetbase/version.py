"""Release versions that compare as versions: 3.0.10 > 3.0.9, 3.0.0-rc1 < 3.0.0."""

from __future__ import annotations

import re
from functools import total_ordering
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

__all__ = ["VERSION_PATTERN", "Version", "VersionError"]

# ASCII digits only (``\d`` would take fullwidth or superscript digits), matched with
# fullmatch: "$" would also accept a trailing newline.
_VERSION_RE = re.compile(
    r"v?(?P<core>[0-9]+(?:\.[0-9]+)*)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?",
    re.ASCII,
)
#: The version syntax for JSON Schema (OpenAPI, `engine schema`): what parse accepts.
VERSION_PATTERN = "^" + re.sub(r"\?P<\w+>", "", _VERSION_RE.pattern) + "$"
#: Longest version text accepted (also bounds the numbers parsed from it).
_MAX_LENGTH = 100


class VersionError(ValueError):
    """A string that is not a release version."""


@total_ordering
class Version:
    """A dotted release version with an optional pre-release and build suffix.

    Ordering follows SemVer 2.0 precedence generalised to any number of numeric
    components (missing components count as 0, so 3.0 == 3.0.0); build metadata
    is kept in the text but ignored for ordering.
    """

    __slots__ = ("_key", "text")

    def __init__(self, text: str) -> None:
        m = _VERSION_RE.fullmatch(text) if len(text) <= _MAX_LENGTH else None
        if m is None:
            raise VersionError(
                f"{text!r} is not a version: expected numbers separated by dots, "
                "optionally followed by -prerelease and +build (e.g. 3.0.1, 3.1.0-rc1)"
            )
        self.text = text
        core = [int(p) for p in m.group("core").split(".")]
        while len(core) > 1 and core[-1] == 0:
            core.pop()
        pre = m.group("pre")
        pre_key: tuple[Any, ...]
        if pre is None:
            pre_key = (1,)  # a release sorts after all of its pre-releases
        else:
            pre_key = (
                0,
                tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")),
            )
        self._key: tuple[Any, ...] = (tuple(core), pre_key)

    @property
    def is_prerelease(self) -> bool:
        """True for versions with a -prerelease suffix."""
        return bool(self._key[1][0] == 0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key == other._key

    def __lt__(self, other: Version) -> bool:
        return self._key < other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Version({self.text!r})"

    @classmethod
    def parse(cls, value: object) -> Version:
        """Parse a version from text; numbers (YAML's 3.1) are refused with advice."""
        if isinstance(value, Version):
            return value
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise VersionError(f"expected a version string, found {type(value).__name__}")
        if isinstance(value, float | int):
            raise VersionError(
                f"YAML read {value!r} as a number, not a version; quote it "
                f"(e.g. '{value}') so that 3.10 does not become 3.1"
            )
        return cls(value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        text = core_schema.str_schema(pattern=VERSION_PATTERN, max_length=_MAX_LENGTH)
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(str, return_schema=text),
            json_schema_input_schema=text,
        )
