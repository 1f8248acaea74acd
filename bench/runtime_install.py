"""What a device gets from the runtime-only install: packages, megabytes, start-up time.

Builds a runtime bundle for this machine with the real ``engine runtime
bundle`` (offline, from the wheelhouse ``scripts/setup`` caches), installs it
into a fresh venv with ``pip install --no-index --find-links <bundle>`` (as a
device without a package index would), then prints:

* the distributions in the venv's site-packages and their count (pip
  included; Python 3.11's venv module also adds setuptools, shown apart);
* the size of site-packages in MB (every file, .pyc included), and per
  distribution;
* the bundle's size (what a device downloads);
* cold ``agent-runtime status`` time: the median (and min/max) of N fresh
  processes against a device config with nothing installed yet.

Usage::

    .venv/bin/python bench/runtime_install.py [--runs 15] [--keep]

Goals (issue 8): at most 8 packages and 45 MB of site-packages, pip included.
Prints figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from tests.bundles import build_runtime_bundle, install_runtime_venv  # noqa: E402

#: Installed by Python's venv module itself (3.11 and older), not by the runtime.
VENV_BASE = {"setuptools"}


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _site_packages(venv: Path) -> Path:
    (site,) = venv.glob("lib/python3*/site-packages")
    return site


def _distributions(site: Path) -> dict[str, int]:
    """Distribution name -> bytes of its files (each dist-info's RECORD; pip records the
    .pyc files it compiles at install time there too)."""
    sizes: dict[str, int] = {}
    for info in sorted(site.glob("*.dist-info")):
        name = info.name.split("-")[0].lower().replace("_", "-")
        total = 0
        for line in (info / "RECORD").read_text().splitlines():
            file = site / line.split(",")[0]
            if line and file.is_file():
                total += file.stat().st_size
        sizes[name] = total
    return sizes


def _status_times(bin_dir: Path, config: Path, runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) seconds of ``runs`` fresh `agent-runtime status` processes."""
    argv = [str(bin_dir / "agent-runtime"), "status", "--config", str(config)]
    wall, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
        wall.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    """Build, install, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="agent-runtime status runs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-runtime-install-"))
    try:
        bundle = build_runtime_bundle(tmp / "build")
        bundle_bytes = _tree_size(bundle.directory)
        wheels = len(list(bundle.directory.glob("*.whl")))
        bin_dir = install_runtime_venv(bundle.directory, tmp / "venv")
        site = _site_packages(tmp / "venv")
        dists = _distributions(site)
        site_total = _tree_size(site)
        config = tmp / "device.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "device": "bench-0001",
                    "agent_root": str(tmp / "agent"),
                    "state_dir": str(tmp / "state"),
                    "trusted_keys": [bundle.public_key],
                }
            )
        )
        wall, cpu = _status_times(bin_dir, config, args.runs)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    counted = {n: s for n, s in dists.items() if n not in VENV_BASE}
    base_total = sum(s for n, s in dists.items() if n in VENV_BASE)
    print(f"target {bundle.target}, Python {sys.version.split()[0]}")
    print(f"bundle: {wheels} wheels, {bundle_bytes / 1e6:.1f} MB")
    print(f"distributions (pip included, venv's own {sorted(VENV_BASE)} apart): {len(counted)}")
    for name, size in sorted(counted.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<20} {size / 1e6:6.1f} MB")
    for name in sorted(set(dists) & VENV_BASE):
        print(f"  ({name:<18} {dists[name] / 1e6:6.1f} MB, from python -m venv)")
    print(
        f"site-packages: {site_total / 1e6:.1f} MB in all, "
        f"{(site_total - base_total) / 1e6:.1f} MB without the venv's own"
    )
    print(
        f"cold `agent-runtime status` ({args.runs} runs): wall median "
        f"{statistics.median(wall):.3f} s (min {min(wall):.3f}, max {max(wall):.3f}), "
        f"CPU median {statistics.median(cpu):.3f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
