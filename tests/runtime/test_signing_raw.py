"""Raw-key signature checks (the runtime's path, without `cryptography`) decide exactly as the
key-object checks do, and a real converge never loads `cryptography`."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from engine.signing import (
    generate_key,
    load_public_key,
    public_key_text,
    sign,
    trusted_keys,
    verify,
)
from states import _ed25519
from states.signing import SignatureError, raw_public_key, raw_trusted_keys, verify_raw
from tests.harness.sandbox import DEVICE, Sandbox

REPO = Path(__file__).resolve().parents[2]
KEY = generate_key()
OTHER = generate_key()
TEXT = public_key_text(KEY.public_key())
DATA = b"version: 3.0.1\nserial: 2\n"


def _tamper_sig(doc: bytes) -> bytes:
    parsed = json.loads(doc)
    sig = bytearray(base64.b64decode(parsed["signatures"][0]["sig"]))
    sig[5] ^= 1
    parsed["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(parsed).encode()


def _renamed(doc: bytes, keyid: str) -> bytes:
    parsed = json.loads(doc)
    parsed["signatures"][0]["keyid"] = keyid
    return json.dumps(parsed).encode()


KEY_ID = next(iter(raw_trusted_keys([TEXT])))
CASES = [
    ("valid", DATA, sign(DATA, [KEY])),
    ("altered data", DATA + b"#", sign(DATA, [KEY])),
    ("altered signature", DATA, _tamper_sig(sign(DATA, [KEY]))),
    ("other key under the trusted id", DATA, _renamed(sign(DATA, [OTHER]), KEY_ID)),
    ("unknown key", DATA, sign(DATA, [OTHER])),
    ("malformed document", DATA, b"{not json"),
    ("empty list", DATA, b'{"signatures": []}'),
    ("signature not base64", DATA, _renamed(b'{"signatures": [{"keyid": "x", "sig": "@@"}]}',
                                              KEY_ID)),
    ("short signature", DATA, _renamed(b'{"signatures": [{"keyid": "x", "sig": "AAAA"}]}',
                                       KEY_ID)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "data", "doc"), CASES, ids=[c[0] for c in CASES])
def test_verify_raw_decides_and_words_like_verify(case: str, data: bytes, doc: bytes) -> None:
    """verify_raw accepts exactly what verify accepts and refuses with the same message."""
    expected: str | None
    try:
        expected = verify(data, doc, trusted_keys([TEXT]))
    except SignatureError as e:
        expected = f"refused: {e}"
    try:
        got: str | None = verify_raw(data, doc, raw_trusted_keys([TEXT]))[0]
    except SignatureError as e:
        got = f"refused: {e}"
    assert got == expected
    assert (case == "valid") == (not str(got).startswith("refused"))


def test_no_trusted_keys_refuses_everything() -> None:
    """With no pinned key every manifest is refused."""
    with pytest.raises(SignatureError, match="no trusted keys"):
        verify_raw(DATA, sign(DATA, [KEY]), {})


def test_both_backends_agree_on_rfc8032_vectors() -> None:
    """The libcrypto binding (used on this platform) and cryptography agree on valid and
    altered signatures; wrong lengths are invalid without reaching either."""
    assert _ed25519.backend() == "libcrypto"
    key, msg, sig = _ed25519._TEST_KEY, _ed25519._TEST_MSG, _ed25519._TEST_SIG
    for check in (_ed25519.verify, _ed25519._cryptography_verify):
        assert check(key, sig, msg) is True
        assert check(key, sig, msg + b"\x00") is False
        assert check(key, sig[:-1] + bytes([sig[-1] ^ 0x40]), msg) is False
        assert check(bytes(32), sig, msg) is False
    assert _ed25519.verify(key[:31], sig, msg) is False
    assert _ed25519.verify(key, sig[:63], msg) is False


def test_raw_public_key_reads_both_forms_like_load_public_key() -> None:
    """ed25519:<base64> and PEM give the raw bytes of the key load_public_key reads."""
    public = KEY.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    assert raw_public_key(TEXT) == raw_public_key(pem) == raw
    loaded = load_public_key(pem)
    assert loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw


@pytest.mark.parametrize(
    "text",
    [
        "ed25519:nope",
        "ed25519:" + base64.b64encode(bytes(31)).decode(),
        "rsa:AAAA",
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    ],
    ids=["bad base64", "31 bytes", "other prefix", "P-256 PEM"],
)
def test_malformed_keys_are_refused_by_both(text: str) -> None:
    """A key that load_public_key refuses is refused by raw_public_key too."""
    with pytest.raises(SignatureError):
        load_public_key(text)
    with pytest.raises(SignatureError):
        raw_public_key(text)


def test_converge_never_loads_cryptography(tmp_path: Path) -> None:
    """A real install (signature checked, files verified, agent started) in a fresh process
    leaves `cryptography` unloaded (it would keep ~8 MB resident)."""
    sb = Sandbox(base=tmp_path / "sb")
    try:
        sb.publish("3.0.0")
        sb.write_plan("3.0.0")
        code = (
            "import sys\n"
            "from pathlib import Path\n"
            "from agent_runtime.config import load_config\n"
            "from agent_runtime.converge import FilePlanSource, Runtime\n"
            "rt = Runtime(load_config(Path(sys.argv[1])), out=lambda _l: None)\n"
            "res = rt.converge_once(FilePlanSource(Path(sys.argv[2]), sys.argv[3]))\n"
            "print(res.result.value, 'cryptography' in sys.modules)\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("AGENT_RUNTIME_FAULT", None)
        run = subprocess.run(
            [sys.executable, "-c", code, str(sb.config_path), str(sb.plan_path), DEVICE],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["committed", "False"]
    finally:
        sb.stop_agent()
