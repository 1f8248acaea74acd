"""Names and numbers that one platform reads differently from another are refused in release
manifests, versions and durations, with a message naming what is wrong."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from fleetbase.duration import parse_duration
from fleetbase.version import Version, VersionError
from states.manifest import FileEntry, PlatformRelease
from states.protocol import CheckinRequest

SHA = "a" * 64


def _entry(path: str, **kw: Any) -> FileEntry:
    return FileEntry(path=path, sha256=SHA, size=1, source="x", **kw)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("CON", "reserved device name"),
        ("logs/nul.txt", "reserved device name"),
        ("bin/Com1.log", "reserved device name"),
        ("lpt9", "reserved device name"),
        ("aux.tar.gz", "reserved device name"),
        ("core/agent.py:hidden", "NTFS stream"),
        ("core./agent.py", "ends with a dot or a space"),
        ("core/agent.py.", "ends with a dot or a space"),
        ("core /agent.py", "ends with a dot or a space"),
        ("core/a<b>.py", "not allowed in Windows file names"),
        ("core/tab\there", "control character"),
    ],
)
def test_paths_other_platforms_read_differently_are_refused(path: str, why: str) -> None:
    """Windows device names (any case, any extension), streams, trailing dots and spaces,
    forbidden characters: refused with the reason."""
    with pytest.raises(ValidationError, match=why):
        _entry(path)


@pytest.mark.parametrize("path", ["console.py", "nul_sink.py", "com10.txt", "a.b/c.d", "ĉon"])
def test_ordinary_names_near_reserved_ones_are_accepted(path: str) -> None:
    """Names that only start like a device name stay allowed."""
    assert _entry(path).path == path


@pytest.mark.parametrize(
    ("a", "b"),
    [("caf\u00e9.py", "cafe\u0301.py"), ("Agent.py", "agent.py"), ("STRASSE", "straße")],
    ids=["nfc-nfd", "case", "casefold"],
)
def test_normalisation_twins_in_one_manifest_are_refused(a: str, b: str) -> None:
    """Two paths that are one file on macOS or Windows cannot both be listed."""
    with pytest.raises(ValidationError, match="same file on Windows or macOS"):
        PlatformRelease(files=[_entry(a), _entry(b)])


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o1777, "6755", 0o10000])
def test_setuid_setgid_and_sticky_modes_are_refused(mode: int | str) -> None:
    """Only permission bits 0000-0777 are accepted in a file's mode."""
    with pytest.raises(ValidationError, match="allowed are permission bits 0000 to 0777"):
        _entry("bin/agent", mode=mode)
    assert _entry("bin/agent", mode=0o755).mode == 0o755


@pytest.mark.parametrize(
    "text", ["3.0.1\n", "3.0.1 ", "\uff13.0.1", "3.0.\u00b2", "\u0663.0.1", "3.0.1-\u00b2"]
)
def test_versions_with_trailing_newline_or_non_ascii_digits_are_refused(text: str) -> None:
    """'3.0.1\\n', fullwidth, superscript and Arabic-Indic digits are not versions."""
    with pytest.raises(VersionError):
        Version.parse(text)
    report = {"platform": "linux", "agent_version": "3.0.1", "runtime_version": "1"}
    assert CheckinRequest.model_validate(report).agent_version == Version("3.0.1")
    with pytest.raises(ValidationError):
        CheckinRequest.model_validate({**report, "agent_version": text})


@pytest.mark.parametrize("text", ["\uff13\uff10s", "1e400", "99999999999999w"])
def test_durations_refuse_non_ascii_digits_and_overflow(text: str) -> None:
    """Fullwidth digits and durations beyond timedelta's range are a ValueError, not a crash."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(float(text) if text == "1e400" else text)
