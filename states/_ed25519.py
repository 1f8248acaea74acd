"""Ed25519 signature verification from raw bytes, without loading ``cryptography`` if possible.

The agent runtime idles under a 50 MB memory budget, and ``cryptography``
alone keeps about 8 MB resident (its Rust extension carries its own copy of
OpenSSL). Python's ``_hashlib`` already has the system's OpenSSL libcrypto
loaded, so verification calls its ``EVP_DigestVerify`` through ctypes. That
binding is checked on first use against RFC 8032 test vectors (a valid
signature must verify, altered data and an altered signature must not); when
the symbols are missing (OpenSSL < 1.1.1, LibreSSL, Windows, where a DLL's
dependencies are not searched) or the check fails, ``cryptography`` verifies
instead. Either way only a result of exactly 1 from OpenSSL counts as valid.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

__all__ = ["backend", "verify"]

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


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is a valid ed25519 signature of ``data`` by the raw 32-byte
    ``public_key``; False for any other input (wrong lengths, invalid key or signature)."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    return _backend()[1](public_key, signature, data)


def backend() -> str:
    """Which implementation verifies: ``libcrypto`` or ``cryptography``."""
    return _backend()[0]


@functools.cache
def _backend() -> tuple[str, _Verifier]:
    """The implementation, chosen once per process (a race only chooses twice, alike)."""
    libcrypto = _libcrypto_verifier()
    if libcrypto is not None and _passes_self_test(libcrypto):
        return "libcrypto", libcrypto
    return "cryptography", _cryptography_verify


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
    """A verifier on the libcrypto that ``_hashlib`` links, or None when it cannot be bound."""
    try:
        import _hashlib
        import ctypes

        lib = ctypes.CDLL(_hashlib.__file__)  # dlsym searches its dependencies: libcrypto
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
