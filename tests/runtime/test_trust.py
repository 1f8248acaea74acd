"""Trust decisions on manifest bytes, without IO: signature, expiry, serial, platform."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from agent_runtime.errors import (
    DowngradeError,
    ExpiredManifestError,
    ManifestError,
    SignatureInvalidError,
)
from agent_runtime.trust import TrustContext, check_release, parse_signed
from engine.signing import generate_key, public_key_text, sign
from fleetbase.platform import Platform
from fleetbase.version import Version
from states.keyring import KeyRing
from states.signing import raw_trusted_keys

KEY = generate_key()
KEYS = KeyRing.pinned(raw_trusted_keys([public_key_text(KEY.public_key())]))
NOW = datetime(2026, 11, 27, tzinfo=UTC)
SHA = "a" * 64


def _doc(version: str = "3.0.1", serial: int = 5, **kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": version,
        "serial": serial,
        "expires": (NOW + timedelta(days=1)).isoformat(),
        "platforms": {
            "linux": {"files": [{"path": "a.py", "sha256": SHA, "size": 1, "source": "x/a.py"}]}
        },
    }
    doc.update(kw)
    return doc


def _signed(doc: dict[str, Any]) -> tuple[bytes, bytes]:
    data = yaml.safe_dump(doc).encode()
    return data, sign(data, [KEY])


def _ctx(highest: int = 0, installed: dict[str, Any] | None = None) -> TrustContext:
    m = parse_signed(*_signed(installed), KEYS, "installed") if installed else None
    return TrustContext(KEYS, Platform.LINUX, NOW, highest, m)


def _check(doc: dict[str, Any], ctx: TrustContext, **kw: Any) -> Any:
    return check_release(*_signed(doc), desired=Version("3.0.1"), ctx=ctx, where="m", **kw)


def test_good_release_passes() -> None:
    """A signed, fresh, higher release for this platform is accepted with its files."""
    manifest, files = _check(_doc(), _ctx(highest=4))
    assert manifest.serial == 5 and files.files[0].path == "a.py"


def test_tampered_bytes_fail_signature() -> None:
    """Bytes changed after signing are refused."""
    data, sig = _signed(_doc())
    with pytest.raises(SignatureInvalidError, match="does not match"):
        check_release(data + b"#", sig, desired=Version("3.0.1"), ctx=_ctx(), where="m")


def test_unknown_key_refused() -> None:
    """A signature by a key that is not pinned is refused."""
    data = yaml.safe_dump(_doc()).encode()
    with pytest.raises(SignatureInvalidError, match="unknown key"):
        check_release(
            data, sign(data, [generate_key()]), desired=Version("3.0.1"), ctx=_ctx(), where="m"
        )


def test_expired_refused_unless_local_restore() -> None:
    """An expired manifest is refused, except for the device's own backup."""
    doc = _doc(expires=(NOW - timedelta(seconds=1)).isoformat())
    with pytest.raises(ExpiredManifestError, match="expired"):
        _check(doc, _ctx())
    assert _check(doc, _ctx(), local_restore=True)[0].version == Version("3.0.1")


def test_lower_serial_refused_unless_authorised() -> None:
    """Below the highest serial: refused unless the installed release's rollback_to names it."""
    with pytest.raises(DowngradeError, match="below the highest serial seen"):
        _check(_doc(serial=3), _ctx(highest=6, installed=_doc("3.0.2", 6)))
    authorised = _ctx(highest=6, installed=_doc("3.0.2", 6, rollback_to=["3.0.1"]))
    assert _check(_doc(serial=3), authorised)[0].serial == 3


def test_version_and_platform_must_match() -> None:
    """A manifest for another version, or without this platform, is refused."""
    with pytest.raises(ManifestError, match=r"plan wants 3\.0\.1"):
        _check(_doc(version="3.0.9"), _ctx())
    doc = _doc()
    doc["platforms"] = {"windows": doc["platforms"]["linux"]}
    with pytest.raises(ManifestError, match="no files for platform linux"):
        _check(doc, _ctx())


@pytest.mark.parametrize("path", ["../x.py", "/etc/passwd", "a/../../b", "C:/x"])
def test_paths_leaving_the_root_refused(path: str) -> None:
    """A signed manifest with a path outside the agent root is refused."""
    doc = _doc()
    doc["platforms"]["linux"]["files"][0]["path"] = path
    with pytest.raises(ManifestError, match="path"):
        _check(doc, _ctx())


def test_non_mapping_refused() -> None:
    """Signed YAML that is not a mapping is refused."""
    data = b"[1, 2]\n"
    with pytest.raises(ManifestError, match="must be a mapping"):
        parse_signed(data, sign(data, [KEY]), KEYS, "m")
