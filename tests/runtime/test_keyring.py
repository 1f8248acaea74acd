"""Threshold signatures, the root-signed keys document and weak keys, without IO."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent_runtime._keystore import KeyStore
from agent_runtime.config import DeviceConfig
from engine.signing import add_signatures, generate_key, load_public_key, public_key_text, sign
from states import _ed25519
from states.keyring import (
    KeyRing,
    KeysDocument,
    KeysDocumentError,
    RootOfTrust,
    accept_keys_document,
)
from states.signing import SignatureError, raw_public_key, raw_trusted_keys, verify_raw

NOW = datetime(2026, 11, 27, tzinfo=UTC)
DATA = b"version: 3.0.1\nserial: 2\n"
ROOT, A, B, C = (generate_key() for _ in range(4))


def _text(key: object) -> str:
    return public_key_text(key.public_key())  # type: ignore[attr-defined]


def _doc(*keys: object, version: int = 1, threshold: int = 1, **kw: object) -> KeysDocument:
    entries = {}
    for k in keys:
        raw = raw_public_key(_text(k))
        entries[next(iter(raw_trusted_keys([_text(k)])))] = {"public": _text(k)}
        assert len(raw) == 32
    fields: dict[str, object] = {
        "version": version,
        "expires": NOW + timedelta(days=30),
        "threshold": threshold,
        "keys": entries,
    }
    fields.update(kw)
    return KeysDocument.model_validate(fields)


def _signed(doc: KeysDocument, *signers: object) -> tuple[bytes, bytes]:
    data = doc.to_bytes()
    return data, sign(data, list(signers or [ROOT]))  # type: ignore[arg-type]


ROOT_TRUST = RootOfTrust.from_texts([_text(ROOT)])


# -- every entry tried, thresholds ---------------------------------------------------------


def test_stale_entry_first_does_not_hide_a_valid_one() -> None:
    """A signature file whose first trusted entry is stale (old bytes) still verifies by its
    second, valid entry (today only the first trusted entry was checked)."""
    stale = json.loads(sign(b"an older manifest", [A]))["signatures"]
    good = json.loads(sign(DATA, [B]))["signatures"]
    doc = json.dumps({"signatures": stale + good}).encode()
    trusted = raw_trusted_keys([_text(A), _text(B)])
    assert verify_raw(DATA, doc, trusted) == [next(iter(raw_trusted_keys([_text(B)])))]


def test_threshold_counts_distinct_valid_keys_only() -> None:
    """Two required: one key signing twice does not count twice; two keys do."""
    trusted = raw_trusted_keys([_text(A), _text(B), _text(C)])
    once = json.loads(sign(DATA, [A]))["signatures"]
    doubled = json.dumps({"signatures": once + once}).encode()
    with pytest.raises(SignatureError, match="signed by 1 of the 2 trusted keys required"):
        verify_raw(DATA, doubled, trusted, threshold=2)
    assert len(verify_raw(DATA, sign(DATA, [A, B]), trusted, threshold=2)) == 2


def test_threshold_ignores_untrusted_and_broken_signatures() -> None:
    """An unknown key's valid signature and a trusted key's bad one add nothing."""
    trusted = raw_trusted_keys([_text(A), _text(B)])
    good_a = json.loads(sign(DATA, [A]))["signatures"]
    bad_b = json.loads(sign(b"other bytes", [B]))["signatures"]
    unknown = json.loads(sign(DATA, [C]))["signatures"]
    doc = json.dumps({"signatures": good_a + bad_b + unknown}).encode()
    with pytest.raises(SignatureError, match="does not match"):
        verify_raw(DATA, doc, trusted, threshold=2)


def test_add_signatures_keeps_other_holders_and_replaces_own() -> None:
    """Signing in turn collects both signatures; re-signing replaces the signer's entry."""
    first = sign(DATA, [A])
    both = add_signatures(DATA, first, [B])
    again = add_signatures(DATA, both, [B])
    assert len(json.loads(again)["signatures"]) == 2
    assert len(verify_raw(DATA, again, raw_trusted_keys([_text(A), _text(B)]), 2)) == 2


# -- weak and malformed keys ------------------------------------------------------------------


WEAK = {
    "all zero (order 4)": bytes(32),
    "identity (order 1)": b"\x01" + bytes(31),
    "order 8": bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    "order 2 (p-1)": bytes([0xEC] + [0xFF] * 30 + [0x7F]),
    "non-canonical (p+1)": bytes([0xEE] + [0xFF] * 30 + [0x7F]),
}


@pytest.mark.parametrize("raw", list(WEAK.values()), ids=list(WEAK))
def test_small_order_and_non_canonical_keys_are_refused(raw: bytes) -> None:
    """Small-order points and non-canonical encodings cannot be pinned or listed."""
    text = "ed25519:" + base64.b64encode(raw).decode()
    with pytest.raises(SignatureError, match="refused public key"):
        raw_public_key(text)
    with pytest.raises(SignatureError):
        load_public_key(text)


def test_all_zero_key_lets_no_forgery_through() -> None:
    """With the all-zero key, the signature (identity point, 0) verified for about one
    message in four before; now no message verifies."""
    forged = b"\x01" + bytes(31) + bytes(32)
    accepted = [m for m in range(64) if _ed25519.verify(bytes(32), forged, b"m%d" % m)]
    assert accepted == []


def test_config_refuses_an_all_zero_trusted_key(tmp_path: Path) -> None:
    """A device config pinning the all-zero key is refused with the field named."""
    with pytest.raises(ValueError, match=r"trusted_keys\[0\]: refused public key"):
        DeviceConfig.model_validate(
            {
                "device": "d1",
                "agent_root": str(tmp_path),
                "state_dir": str(tmp_path / "s"),
                "trusted_keys": ["ed25519:" + base64.b64encode(bytes(32)).decode()],
            }
        )


# -- the keys document --------------------------------------------------------------------------


def test_keys_document_accepted_and_ring_has_its_threshold() -> None:
    """A root-signed, fresh document yields its listed keys with its threshold."""
    doc = accept_keys_document(*_signed(_doc(A, B, threshold=2)), ROOT_TRUST, NOW, None)
    ring = doc.ring(NOW)
    assert (len(ring.keys), ring.threshold) == (2, 2)
    assert len(ring.verify(DATA, sign(DATA, [A, B]))) == 2
    with pytest.raises(SignatureError, match="1 of the 2"):
        ring.verify(DATA, sign(DATA, [A]))


def test_keys_document_not_signed_by_root_refused() -> None:
    """A document signed by a release key (not the root) is refused."""
    with pytest.raises(KeysDocumentError, match="not signed by the root"):
        accept_keys_document(*_signed(_doc(A), A), ROOT_TRUST, NOW, None)


def test_root_threshold_needs_distinct_root_keys() -> None:
    """With two root keys and threshold 2, one root signature is not enough."""
    root2 = generate_key()
    trust = RootOfTrust.from_texts([_text(ROOT), _text(root2)], 2)
    with pytest.raises(KeysDocumentError, match="1 of the 2"):
        accept_keys_document(*_signed(_doc(A)), trust, NOW, None)
    assert accept_keys_document(*_signed(_doc(A), ROOT, root2), trust, NOW, None).version == 1


def test_keys_document_rollback_and_same_version_change_refused() -> None:
    """An older version, or the same version with other keys, is refused."""
    current = _doc(B, version=3)
    with pytest.raises(KeysDocumentError, match="older than version 3"):
        accept_keys_document(*_signed(_doc(A, version=2)), ROOT_TRUST, NOW, current)
    with pytest.raises(KeysDocumentError, match="needs a new version"):
        accept_keys_document(*_signed(_doc(A, version=3)), ROOT_TRUST, NOW, current)


def test_expired_document_and_expired_key_trust_nothing() -> None:
    """An expired document is refused; a listed key past its own expiry does not count."""
    old = _doc(A, expires=NOW - timedelta(seconds=1))
    with pytest.raises(KeysDocumentError, match="expired"):
        accept_keys_document(*_signed(old), ROOT_TRUST, NOW, None)
    with pytest.raises(SignatureError, match="expired"):
        old.ring(NOW).verify(DATA, sign(DATA, [A]))
    doc = _doc(A, B)
    keys = {k: v.model_copy(update={"expires": NOW}) if v.public == _text(A) else v
            for k, v in doc.keys.items()}  # fmt: skip
    ring = doc.model_copy(update={"keys": keys}).ring(NOW)
    with pytest.raises(SignatureError, match="unknown key"):
        ring.verify(DATA, sign(DATA, [A]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": 3}, "threshold 3 is more than"),
        ({"revoked": ["KEEP"]}, "both listed and revoked"),
        ({"keys": {"0000000000000000": {"public": _text(A)}}}, "the id of this public key"),
        ({"expires": "2027-01-01T00:00:00"}, "time zone"),
    ],
)
def test_inconsistent_documents_are_refused(change: dict[str, object], message: str) -> None:
    """Impossible thresholds, keys both listed and revoked, wrong ids, naive times."""
    base = json.loads(_doc(A, B).to_bytes())
    if change.get("revoked") == ["KEEP"]:
        change = {"revoked": [next(iter(base["keys"]))]}
    base.update(change)
    with pytest.raises(KeysDocumentError, match=message):
        KeysDocument.parse(json.dumps(base).encode())


# -- the device's key store -----------------------------------------------------------------


def _config(tmp_path: Path, **kw: object) -> DeviceConfig:
    return DeviceConfig.model_validate(
        {"device": "d1", "agent_root": str(tmp_path / "a"), "state_dir": str(tmp_path / "s"), **kw}
    )


def test_legacy_config_is_threshold_one_over_trusted_keys(tmp_path: Path) -> None:
    """trusted_keys and no root keys: any one pinned key suffices, as before."""
    store = KeyStore(_config(tmp_path, trusted_keys=[_text(A), _text(B)]))
    ring = store.ring(NOW)
    assert (ring.threshold, len(ring.keys), ring.origin) == (1, 2, "trusted_keys")
    assert store.offer(*_signed(_doc(C)), NOW) is False  # no root: nothing to accept
    assert ring == store.ring(NOW)


def test_root_config_switches_from_pinned_keys_to_the_document(tmp_path: Path) -> None:
    """With root keys, trusted_keys count until a document is accepted; then only its keys,
    and the accepted document survives a restart."""
    cfg = _config(tmp_path, trusted_keys=[_text(A)], root_keys=[_text(ROOT)])
    store = KeyStore(cfg)
    assert store.ring(NOW).keys == raw_trusted_keys([_text(A)])
    assert store.offer(*_signed(_doc(B, version=2)), NOW) is True
    assert store.ring(NOW).keys == raw_trusted_keys([_text(B)])
    again = KeyStore(cfg)
    assert again.ring(NOW).origin == "keys document version 2"
    with pytest.raises(KeysDocumentError, match="older than version 2"):
        again.offer(*_signed(_doc(A, version=1)), NOW)
    assert again.offer(*_signed(_doc(B, version=2)), NOW) is False  # the same: kept as is


def test_root_only_config_trusts_nothing_before_a_document(tmp_path: Path) -> None:
    """Root keys and no trusted_keys: every release is refused until a document arrives."""
    ring = KeyStore(_config(tmp_path, root_keys=[_text(ROOT)])).ring(NOW)
    with pytest.raises(SignatureError, match="no keys document"):
        ring.verify(DATA, sign(DATA, [A]))


def test_config_without_any_key_is_refused(tmp_path: Path) -> None:
    """A config with neither root_keys nor trusted_keys is refused with advice."""
    with pytest.raises(ValueError, match="trusts no key"):
        _config(tmp_path)


def test_pinned_ring_matches_pinned_keys() -> None:
    """KeyRing.pinned is threshold one over the given keys."""
    keys = raw_trusted_keys([_text(A)])
    assert KeyRing.pinned(keys) == KeyRing(keys, 1, "trusted_keys")
