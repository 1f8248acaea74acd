"""Build the example agent's releases into an operator repo: artifacts and manifests.

Deterministic: the same options write the same bytes (no timestamps inside
files), so the generated examples/fleet/ is committed and rebuilt in CI to
check it is current. Usage::

    python examples/build_releases.py [--out DIR] [--versions 3.0.0,3.0.1]
        [--sign KEYFILE] [--pad-mb N] [--expires 2036-01-01T00:00:00Z]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(_REPO))

from engine.signing import load_private_key, sign  # noqa: E402
from states.manifest import ReleaseManifest  # noqa: E402
from states.signing import SIGNATURE_SUFFIX  # noqa: E402

AGENT_SOURCE = Path(__file__).resolve().parent / "agent"
DEFAULT_OUT = Path(__file__).resolve().parent / "fleet"
DEFAULT_EXPIRES = "2036-01-01T00:00:00Z"
PLATFORMS = ("linux", "windows", "macos")
PADDING_PATH = "data/padding.bin"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Release:
    """One example release: its serial, how it behaves, what it may roll back to."""

    version: str
    serial: int
    behaviour: str
    notes: str
    rollback_to: tuple[str, ...]


CATALOGUE = {
    r.version: r
    for r in (
        Release("3.0.0", 1, "good", "first release managed by the rollout engine", ()),
        Release("3.0.1", 2, "good", "good release", ("3.0.0",)),
        Release("3.0.2", 3, "exit_at_start", "broken: exits with code 3", ("3.0.1", "3.0.0")),
        Release("3.0.3", 4, "no_heartbeat", "broken: never heartbeats", ("3.0.1", "3.0.0")),
        Release(
            "3.0.4",
            5,
            "leak_memory",
            "works and heartbeats, but leaks 2 MiB of memory per heartbeat",
            ("3.0.1", "3.0.0"),
        ),
    )
}

# The two files that make each release different; same layout as in examples/agent/core/.
VERSION_TEMPLATE = (
    '"""The release this copy of the agent is; rewritten by examples/build_releases.py."""\n'
    "\n"
    'VERSION = "{version}"\n'
)
BEHAVIOUR_TEMPLATE = (
    '"""How this release behaves: good, exit_at_start or no_heartbeat '
    '(see build_releases.py)."""\n'
    "\n"
    'BEHAVIOUR = "{behaviour}"\n'
)


def agent_files(release: Release, pad_mb: int) -> dict[str, bytes]:
    """Relative path → content of every file of ``release`` (sorted by path)."""
    files: dict[str, bytes] = {}
    for path in sorted(AGENT_SOURCE.rglob("*.py")):
        rel = path.relative_to(AGENT_SOURCE).as_posix()
        if "__pycache__" not in rel:
            files[rel] = path.read_bytes()
    files["core/version.py"] = VERSION_TEMPLATE.format(version=release.version).encode()
    files["core/behaviour.py"] = BEHAVIOUR_TEMPLATE.format(behaviour=release.behaviour).encode()
    if pad_mb > 0:
        files[PADDING_PATH] = random.Random(f"pad-{release.version}").randbytes(pad_mb * MIB)
    return dict(sorted(files.items()))


def file_mode(rel: str) -> int:
    """Entry point executable, everything else read-only data."""
    return 0o755 if rel == "nats_agent.py" else 0o644


def manifest_document(release: Release, files: dict[str, bytes], expires: str) -> dict[str, Any]:
    """The release manifest as plain data, in the order an operator reads it."""
    platforms: dict[str, Any] = {}
    for platform in PLATFORMS:
        platforms[platform] = {
            "command": ["{python}", "nats_agent.py"],
            "files": [
                {
                    "path": rel,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "mode": f"{file_mode(rel):04o}",
                    "source": f"{release.version}/{platform}/{rel}",
                }
                for rel, data in files.items()
            ],
        }
    return {
        "kind": "release",
        "version": release.version,
        "serial": release.serial,
        "expires": expires,
        "notes": release.notes,
        "health_check": {
            "kind": "heartbeat_file",
            "path": "heartbeat.json",
            "timeout": "30s",
            "max_age": "10s",
        },
        "rollback_to": list(release.rollback_to),
        "platforms": platforms,
    }


class _ManifestDumper(yaml.SafeDumper):
    """Block style, with versions quoted so that nobody's edit turns 3.10 into a float."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if value in CATALOGUE else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.SequenceNode:
    flow = all(isinstance(v, str) for v in value)  # command and rollback_to on one line
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_ManifestDumper.add_representer(str, _represent_str)
_ManifestDumper.add_representer(list, _represent_list)


def _write(path: Path, data: bytes, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        os.chmod(path, mode)


def build(out: Path, versions: list[str], *, expires: str, pad_mb: int, key: Path | None) -> None:
    """Write ``artifacts/<version>/<platform>/...`` and ``releases/<version>.yaml`` under ``out``.

    Raises KeyError for a version not in ``CATALOGUE`` and pydantic's ValidationError
    when a manifest would not validate (a bug in this script).
    """
    signing_key = load_private_key(key) if key is not None else None
    for version in versions:
        release = CATALOGUE[version]
        files = agent_files(release, pad_mb)
        doc = manifest_document(release, files, expires)
        text = "# Generated by examples/build_releases.py; edit that, not this.\n" + yaml.dump(
            doc, Dumper=_ManifestDumper, sort_keys=False, default_flow_style=False, width=100
        )
        ReleaseManifest.model_validate(yaml.safe_load(text))
        shutil.rmtree(out / "artifacts" / version, ignore_errors=True)
        for platform in PLATFORMS:
            for rel, data in files.items():
                _write(out / "artifacts" / version / platform / rel, data, file_mode(rel))
        manifest = out / "releases" / f"{version}.yaml"
        signature = manifest.with_name(manifest.name + SIGNATURE_SUFFIX)
        changed = not manifest.exists() or manifest.read_bytes() != text.encode()
        _write(manifest, text.encode())
        if signing_key is not None:
            _write(signature, sign(text.encode(), [signing_key]))
        elif changed and signature.exists():
            signature.unlink()  # it signed the old bytes
            print(f"removed stale signature {signature}")
        print(f"built {version}: {len(files)} files x {len(PLATFORMS)} platforms -> {manifest}")


def _versions(text: str) -> list[str]:
    versions = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in versions if v not in CATALOGUE]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown release(s) {', '.join(unknown)}; known: {', '.join(CATALOGUE)}"
        )
    return versions


def _expires(text: str) -> str:
    try:
        when = datetime.fromisoformat(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from e
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone, e.g. Z")
    return text


def main(argv: list[str] | None = None) -> int:
    """Parse options and build; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="operator repo directory")
    parser.add_argument("--versions", type=_versions, default=list(CATALOGUE))
    parser.add_argument("--sign", type=Path, metavar="KEYFILE", help="write <manifest>.sig")
    parser.add_argument("--pad-mb", type=int, default=0, help="add a padding file of N MiB")
    parser.add_argument("--expires", type=_expires, default=DEFAULT_EXPIRES)
    args = parser.parse_args(argv)
    if args.pad_mb < 0:
        parser.error("--pad-mb must not be negative")
    build(args.out, args.versions, expires=args.expires, pad_mb=args.pad_mb, key=args.sign)
    return 0


if __name__ == "__main__":
    sys.exit(main())
