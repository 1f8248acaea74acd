"""Bootstrap over SSH against a local sshd: connect, upload script and bundle, run, read JSON.

The real bootstrap script is not in this tree yet, so a stand-in runs (it lists the
uploaded bundle and prints a JSON result): the figures are the SSH part of a
bootstrap (key exchange, host key check, sftp upload of a bundle-sized file set,
remote run), without the venv install and enrollment the real script adds.

    .venv/bin/python bench/bootstrap_ssh.py --hosts 8 --forks 4 --bundle-mb 12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.ssh import Endpoint, SshSession
from engine.ssh._runtime import remote_target
from engine.ssh.bootstrap import BootstrapOptions, bootstrap_hosts
from engine.ssh.targets import SshTarget
from fleetbase.platform import Platform
from tests.harness.sshd import Sshd, sshd_missing

STAND_IN = """\
import json, os, sys
opt = dict(zip(sys.argv[1::2], sys.argv[2::2]))
print(json.dumps({"ok": True, "detail": "stand-in", "files": len(os.listdir(opt["--bundle-dir"]))}))
"""


def main() -> int:
    """Print connect, first-host and fleet bootstrap times."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--forks", type=int, default=4)
    ap.add_argument("--bundle-mb", type=float, default=12.0)
    args = ap.parse_args()
    why = sshd_missing()
    if why:
        print(why, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        sshd = Sshd(base / "sshd")
        sshd.start()
        try:
            kh = sshd.known_hosts(base / "known_hosts")
            endpoint = Endpoint("127.0.0.1", sshd.port, sshd.user, sshd.client_key, kh)
            t = time.perf_counter()
            with SshSession(endpoint) as s:
                connected = time.perf_counter() - t
                name = remote_target(s)
            bundle = base / "bundles" / name
            bundle.mkdir(parents=True)
            per = int(args.bundle_mb * 1024 * 1024 / 8)
            for i in range(8):
                (bundle / f"wheel{i}.whl").write_bytes(os.urandom(per))
            (bundle / "bundle.json").write_text("{}")
            script = base / "install.py"
            script.write_text(STAND_IN)
            opts = BootstrapOptions(script=script, bundles_dir=base / "bundles",
                                    invite=lambda d: "code")  # fmt: skip

            def targets(n: int, tag: str) -> list[SshTarget]:
                return [SshTarget(f"{tag}-{i}", Platform.LINUX, endpoint, "/nonexistent",
                                  str(base / "hosts" / f"{tag}-{i}"), "process", {})
                        for i in range(n)]  # fmt: skip

            t = time.perf_counter()
            one = bootstrap_hosts(targets(1, "one"), opts, forks=1)
            first = time.perf_counter() - t
            t = time.perf_counter()
            many = bootstrap_hosts(targets(args.hosts, "many"), opts, forks=args.forks)
            fleet = time.perf_counter() - t
        finally:
            sshd.stop()
    ok = all(r.ok for r in one + many)
    print(json.dumps({
        "connect_s": round(connected, 3), "bundle_mb": args.bundle_mb,
        "one_host_s": round(first, 3), "hosts": args.hosts, "forks": args.forks,
        "all_hosts_s": round(fleet, 3), "all_ok": ok,
        "load_average": os.getloadavg()[0],
    }, indent=1))  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
