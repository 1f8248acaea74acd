"""Bootstrap over SSH against a local sshd: from no runtime to enrolled, with the real installer.

Starts the test sshd (tests/harness/sshd.py) and a real ``engine serve`` on
127.0.0.1, builds a signed runtime bundle for this machine (offline, from the
wheelhouse ``scripts/setup`` caches), and prepares field devices as the old
snippet left them (the example agent 3.0.0's files in place, no runtime).
Then it times ``engine bootstrap`` — invite codes issued, host key checked,
target detected, the bundle verified and uploaded with the served installer,
the bundle verified again on the host, the runtime home laid out (the venv
``versions/<V>`` with ``pip install --no-index``, runtime.json, the
supervisor, the launcher), device config written, enrolled with the invite,
agent adopted — for one host, then for ``--hosts`` hosts with ``--forks``,
then one host again (a run that changes nothing)::

    .venv/bin/python bench/bootstrap_ssh.py --hosts 4 --forks 4

Every host is a directory on this machine reached as a separate SSH target;
the runtime's OS service is left out (``--service none``). Prints figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from engine.ssh import Endpoint, SshSession  # noqa: E402
from tests.bundles import build_runtime_bundle  # noqa: E402
from tests.harness.repo import DeviceSpec, OperatorRepo  # noqa: E402
from tests.harness.server import ServerProcess  # noqa: E402
from tests.harness.sshd import Sshd, sshd_missing  # noqa: E402

AGENT_300 = REPO / "examples" / "fleet" / "artifacts" / "3.0.0" / "linux"


def _bootstrap(repo: OperatorRepo, known_hosts: Path, hosts: Path, *devices: str,
               forks: int) -> tuple[float, list[dict[str, object]]]:  # fmt: skip
    """Wall time of one `engine bootstrap` run for ``devices`` and its per-host rows."""
    select = [a for d in devices for a in ("--device", d)]
    t = time.perf_counter()
    done = repo.engine(
        "bootstrap", "--known-hosts", str(known_hosts), "--forks", str(forks),
        "--service", "none", "--agent-service", "process",
        "--prefix", str(hosts / "{device}" / "runtime"), "--json", *select,
        check=False, timeout=1800,
    )  # fmt: skip
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"engine bootstrap failed:\n{done.stdout}\n{done.stderr}")
    rows: list[dict[str, object]] = json.loads(done.stdout)["hosts"]
    return wall, rows


def main() -> int:
    """Print connect time, one host's bootstrap and a fleet's bootstrap times."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--forks", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    why = sshd_missing()
    if why:
        print(why, file=sys.stderr)
        return 1
    base = Path(tempfile.mkdtemp(prefix="bench-bootstrap-ssh-"))
    sshd = Sshd(base / "sshd")
    sshd.start()
    server: ServerProcess | None = None
    try:
        bundle = build_runtime_bundle(base / "build")
        known_hosts = sshd.known_hosts(base / "known_hosts")
        endpoint = Endpoint("127.0.0.1", sshd.port, sshd.user, sshd.client_key, known_hosts)
        t = time.perf_counter()
        with SshSession(endpoint):
            connected = time.perf_counter() - t
        hosts = base / "hosts"
        ids = ["one"] + [f"many-{i}" for i in range(args.hosts)]
        for d in ids:
            shutil.copytree(AGENT_300, hosts / d / "agent")
        repo = OperatorRepo(base / "fleet")
        ssh = {"host": "127.0.0.1", "port": sshd.port, "user": sshd.user,
               "key_file": str(sshd.client_key), "agent_root": str(hosts / "{device}" / "agent"),
               "runtime_dir": str(hosts / "{device}")}  # fmt: skip
        repo.create([DeviceSpec(d) for d in ids],
                    {"fleet": {"match": {"site": "demo"}, "agent": {"release": "3.0.0"},
                               "ssh": ssh}})  # fmt: skip
        server = ServerProcess(repo, base / "server.log")
        (repo.root / "keys" / "bundle-signing.pub").write_text(bundle.public_key + "\n")
        settings = yaml.safe_load((repo.root / "engine.yaml").read_text())
        settings.update(trusted_keys=["keys/release-signing.pub", "keys/bundle-signing.pub"],
                        runtime_bundles=str(bundle.root), server_url=server.url)  # fmt: skip
        (repo.root / "engine.yaml").write_text(yaml.safe_dump(settings))
        server.start()
        one_s, one = _bootstrap(repo, known_hosts, hosts, "one", forks=1)
        many_s, many = _bootstrap(repo, known_hosts, hosts, *ids[1:], forks=args.forks)
        again_s, _ = _bootstrap(repo, known_hosts, hosts, "one", forks=1)
        adopted = sorted({str(r["detail"]) for r in one + many})
    finally:
        if server is not None:
            server.stop()
        sshd.stop()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps({
        "connect_s": round(connected, 3),
        "one_host_nothing_to_enrolled_s": round(one_s, 1),
        "hosts": args.hosts, "forks": args.forks,
        "all_hosts_nothing_to_enrolled_s": round(many_s, 1),
        "second_run_one_host_s": round(again_s, 1),
        "results": adopted,
        "load_average": round(os.getloadavg()[0], 1),
    }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
