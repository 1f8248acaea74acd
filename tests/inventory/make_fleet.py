"""Write a synthetic operator repo with N devices (for timing the loader by hand).

Usage: python -m tests.inventory.make_fleet DIR [N]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PLATFORMS = ("windows", "linux", "macos")
SITES = ("berlin", "hamburg", "munich", "paris")

GROUPS = """groups:
  canary:
    match: {tags: canary}
    priority: 100
    agent: {release: '3.0.2'}
  linux-prod:
    match: {platform: linux}
    agent: {release: '3.0.1'}
    rollout: {waves: [5, 25, 50, 100], max_failure_rate: 0.05, soak: 30m, max_parallel: 50}
    maintenance_window: {cron: "0 2 * * *", duration: 3h, timezone: Europe/Berlin}
  windows-prod:
    match: {platform: windows}
    agent: {release: '3.0.1'}
  macos-prod:
    match: {platform: macos, site: [berlin, hamburg]}
    agent: {release: '3.0.1'}
  acme:
    match: {labels: {customer: c1}}
    description: customer acme (display only)
"""


def write_fleet(
    root: Path, devices: int, *, files: int = 1, releases_from: Path | None = None
) -> None:
    """Write inventory/ (devices split over ``files`` files) and groups.yaml under ``root``."""
    inventory = root / "inventory"
    inventory.mkdir(parents=True, exist_ok=True)
    per_file = -(-devices // files)
    for f in range(files):
        lines = ["devices:\n"]
        for i in range(f * per_file, min(devices, (f + 1) * per_file)):
            lines.append(
                f"  dev-{i:06d}:\n    platform: {PLATFORMS[i % 3]}\n    site: {SITES[i % 4]}\n"
                f"    tags: [t{i % 7}{', canary' if i % 100 == 0 else ''}]\n"
                f"    labels: {{customer: c{i % 11}, tier: gold}}\n"
            )
        (inventory / f"fleet-{f:02d}.yaml").write_text("".join(lines))
    (inventory / "groups.yaml").write_text(GROUPS)
    if releases_from is not None:
        shutil.copytree(releases_from, root / "releases", dirs_exist_ok=True)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    write_fleet(target, count, releases_from=Path("examples/fleet/releases"))
