"""Building runtime bundles: the runtime's wheel and its dependencies through pip, per target.

The runtime's wheel is built once from the project's source tree (a copy, so
the tree stays clean); then, per target, ``pip download --only-binary=:all:
--platform ... --python-version ... --implementation cp`` collects it with the
wheels of its dependencies. The bundle is assembled in a temporary directory
beside its final place, described in ``bundle.json``, signed, checked, and
only then swapped in: a failed build leaves the previous bundle as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.bundles.targets import Target
from engine.errors import EngineError
from engine.signing import key_id, load_private_key, sign
from fleetbase.clock import utc_now
from states.bundle import (
    BUNDLE_FORMAT_VERSION,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    BundleError,
    file_sha256,
    verify_bundle,
)
from states.signing import SignatureError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["BuildOptions", "BuiltBundle", "build_bundles", "project_source"]

#: The distribution name of this project (pyproject.toml).
PROJECT = "fleet-rollout"
#: What the wheel is built from: pyproject's metadata and the packages it lists.
_SOURCE_FILES = ("pyproject.toml", "README.md")
_SOURCE_PACKAGES = ("fleetbase", "states", "inventory", "engine", "agent_runtime")
#: Under the copied tree: what the runtime's wheel leaves out.
_DASHBOARD_VENDOR = Path("engine/server/dashboard/static/vendor")
#: Lines of pip's output quoted when it fails.
_PIP_TAIL = 12

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildOptions:
    """Where to build and where pip may look."""

    out: Path
    find_links: Sequence[Path] = ()
    no_index: bool = False
    signing_key: Path | None = None
    source: Path | None = None  # the project's source tree; None: find_links must hold the wheel
    #: the runtime version the wheel is built with instead of pyproject.toml's (a build from
    #: ``source`` only): how runtime releases get their own versions
    version: str | None = None


@dataclass
class BuiltBundle:
    """What became of one target: its directory and figures, or the error."""

    target: str
    directory: Path
    runtime_version: str = ""
    files: int = 0
    size: int = 0
    bundle_sha256: str = ""
    key_id: str | None = None
    error: str | None = None
    wheels: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        """The JSON form ``engine runtime bundle --json`` prints."""
        return {
            "target": self.target,
            "directory": str(self.directory),
            "runtime_version": self.runtime_version,
            "files": self.files,
            "size": self.size,
            "bundle_sha256": self.bundle_sha256,
            "signed_by": self.key_id,
            "error": self.error,
        }


class _BuildError(EngineError):
    """One step of a bundle build failed; the message says which and why."""


def project_source() -> Path | None:
    """The project's source tree this engine runs from, or None (e.g. installed from a wheel)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    if f'name = "{PROJECT}"' not in text:
        return None
    return root if all((root / p).is_dir() for p in _SOURCE_PACKAGES) else None


def build_bundles(
    targets: Sequence[Target], options: BuildOptions, progress: Progress
) -> list[BuiltBundle]:
    """Build one bundle per target under ``options.out``; report steps through ``progress``.

    Every target gets a ``BuiltBundle``; a failed one carries ``error`` and leaves
    what was there before untouched. A missing or unreadable signing key fails
    every target (nothing is written unsigned by mistake).
    """
    results = [BuiltBundle(t.name, options.out / t.name) for t in targets]
    try:
        key = load_private_key(options.signing_key) if options.signing_key else None
        options.out.mkdir(parents=True, exist_ok=True)
    except SignatureError as e:
        return _failed(results, str(e))
    except OSError as e:
        return _failed(results, f"cannot create {options.out}: {e.strerror}")
    with tempfile.TemporaryDirectory(prefix="runtime-wheel-") as tmp:
        try:
            requirement = _runtime_requirement(options, Path(tmp), progress)
        except _BuildError as e:
            return _failed(results, str(e))
        for target, result in zip(targets, results, strict=True):
            try:
                _build_one(
                    target, requirement, options=options, key=key, progress=progress, result=result
                )
            except (_BuildError, BundleError, OSError) as e:
                result.error = str(e)
    return results


def _failed(results: list[BuiltBundle], error: str) -> list[BuiltBundle]:
    for result in results:
        result.error = error
    return results


def _runtime_requirement(options: BuildOptions, tmp: Path, progress: Progress) -> str:
    """What pip downloads per target: the freshly built wheel, or the release from find-links."""
    if options.source is None:
        from importlib.metadata import version

        if options.version is not None:
            raise _BuildError("a runtime version can only be set when building from the source")
        return f"{PROJECT}=={version(PROJECT)}"
    progress(f"building the runtime wheel from {options.source}")
    copy = tmp / "src"
    copy.mkdir()
    for name in _SOURCE_FILES:
        shutil.copy2(options.source / name, copy / name)
    if options.version is not None:
        _set_version(copy / "pyproject.toml", options.version)
    for package in _SOURCE_PACKAGES:
        shutil.copytree(
            options.source / package,
            copy / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    # The dashboard's vendored assets (3 MB of Swagger UI and ReDoc) serve no purpose on a
    # device, which never runs engine serve: left out of the runtime's wheel.
    shutil.rmtree(copy / _DASHBOARD_VENDOR, ignore_errors=True)
    wheels = tmp / "wheel"
    _pip(
        ["wheel", "--no-deps", "--wheel-dir", str(wheels), str(copy)],
        options,
        "building the runtime wheel",
    )
    built = sorted(wheels.glob("*.whl"))
    if len(built) != 1:
        raise _BuildError(f"building the runtime wheel left {len(built)} wheels, expected 1")
    return str(built[0])


_VERSION_LINE = re.compile(r'^version = "[^"]*"$', re.MULTILINE)


def _set_version(pyproject: Path, version: str) -> None:
    """Give the copied pyproject.toml the version ``version`` (the tree itself is untouched)."""
    text = pyproject.read_text(encoding="utf-8")
    patched, count = _VERSION_LINE.subn(f'version = "{version}"', text, count=1)
    if count != 1:
        raise _BuildError(f"{pyproject}: no static `version = ...` line to set {version} in")
    pyproject.write_text(patched, encoding="utf-8")


def _build_one(
    target: Target,
    requirement: str,
    *,
    options: BuildOptions,
    key: Ed25519PrivateKey | None,
    progress: Progress,
    result: BuiltBundle,
) -> None:
    progress(f"{target.name}: downloading the runtime and its dependencies")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=options.out))
    try:
        args = ["download", "--only-binary=:all:", "--dest", str(staging)]
        for platform in target.pip_platforms():
            args += ["--platform", platform]
        args += ["--python-version", target.python, "--implementation", "cp", requirement]
        _pip(args, options, "pip download")
        wheels = sorted(p for p in staging.iterdir() if p.suffix == ".whl")
        if strays := sorted(p.name for p in staging.iterdir() if p.suffix != ".whl"):
            raise _BuildError(f"pip left files that are not wheels: {strays}")
        runtime = [w for w in wheels if w.name.startswith(PROJECT.replace("-", "_") + "-")]
        if len(runtime) != 1:
            raise _BuildError(f"pip download brought no {PROJECT} wheel")
        progress(f"{target.name}: hashing {len(wheels)} wheels")
        files = [
            {"name": w.name, "sha256": file_sha256(w), "size": w.stat().st_size} for w in wheels
        ]
        manifest = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "target": target.name,
            "platform": target.platform,
            "arch": target.arch,
            "python": target.python,
            "runtime_version": runtime[0].name.split("-")[1],
            "created": utc_now().isoformat(timespec="seconds"),
            "files": files,
        }
        data = (json.dumps(manifest, indent=2) + "\n").encode()
        (staging / MANIFEST_NAME).write_bytes(data)
        if key is not None:
            (staging / SIGNATURE_NAME).write_bytes(sign(data, [key]))
            result.key_id = key_id(key.public_key())
        checked = verify_bundle(staging, None)
        _swap(staging, result.directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result.runtime_version = checked.runtime_version
    result.files = len(files)
    result.size = sum(f.size for f in checked.files)
    result.wheels = [f.name for f in checked.files]
    result.bundle_sha256 = hashlib.sha256(data).hexdigest()


def _swap(staging: Path, final: Path) -> None:
    """Put the finished bundle in place of the old one (renames within one directory)."""
    os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the server and operators read it
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    with contextlib.suppress(OSError):
        shutil.rmtree(old)


def _pip(args: list[str], options: BuildOptions, what: str) -> None:
    """Run pip in this interpreter with the index options; raise _BuildError with its tail."""
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--progress-bar=off"]
    if options.no_index:
        cmd.append("--no-index")
    for link in options.find_links:
        cmd += ["--find-links", str(link)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise _BuildError(f"{what}: cannot run pip: {e}") from e
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        tail = "\n  ".join(lines[-_PIP_TAIL:])
        raise _BuildError(f"{what} failed (pip exit {proc.returncode}):\n  {tail}")
