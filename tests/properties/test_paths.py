"""Manifest path validation as properties: whatever the text, the answer is a clear refusal or
a path that is one and the same file name on Linux, macOS and Windows."""

from __future__ import annotations

import unicodedata
from pathlib import PurePosixPath
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from states.manifest import FileEntry, PlatformRelease, path_key, validate_relative_path

SHA = "a" * 64
RESERVED = ["CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
            *(f"LPT{i}" for i in range(1, 10))]  # fmt: skip

component = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12)
paths = st.lists(component, min_size=1, max_size=4).map("/".join)


def _entry(path: str, **kw: Any) -> FileEntry:
    return FileEntry(path=path, sha256=SHA, size=1, source="x", **kw)


@given(paths)
@example("nul.txt")
@example("a/agent.py:stream")
@example("dir./x")
@example("x ")
def test_accepted_paths_are_plain_names_inside_the_root(path: str) -> None:
    """Any text is either refused with ValueError or is a relative path of plain names:
    no '..', no drive, no stream, no trailing dot or space, no Windows device name."""
    try:
        validate_relative_path(path)
    except ValueError:
        return
    parts = path.split("/")
    joined = PurePosixPath("/root", path)
    assert joined.is_relative_to("/root") and ".." not in parts and "." not in parts
    for part in parts:
        assert part and not part.endswith((".", " ")) and ":" not in part
        assert "\\" not in part and all(ord(c) >= 32 for c in part)
        assert part.split(".", 1)[0].rstrip(" ").upper() not in RESERVED


@given(
    st.sampled_from(RESERVED),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.sampled_from(["", ".txt", ".tar.gz", " .log", "."]),
    st.sampled_from(["", "bin/", "a/b/"]),
)
def test_windows_device_names_refused_in_any_case_and_with_any_extension(
    name: str, upper: list[bool], ext: str, parent: str
) -> None:
    """CON, nul.txt, Com1.log, lpt9 ... are refused wherever they appear in the path."""
    cased = "".join(c.upper() if up else c.lower() for c, up in zip(name, upper * 2, strict=False))
    with pytest.raises(ValueError):
        validate_relative_path(parent + cased + ext)


@given(st.text(alphabet="aAeEéÉoOåÅßẞKk", min_size=1, max_size=8))
def test_normalisation_and_case_twins_cannot_share_a_manifest(name: str) -> None:
    """Two paths equal after NFC and case folding (one file on macOS or Windows) are refused
    together; two distinct names are accepted."""
    twin = unicodedata.normalize("NFD", name).swapcase()
    files = [_entry(name + ".py"), _entry(twin + ".py")]
    if path_key(name) == path_key(twin):
        with pytest.raises(ValidationError, match="listed twice"):
            PlatformRelease(files=files)
    else:
        assert len(PlatformRelease(files=files).files) == 2


@given(st.integers(min_value=-(2**16), max_value=2**16))
def test_mode_is_permission_bits_only(mode: int) -> None:
    """0..0777 is accepted; setuid, setgid, sticky and anything outside is refused."""
    if 0 <= mode <= 0o777:
        assert _entry("a", mode=mode).mode == mode
    else:
        with pytest.raises(ValidationError, match="mode"):
            _entry("a", mode=mode)
