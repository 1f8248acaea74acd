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

from engine.commands._release_cmds import add_release_commands
from engine.release_key import SIGNING_KEY_ENV, signing_key_path
from engine.signing import (
    add_signatures,
    generate_key,
    key_id,
    load_private_key,
    private_key_pem,
    public_key_text,
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
    keygen.add_argument("--name", default=None, help="default: release-signing (root with --root)")
    keygen.add_argument(
        "--root",
        action="store_true",
        help="a root key: it signs the keys document (engine keys); keep it offline",
    )
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    keygen.set_defaults(func=_keygen)

    release = subparsers.add_parser("release", help="make, list, sign and verify release manifests")
    actions = release.add_subparsers(dest="release_command", metavar="ACTION", required=True)
    add_release_commands(actions)
    sign_p = actions.add_parser(
        "sign",
        help="validate a release manifest and write FILE.sig beside it",
        description=f"Key: --key, else ${SIGNING_KEY_ENV}, else engine.yaml's signing_key.",
    )
    sign_p.add_argument("file", type=Path, metavar="FILE")
    sign_p.add_argument(
        "--key", type=Path, action="append", metavar="KEYFILE",
        help="ed25519 private key (PEM); repeat to sign with several keys",
    )  # fmt: skip
    sign_p.add_argument(
        "--append", action="store_true",
        help="keep the signatures already in FILE.sig (each key holder signs in turn)",
    )  # fmt: skip
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
    verify_p.add_argument(
        "--threshold", type=int, default=1, help="distinct keys that must have signed (default 1)"
    )
    verify_p.set_defaults(func=_verify)


def _refuse(action: str, message: object) -> int:
    """Print why ``engine <action>`` refused, on stderr; the exit code is 1."""
    print(f"engine {action}: {message}", file=sys.stderr)
    return 1


# -- keygen -------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    out: Path = args.out
    name = args.name or ("root" if args.root else "release-signing")
    private, public = out / f"{name}.key", out / f"{name}.pub"
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
    if args.root:
        print(f"public key  {public} (pin its line under root_keys in each device's config)")
    else:
        print(f"public key  {public} (list it with engine keys, or pin it under trusted_keys)")
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


def _signing_key_paths(args: argparse.Namespace) -> list[Path]:
    if args.key:
        return [Path(k) for k in args.key]
    path = signing_key_path(args.directory, None)
    if path is None:
        raise _CommandError(
            f"no signing key: pass --key KEYFILE, set ${SIGNING_KEY_ENV}, "
            f"or set signing_key in {args.directory / 'engine.yaml'}"
        )
    return [path]


def _sign(args: argparse.Namespace) -> int:
    try:
        keys = [load_private_key(p) for p in _signing_key_paths(args)]
        data, manifest = load_manifest(args.file)
    except (InventoryError, SignatureError, _CommandError) as e:
        return _refuse("release sign", f"refusing to sign {args.file}:\n{e}")
    signature = args.file.with_name(args.file.name + SIGNATURE_SUFFIX)
    try:
        existing = signature.read_bytes() if args.append and signature.is_file() else None
        signature.write_bytes(add_signatures(data, existing, keys))
    except OSError as e:
        return _refuse("release sign", f"cannot write {signature}: {e}")
    kids = ", ".join(key_id(k.public_key()) for k in keys)
    print(f"signed {args.file} (release {manifest.version}, serial {manifest.serial})")
    print(f"key id {kids} -> {signature}")
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
        kid = verify(data, sig, trusted_keys(_pinned(args.pub)), args.threshold)
    except SignatureError as e:
        return _refuse("release verify", f"{file}: {e}")
    print(f"ok: {file} is signed by key {kid}")
    return 0
