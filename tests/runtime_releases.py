"""Runtime bundles of other runtime versions, for runtime releases in tests.

``build_release_bundles`` runs the real ``engine runtime bundle --version V``
(offline, from the wheelhouse ``scripts/setup`` caches), signed with the key
of the session's ``runtime_bundle``. With ``broken`` it runs that command from
a copy of the source tree whose ``agent-runtime`` exits at start: the engine
builds the runtime's wheel from the tree it runs from, so the bundle carries
the broken runtime under its own version, as a bad release would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.bundles import local_target
from tests.bundles import REPO_ROOT, offline_pip_env, require_wheelhouse

__all__ = ["BROKEN_MESSAGE", "ReleaseBundles", "build_release_bundles"]

#: What the broken runtime says before it exits (code 3) at start.
BROKEN_MESSAGE = "this runtime release is broken on purpose: it exits at start"
_PACKAGES = ("fleetbase", "states", "inventory", "engine", "agent_runtime")
_MAIN = '''def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
'''


def _broken_source(dest: Path) -> Path:
    """A copy of the source tree whose ``agent-runtime`` exits with 3 at start."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, dest / name)
    for package in _PACKAGES:
        shutil.copytree(
            REPO_ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    cli = dest / "agent_runtime" / "cli.py"
    text = cli.read_text()
    assert _MAIN in text, "agent_runtime.cli.main changed: update tests/runtime_releases.py"
    broken = f"    print({BROKEN_MESSAGE!r}, file=sys.stderr)\n    raise SystemExit(3)\n"
    cli.write_text(text.replace(_MAIN, _MAIN + broken))
    return dest


def build_release_bundles(
    dest: Path, version: str, key_file: Path, *, broken: bool = False
) -> Path:
    """Bundles of runtime ``version`` for this machine under ``dest/bundles``; returns that
    directory (what `engine runtime release --from` takes)."""
    wheelhouse = require_wheelhouse()
    dest.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT
    if broken:
        (dest / "src").mkdir()
        source = _broken_source(dest / "src")
    out = dest / "bundles"
    cmd = [sys.executable, "-m", "engine", "runtime", "bundle", "-C", str(dest), "--json",
           "--no-index", "--find-links", str(wheelhouse), "--out", str(out),
           "--key", str(key_file), "--version", version]  # fmt: skip
    env = {k: v for k, v in offline_pip_env().items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = str(source)  # the engine (and so the wheel's source) of that tree
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=source, timeout=300, check=False
    )
    assert proc.returncode == 0, f"engine runtime bundle failed:\n{proc.stdout}\n{proc.stderr}"
    (built,) = json.loads(proc.stdout)["bundles"]
    assert built["target"] == local_target().name
    assert built["runtime_version"] == version, built
    return out


@dataclass
class ReleaseBundles:
    """The session's runtime (every device's first one: its version, venv and key) and bundles
    of other runtime versions signed with that key, each built on first use."""

    base_version: str
    base_venv: Path
    public_key: str
    key_file: Path
    directory: Path
    _built: dict[tuple[str, bool], Path] = field(default_factory=dict)

    def bundles(self, version: str, *, broken: bool = False) -> Path:
        """The bundles of runtime ``version`` (``broken``: one that exits at start), built
        once per session; what `engine runtime release --from` takes."""
        key = (version, broken)
        if key not in self._built:
            dest = self.directory / f"{version}{'-broken' if broken else ''}"
            self._built[key] = build_release_bundles(dest, version, self.key_file, broken=broken)
        return self._built[key]
