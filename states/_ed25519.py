"""Ed25519 signature verification from raw bytes, without loading ``cryptography`` if possible.

The agent runtime idles under a 50 MB memory budget, and ``cryptography``
alone keeps about 8 MB resident (its Rust extension carries its own copy of
OpenSSL). Python's ``_hashlib`` already has the system's OpenSSL libcrypto
loaded, so verification calls its ``EVP_DigestVerify`` through ctypes. That
binding is checked on first use against RFC 8032 test vectors (a valid
signature must verify, altered data and an altered signature must not); when
the symbols are missing (OpenSSL < 1.1.1, LibreSSL) or the check fails,
``cryptography`` verifies instead when it is installed (it is not a dependency
of the runtime); without either, verifying raises ``BackendMissingError``, which
says what to install. On Windows a DLL's dependencies are not searched, so the
``libcrypto-*.dll`` beside ``_hashlib`` is bound directly. Either way only a
result of exactly 1 from OpenSSL counts as valid.

Neither backend refuses weak public keys: a key of small order (the all-zero
"placeholder" key among them) lets anyone forge a signature that verifies for
a fair share of messages. ``public_key_problem`` decodes the point itself and
refuses non-canonical encodings, points off the curve and points of small
order; ``verify`` refuses such keys before asking OpenSSL.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["BackendMissingError", "backend", "public_key_problem", "verify"]

#: OpenSSL's NID_ED25519 (EVP_PKEY_ED25519), stable since OpenSSL 1.1.1.
_NID_ED25519 = 1087

# RFC 8032, section 7.1, TEST 2 (one-byte message).
_TEST_KEY = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
_TEST_MSG = bytes.fromhex("72")
_TEST_SIG = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)

_Verifier = Callable[[bytes, bytes, bytes], bool]


class BackendMissingError(Exception):
    """Neither the system's libcrypto nor ``cryptography`` can verify ed25519 here."""


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is a valid ed25519 signature of ``data`` by the raw 32-byte
    ``public_key``; False for any other input (wrong lengths, invalid key or signature)."""
    if len(signature) != 64 or public_key_problem(public_key) is not None:
        return False
    return _backend()[1](public_key, signature, data)


# Curve25519 in twisted Edwards form (RFC 8032, section 5.1).
_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decode_point(raw: bytes) -> tuple[int, int] | None:
    """The affine point a 32-byte encoding names (RFC 8032, 5.1.3), or None if it names none
    or is not the canonical encoding."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P:
        return None
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x2 = u * pow(v, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, _P - 2, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P) % _P
    return x3, y3


def public_key_problem(public_key: bytes) -> str | None:
    """Why ``public_key`` must not be trusted (wrong length, not a canonical point on the
    curve, a point of small order), or None for a usable ed25519 public key."""
    if len(public_key) != 32:
        return f"an ed25519 public key is 32 bytes long, found {len(public_key)}"
    point = _decode_point(public_key)
    if point is None:
        return "not a point on the ed25519 curve (or not its canonical encoding)"
    for _ in range(3):  # the cofactor is 8: [8]A is the identity only for small-order A
        point = _add(point, point)
    if point == (0, 1):
        return "a weak key of small order (anyone can forge signatures that verify with it)"
    return None


def backend() -> str:
    """Which implementation verifies: ``libcrypto``, ``cryptography`` or ``none``."""
    return _backend()[0]


@functools.cache
def _backend() -> tuple[str, _Verifier]:
    """The implementation, chosen once per process (a race only chooses twice, alike)."""
    libcrypto = _libcrypto_verifier()
    if libcrypto is not None:
        return "libcrypto", libcrypto
    if importlib.util.find_spec("cryptography") is None:
        return "none", _missing
    return "cryptography", _cryptography_verify


def _missing(public_key: bytes, signature: bytes, data: bytes) -> bool:
    raise BackendMissingError(
        "cannot verify ed25519 signatures: this Python's OpenSSL has no usable ed25519 "
        "(1.1.1 or newer needed) and the cryptography package is not installed "
        "(pip install cryptography)"
    )


def _passes_self_test(check: _Verifier) -> bool:
    try:
        bad_sig = _TEST_SIG[:10] + bytes([_TEST_SIG[10] ^ 1]) + _TEST_SIG[11:]
        return (
            check(_TEST_KEY, _TEST_SIG, _TEST_MSG) is True
            and check(_TEST_KEY, _TEST_SIG, b"\x73") is False
            and check(_TEST_KEY, bad_sig, _TEST_MSG) is False
        )
    except Exception:  # any binding problem means: do not use it
        return False


def _cryptography_verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def _libcrypto_verifier() -> _Verifier | None:
    """A self-tested verifier on the libcrypto that ``_hashlib`` links, or None when none
    can be bound or passes the self-test."""
    for candidate in _libcrypto_candidates():
        check = _bind(candidate)
        if check is not None and _passes_self_test(check):
            return check
    return None


def _libcrypto_candidates() -> Iterator[str]:
    """Files that export libcrypto's symbols: ``_hashlib`` itself (dlsym searches its
    dependencies), and on Windows the libcrypto DLLs shipped beside it."""
    try:
        import _hashlib
    except ImportError:
        return
    yield _hashlib.__file__
    if sys.platform == "win32":
        yield from (str(p) for p in sorted(Path(_hashlib.__file__).parent.glob("libcrypto*.dll")))


def _bind(library: str) -> _Verifier | None:
    """A verifier on ``library``'s EVP functions, or None when they cannot be bound."""
    try:
        import ctypes

        lib = ctypes.CDLL(library)
        new_key = lib.EVP_PKEY_new_raw_public_key
        free_key = lib.EVP_PKEY_free
        new_ctx = lib.EVP_MD_CTX_new
        free_ctx = lib.EVP_MD_CTX_free
        init = lib.EVP_DigestVerifyInit
        digest_verify = lib.EVP_DigestVerify
        clear_errors = lib.ERR_clear_error
    except (ImportError, OSError, AttributeError):
        return None
    vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    new_key.restype, new_key.argtypes = vp, [ctypes.c_int, vp, cp, sz]
    free_key.restype, free_key.argtypes = None, [vp]
    new_ctx.restype, new_ctx.argtypes = vp, []
    free_ctx.restype, free_ctx.argtypes = None, [vp]
    init.restype, init.argtypes = ctypes.c_int, [vp, vp, vp, vp, vp]
    digest_verify.restype, digest_verify.argtypes = ctypes.c_int, [vp, cp, sz, cp, sz]
    clear_errors.restype, clear_errors.argtypes = None, []

    def check(public_key: bytes, signature: bytes, data: bytes) -> bool:
        key = new_key(_NID_ED25519, None, public_key, len(public_key))
        if not key:
            clear_errors()
            return False
        ctx = new_ctx()
        try:
            if not ctx or init(ctx, None, None, None, key) != 1:
                clear_errors()
                return False
            ok = bool(digest_verify(ctx, signature, len(signature), data, len(data)) == 1)
            if not ok:
                clear_errors()  # leave no error behind for _ssl / _hashlib to trip over
            return ok
        finally:
            if ctx:
                free_ctx(ctx)
            free_key(key)

    return check
