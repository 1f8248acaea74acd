"""What a release needs on a device (``requires:`` in a release manifest), and the types of
the facts devices report to be checked against it (``states.protocol.CheckinRequest``).

A requirement is a version specifier as Python packaging writes them (PEP 440):
one or more comma-separated clauses such as ``>=0.2.0``, ``>=3.11,<3.14``,
``==3.0.*`` or ``!=1.1.0``, all of which must hold. The engine checks them
(``engine.requires``); devices only report their facts.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from fleetbase.platform import Platform

__all__ = [
    "COMPONENT_NAME_PATTERN",
    "MAX_COMPONENTS",
    "ComponentName",
    "FactVersion",
    "Requirements",
    "SpecifierText",
    "check_specifier",
]

#: Names of components a release may require and a device may report, e.g. openssl, glibc.
COMPONENT_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,49}$"
#: Components one device may report (and one release may require).
MAX_COMPONENTS = 32

_ALLOWED = (
    "comma-separated clauses of an operator (>=, <=, >, <, ==, !=, ~=) and a version, "
    "e.g. '>=0.2.0' or '>=3.11,<3.14'"
)


def check_specifier(text: str) -> str:
    """Return ``text`` when it is a version specifier (see the module docstring); raise
    ValueError saying what is allowed otherwise."""
    # Imported here: the engine validates requirements, a device never does, and the
    # device runtime does not install packaging (it parses served manifests leniently).
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    if not text.strip():
        raise ValueError(f"an empty requirement; expected {_ALLOWED}")
    try:
        SpecifierSet(text)
    except InvalidSpecifier as e:
        raise ValueError(f"{text!r} is not a version requirement: expected {_ALLOWED}") from e
    return text


def _not_a_number(value: object) -> object:
    """Refuse what YAML read as a number (``python: 3.11``), saying how to write it."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f"YAML read {value!r} as a number, not a requirement; write it in quotes with "
            f"an operator, e.g. '>={value}'"
        )
    return value


#: A version specifier, validated (``check_specifier``).
SpecifierText = Annotated[
    str,
    BeforeValidator(_not_a_number),
    Field(max_length=200),
    AfterValidator(check_specifier),
]
ComponentName = Annotated[str, Field(pattern=COMPONENT_NAME_PATTERN)]
#: A version as a device reports it (free text, compared by the engine).
FactVersion = Annotated[str, Field(min_length=1, max_length=100)]


class Requirements(BaseModel):
    """``requires:`` of a release: every key given must hold on a device before it gets it.

    - ``runtime``: the agent runtime's version (``agent-runtime --version``);
    - ``python``: the version of the Python the runtime runs on;
    - ``os``: per platform, the operating system version the runtime reports:
      linux the kernel release (``uname -r``, e.g. 6.1.0), windows the build
      version (e.g. 10.0.19045), macos the product version (e.g. 14.2.1);
      a platform not listed has no OS requirement;
    - ``components``: other software by name, as the runtime reports it
      (``openssl``: the OpenSSL the runtime's Python links; ``glibc`` on Linux).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: SpecifierText | None = Field(default=None, description="e.g. '>=0.2.0'")
    python: SpecifierText | None = Field(default=None, description="e.g. '>=3.11,<3.14'")
    os: dict[Platform, SpecifierText] = Field(
        default_factory=dict, description="e.g. {linux: '>=5.10', windows: '>=10.0.19041'}"
    )
    components: dict[ComponentName, SpecifierText] = Field(
        default_factory=dict, max_length=MAX_COMPONENTS, description="e.g. {openssl: '>=3.0'}"
    )
