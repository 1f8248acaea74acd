"""`engine keygen` and `engine release sign|verify`: the release signing key and its signatures.

The private key never leaves the operator's machine; devices pin the public
key (``ed25519:<base64>``, the ``.pub`` file's one line) in their config.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

from engine.release_key import SIGNING_KEY_ENV, signing_key_path
from engine.signing import (
    generate_key,
    key_id,
    load_private_key,
    private_key_pem,
    public_key_text,
    sign,
    trusted_keys,
    verify,
)
from inventory.catalog import load_manifest
from inventory.errors import InventoryError
from states.signing import SIGNATURE_SUFFIX, SignatureError

__all__ = ["SIGNING_KEY_ENV", "register"]


class _CommandError(Exception):
    """A refusal to report on stderr with exit code 1."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keygen`` and ``release`` (with ``sign`` and ``verify``) to the engine CLI."""
    keygen = subparsers.add_parser(
        "keygen",
        help="create an ed25519 release signing key pair",
        description="Write NAME.key (private, mode 0600) and NAME.pub (the line devices pin).",
    )
    keygen.add_argument("--out", type=Path, default=Path(), metavar="DIR", help="default: .")
    keygen.add_argument("--name", default="release-signing", help="default: release-signing")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    keygen.set_defaults(func=_keygen)

    release = subparsers.add_parser("release", help="sign and verify release manifests")
    actions = release.add_subparsers(dest="release_command", metavar="ACTION", required=True)
    sign_p = actions.add_parser(
        "sign",
        help="validate a release manifest and write FILE.sig beside it",
        description=f"Key: --key, else ${SIGNING_KEY_ENV}, else engine.yaml's signing_key.",
    )
    sign_p.add_argument("file", type=Path, metavar="FILE")
    sign_p.add_argument("--key", type=Path, metavar="KEYFILE", help="ed25519 private key (PEM)")
    sign_p.add_argument("-C", dest="directory", type=Path, default=Path(), metavar="DIR")
    sign_p.set_defaults(func=_sign)

    verify_p = actions.add_parser("verify", help="check FILE.sig against pinned public keys")
    verify_p.add_argument("file", type=Path, metavar="FILE")
    verify_p.add_argument(
        "--pub",
        action="append",
        required=True,
        metavar="KEY",
        help="a .pub file or 'ed25519:<base64>' text; repeat for several keys",
    )
    verify_p.set_defaults(func=_verify)


def _refuse(action: str, message: object) -> int:
    """Print why ``engine <action>`` refused, on stderr; the exit code is 1."""
    print(f"engine {action}: {message}", file=sys.stderr)
    return 1


# -- keygen -------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    out: Path = args.out
    private, public = out / f"{args.name}.key", out / f"{args.name}.pub"
    existing = [p for p in (private, public) if p.exists()]
    if existing and not args.force:
        names = ", ".join(str(p) for p in existing)
        return _refuse("keygen", f"{names} already exists; refusing to overwrite (use --force)")
    key = generate_key()
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_private(private, private_key_pem(key))
        public.write_text(public_key_text(key.public_key()) + "\n", encoding="utf-8")
    except OSError as e:
        return _refuse("keygen", f"cannot write the key pair: {e}")
    print(f"key id {key_id(key.public_key())}")
    print(f"private key {private} (keep it off the server; mode 0600)")
    print(f"public key  {public} (pin its line in each device's config)")
    return 0


def _write_private(path: Path, pem: bytes) -> None:
    """Write the key readable by its owner only from the first byte on."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- release sign / verify ----------------------------------------------------------------


def _signing_key_path(args: argparse.Namespace) -> Path:
    path = signing_key_path(args.directory, args.key)
    if path is None:
        raise _CommandError(
            f"no signing key: pass --key KEYFILE, set ${SIGNING_KEY_ENV}, "
            f"or set signing_key in {args.directory / 'engine.yaml'}"
        )
    return path


def _sign(args: argparse.Namespace) -> int:
    try:
        key_path = _signing_key_path(args)
        key = load_private_key(key_path)
        data, manifest = load_manifest(args.file)
    except (InventoryError, SignatureError, _CommandError) as e:
        return _refuse("release sign", f"refusing to sign {args.file}:\n{e}")
    signature = args.file.with_name(args.file.name + SIGNATURE_SUFFIX)
    try:
        signature.write_bytes(sign(data, [key]))
    except OSError as e:
        return _refuse("release sign", f"cannot write {signature}: {e}")
    kid = key_id(key.public_key())
    print(f"signed {args.file} (release {manifest.version}, serial {manifest.serial})")
    print(f"key id {kid} -> {signature}")
    return 0


def _pinned(texts: list[str]) -> list[str]:
    """Key texts from --pub values: a file holding the key, or the key itself."""
    out = []
    for text in texts:
        path = Path(text)
        if not text.startswith("ed25519:") and path.is_file():
            out.append(path.read_text(encoding="utf-8"))
        else:
            out.append(text)
    return out


def _verify(args: argparse.Namespace) -> int:
    file: Path = args.file
    signature = file.with_name(file.name + SIGNATURE_SUFFIX)
    try:
        data = file.read_bytes()
        sig = signature.read_bytes()
    except OSError as e:
        return _refuse("release verify", f"cannot read {e.filename}: {e.strerror}")
    try:
        kid = verify(data, sig, trusted_keys(_pinned(args.pub)))
    except SignatureError as e:
        return _refuse("release verify", f"{file}: {e}")
    print(f"ok: {file} is signed by key {kid}")
    return 0
