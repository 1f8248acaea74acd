"""Helper process of ``preinstall_devices``: converge each device config to a plan file once.

One process for a whole fleet saves an interpreter start per device; every
device still goes through the real runtime's converge (download, verify,
swap, restart, health check). Usage:
``python -m tests.harness._preinstall PLAN PARALLEL CONFIG...``.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main(plan: str, parallel: int, configs: list[str]) -> int:
    """Converge each config to ``plan``; 1 (and the failures printed) when any did not commit."""
    from agent_runtime.config import load_config
    from agent_runtime.converge import FilePlanSource, Runtime

    def one(config_path: str) -> tuple[str, str]:
        config = load_config(Path(config_path))
        runtime = Runtime(config, out=lambda _line: None)
        res = runtime.converge_once(FilePlanSource(Path(plan), config.device))
        return config.device, f"{res.result} {res.detail}"

    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(one, configs))
    failed = [f"{d}: {r}" for d, r in results if not r.startswith("committed")]
    for line in failed:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: python -m tests.harness._preinstall PLAN PARALLEL CONFIG...")
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
