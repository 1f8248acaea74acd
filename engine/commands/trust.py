"""`engine keys init|rotate|revoke|sign|show`: the root-signed list of release signing keys.

A thin parser over ``engine.keys``; the root key(s) come from ``--root-key``
(repeatable) or ``$ENGINE_ROOT_KEY`` and never from the repo.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine.keys import DEFAULT_VALIDITY, KeysChange, KeysFiles, change_keys, sign_document
from engine.signing import load_private_key
from fleetbase.clock import utc_now
from fleetbase.duration import format_duration, parse_duration
from states.keyring import KeysDocument, RootOfTrust, accept_keys_document
from states.signing import SignatureError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["ROOT_KEY_ENV", "register"]

#: Environment variable naming the root private key when --root-key is not given.
ROOT_KEY_ENV = "ENGINE_ROOT_KEY"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys`` (init, rotate, revoke, sign, show) to the engine CLI."""
    keys = subparsers.add_parser(
        "keys",
        help="the root-signed list of release signing keys devices trust",
        description="Write keys/keys.json (served at /v1/keys) and its root signatures.",
    )
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-C", dest="directory", type=Path, default=Path(), metavar="DIR")
        return p

    def signed_by(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--root-key", action="append", type=Path, metavar="KEYFILE",
            help=f"root private key (PEM); repeat for a root threshold; default ${ROOT_KEY_ENV}",
        )  # fmt: skip
        default = format_duration(DEFAULT_VALIDITY)
        p.add_argument(
            "--expires", type=parse_duration, default=DEFAULT_VALIDITY, metavar="DURATION",
            help=f"how long devices trust this version (default {default})",
        )  # fmt: skip

    init = action("init", "create version 1 listing the release signing keys")
    init.add_argument(
        "--key", action="append", required=True, metavar="PUB",
        help="a release signing public key (.pub file or text); repeatable",
    )  # fmt: skip
    init.add_argument("--threshold", type=int, default=1, help="keys that must sign (default 1)")
    signed_by(init)
    init.set_defaults(func=_init)

    rotate = action("rotate", "add or remove release signing keys, change the threshold")
    rotate.add_argument("--add", action="append", default=[], metavar="PUB")
    rotate.add_argument("--remove", action="append", default=[], metavar="KEYID")
    rotate.add_argument("--threshold", type=int, default=None)
    signed_by(rotate)
    rotate.set_defaults(func=_rotate)

    revoke = action("revoke", "stop trusting release signing keys for good")
    revoke.add_argument("keyid", nargs="+", metavar="KEYID")
    signed_by(revoke)
    revoke.set_defaults(func=_revoke)

    sign_p = action("sign", "add root signatures to the current version (root threshold > 1)")
    sign_p.add_argument("--root-key", action="append", type=Path, metavar="KEYFILE")
    sign_p.set_defaults(func=_sign)

    show = action("show", "print the current version; with --root, check it as a device would")
    show.add_argument("--root", action="append", default=[], metavar="PUB")
    show.add_argument("--root-threshold", type=int, default=1)
    show.set_defaults(func=_show)


def _refuse(action: str, message: object) -> int:
    print(f"engine keys {action}: {message}", file=sys.stderr)
    return 1


def _key_text(value: str) -> str:
    """A public key given as text or as a .pub file holding it."""
    path = Path(value)
    if not value.startswith("ed25519:") and path.is_file():
        return path.read_text(encoding="utf-8").strip()
    return value


def _root_keys(args: argparse.Namespace) -> list[Ed25519PrivateKey]:
    paths: list[Path] = list(args.root_key or [])
    if not paths and os.environ.get(ROOT_KEY_ENV):
        paths = [Path(os.environ[ROOT_KEY_ENV])]
    if not paths:
        raise SignatureError(f"no root key: pass --root-key KEYFILE or set ${ROOT_KEY_ENV}")
    return [load_private_key(p) for p in paths]


def _write(args: argparse.Namespace, action: str, change: KeysChange, *, first: bool) -> int:
    files = KeysFiles.of(args.directory)
    try:
        current = files.load()
        if first and current is not None:
            raise SignatureError(f"{files.document} exists (version {current.version}): use rotate")
        if not first and current is None:
            raise SignatureError(f"{files.document} does not exist yet: use engine keys init")
        roots = _root_keys(args)
        doc = change_keys(current, change, utc_now())
        files.write(doc, roots)
    except (SignatureError, OSError) as e:
        return _refuse(action, e)
    _print(doc, files)
    return 0


def _init(args: argparse.Namespace) -> int:
    change = KeysChange(
        add=tuple(_key_text(k) for k in args.key), threshold=args.threshold, validity=args.expires
    )
    return _write(args, "init", change, first=True)


def _rotate(args: argparse.Namespace) -> int:
    change = KeysChange(
        add=tuple(_key_text(k) for k in args.add), remove=tuple(args.remove),
        threshold=args.threshold, validity=args.expires,
    )  # fmt: skip
    return _write(args, "rotate", change, first=False)


def _revoke(args: argparse.Namespace) -> int:
    change = KeysChange(revoke=tuple(args.keyid), validity=args.expires)
    return _write(args, "revoke", change, first=False)


def _sign(args: argparse.Namespace) -> int:
    files = KeysFiles.of(args.directory)
    try:
        ids = sign_document(files, _root_keys(args))
    except (SignatureError, OSError) as e:
        return _refuse("sign", e)
    print(f"{files.signature}: signed by root key(s) {', '.join(ids)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    files = KeysFiles.of(args.directory)
    try:
        doc = files.load()
        if doc is None:
            raise SignatureError(f"{files.document} does not exist yet: use engine keys init")
        if args.root:
            root = RootOfTrust.from_texts([_key_text(t) for t in args.root], args.root_threshold)
            accept_keys_document(
                files.document.read_bytes(), files.signature.read_bytes(), root, utc_now(), None
            )
    except (SignatureError, OSError) as e:
        return _refuse("show", e)
    _print(doc, files)
    if args.root:
        print("ok: signed by the root threshold and not expired")
    return 0


def _print(doc: KeysDocument, files: KeysFiles) -> None:
    print(f"{files.document}: version {doc.version}, expires {doc.expires.isoformat()}")
    print(f"threshold {doc.threshold} of {len(doc.keys)} key(s):")
    for keyid, entry in sorted(doc.keys.items()):
        until = f" (until {entry.expires.isoformat()})" if entry.expires else ""
        print(f"  {keyid} {entry.public}{until}")
    if doc.revoked:
        print(f"revoked: {', '.join(doc.revoked)}")
