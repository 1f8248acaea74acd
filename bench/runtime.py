"""Benchmark the agent runtime: a 50 MB update over HTTP on 127.0.0.1, phase by phase.

Prints, for each layout: the time of every phase of a 3.0.0 -> 3.0.1 update
(download from a local ThreadingHTTPServer), a no-op converge (in process and
as a fresh `agent-runtime converge --once` process), and the resident memory
of an idle periodic `agent-runtime converge` process: after a no-op round
(no HTTP) and after a 3.0.1 -> 3.0.2 update downloaded over HTTP. Then, unless
``--no-pull``, the resident memory of a pull-mode runtime against a real
`engine serve` on 127.0.0.1 (``tests/harness``), idle between
check-ins before and after a rollout it installed over HTTP (the runtime samples the
agent's CPU and memory at every check-in; the count of samples the server kept is
printed with them). Usage::

    .venv/bin/python bench/runtime.py [--pad-mb 50] [--layout in_place|versioned|both]
        [--no-pull | --pull-only] [--state-on /dev/shm]

Targets: download + verify + backup + swap < 1 s; no-op < 0.3 s; idle RSS < 50 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

import psutil
import yaml

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from agent_runtime.config import load_config  # noqa: E402
from agent_runtime.converge import FilePlanSource, Runtime  # noqa: E402
from engine.signing import generate_key, private_key_pem, public_key_text  # noqa: E402
from examples.build_releases import build  # noqa: E402
from states.plan import DevicePlan, InventoryRef, Plan, ReleaseRef, StateRef  # noqa: E402
from tests.harness.http import http_server  # noqa: E402
from tests.runtime.pki import Pki, make_pki  # noqa: E402

DEVICE = "bench-device"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serve(root: Path, pki: Pki | None = None) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(root))
    ctx = None
    if pki is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.server_pem)
    with http_server(handler, tls=ctx) as port:
        yield f"{'https' if ctx else 'http'}://127.0.0.1:{port}"


def _plan(path: Path, repo: Path, desired: str, current: str | None, url: str | None) -> None:
    releases = {}
    for v in ("3.0.0", "3.0.1"):
        m = repo / "releases" / f"{v}.yaml"
        serial = int(yaml.safe_load(m.read_text())["serial"])
        base = f"{url}/" if url else ""
        releases[v] = ReleaseRef(
            version=v,  # type: ignore[arg-type]
            serial=serial,
            manifest=f"{base}releases/{v}.yaml",
            signature=f"{base}releases/{v}.yaml.sig",
            manifest_sha256=hashlib.sha256(m.read_bytes()).hexdigest(),
            artifacts=f"{base}artifacts",
        )
    plan = Plan(
        generated_at=datetime.now(UTC),
        inventory=InventoryRef(root=str(repo), digest="bench"),
        state=StateRef(url="bench", reports=0, reports_digest="bench"),
        summary={},
        devices=[
            DevicePlan(
                device=DEVICE,
                group=None,
                platform="linux",  # type: ignore[arg-type]
                current=current,  # type: ignore[arg-type]
                desired=desired,  # type: ignore[arg-type]
                action="update",  # type: ignore[arg-type]
            )
        ],
        releases=releases,
    )
    path.write_text(plan.model_dump_json())


#: ``--state-on DIR``: state directories (and so staging) under DIR, e.g. another file system.
STATE_ON: list[Path] = []


def _device(dev: Path, pinned: str, layout: str) -> tuple[Path, Path]:
    """A device directory with its config; (config, plan file path)."""
    dev.mkdir()
    state = STATE_ON[0] / dev.name / "state" if STATE_ON else dev / "state"
    config = dev / "device.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device": DEVICE,
                "platform": "linux",
                "agent_root": str(dev / "agent"),
                "state_dir": str(state),
                "layout": layout,
                "trusted_keys": [pinned],
                "env": {"HEARTBEAT_INTERVAL": "0.2", "PYTHONDONTWRITEBYTECODE": "1"},
                "converge": {"interval": "1h", "jitter": "0s"},
            }
        )
    )
    return config, dev / "plan.json"


def _rss_mb(pid: int, samples: int = 3, every: float = 0.5) -> float:
    """The largest of a few RSS samples of ``pid``, in MB (10^6 bytes)."""
    proc = psutil.Process(pid)
    highest = 0
    for i in range(samples):
        if i:
            time.sleep(every)
        highest = max(highest, proc.memory_info().rss)
    return highest / 1e6


def _idle_rss(cli: list[str], plan: Path, config: Path, env: dict[str, str]) -> tuple[float, str]:
    """Start a periodic `agent-runtime converge`, let it finish its first round and idle;
    (its RSS in MB, the round's result line)."""
    periodic = subprocess.Popen(
        [*cli, "converge", "--plan", str(plan), "--config", str(config)],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    result = ""
    try:
        assert periodic.stdout is not None
        for line in periodic.stdout:
            if line.startswith("result:"):
                result = line.strip()
            if line.startswith("next converge"):
                break
        time.sleep(1.0)
        return _rss_mb(periodic.pid), result
    finally:
        periodic.terminate()
        periodic.wait(10)


def _bench_layout(base: Path, repo: Path, pinned: str, layout: str) -> dict[str, float]:
    config, plan = _device(base / layout, pinned, layout)
    rt = Runtime(load_config(config), out=lambda _l: None)
    config2, plan2 = _device(base / f"{layout}-periodic", pinned, layout)
    rt2 = Runtime(load_config(config2), out=lambda _l: None)
    figures: dict[str, float] = {}
    try:
        _plan(plan, repo, "3.0.0", None, None)
        res = rt.converge_once(FilePlanSource(plan, DEVICE))
        assert res.result.value == "committed", res.detail
        with _serve(repo) as url:
            _plan(plan, repo, "3.0.1", "3.0.0", url)
            t0 = time.perf_counter()
            res = rt.converge_once(FilePlanSource(plan, DEVICE))
            figures["update total (incl. manifest fetch)"] = time.perf_counter() - t0
            assert res.result.value == "committed" and res.outcome is not None, res.detail
            for phase, secs in res.outcome.timings.items():
                figures[phase] = secs
            figures["download+verify+backup+swap"] = sum(
                res.outcome.timings[p] for p in ("DOWNLOAD", "VERIFY", "BACKUP", "SWAP")
            )
            t0 = time.perf_counter()
            res = rt.converge_once(FilePlanSource(plan, DEVICE))
            figures["no-op converge (in process)"] = time.perf_counter() - t0
            assert res.result.value == "noop", res.detail
            cli = [sys.executable, "-m", "agent_runtime.cli"]
            env = {**os.environ, "PYTHONPATH": str(_REPO), "NO_PROXY": "127.0.0.1"}
            t0 = time.perf_counter()
            subprocess.run(
                [*cli, "converge", "--once", "--plan", str(plan), "--config", str(config)],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
            figures["no-op converge (new process, incl. startup)"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import agent_runtime.converge"], env=env,
                           check=True)  # fmt: skip
            figures["  of which interpreter + imports"] = time.perf_counter() - t0
            rss, line = _idle_rss(cli, plan, config, env)
            assert "noop" in line, line
            figures["idle RSS, periodic, after no-op (MB)"] = rss
            # a second device: the periodic process itself downloads 3.0.1 over HTTP
            _plan(plan2, repo, "3.0.0", None, None)
            res = rt2.converge_once(FilePlanSource(plan2, DEVICE))
            assert res.result.value == "committed", res.detail
            _plan(plan2, repo, "3.0.1", "3.0.0", url)
            rss, line = _idle_rss(cli, plan2, config2, env)
            assert "committed" in line, line
            figures["idle RSS, periodic, after HTTP update (MB)"] = rss
    finally:
        rt.service.stop()
        rt2.service.stop()
    return figures


def _bench_https(base: Path, repo: Path, pinned: str) -> dict[str, float]:
    """RSS of a periodic converge that downloaded its update over https, verifying the
    server against the system's CA directory plus a test CA ($SSL_CERT_DIR)."""
    pki = make_pki(base / "pki", "bench runtime ca",
                   system_dir=ssl.get_default_verify_paths().capath)  # fmt: skip
    config, plan = _device(base / "https", pinned, "in_place")
    rt = Runtime(load_config(config), out=lambda _l: None)
    cli = [sys.executable, "-m", "agent_runtime.cli"]
    env = {**os.environ, "PYTHONPATH": str(_REPO), "NO_PROXY": "127.0.0.1",
           "SSL_CERT_DIR": str(pki.ca_dir)}  # fmt: skip
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        env.pop(name, None)
    try:
        _plan(plan, repo, "3.0.0", None, None)
        res = rt.converge_once(FilePlanSource(plan, DEVICE))
        assert res.result.value == "committed", res.detail
        with _serve(repo, pki) as url:
            _plan(plan, repo, "3.0.1", "3.0.0", url)
            rss, line = _idle_rss(cli, plan, config, env)
            assert "committed" in line, line
    finally:
        rt.service.stop()
    return {"idle RSS, periodic, after HTTPS update (MB)": rss}


def _installed(device: Any) -> bool:
    """True once the device's runtime records 3.0.1 installed."""
    return bool(device.installed() == "3.0.1")


@contextlib.contextmanager
def _tls_front(pki: Pki, backend_port: int) -> Iterator[str]:
    """A TLS terminator on 127.0.0.1 in front of a plain-HTTP server (engine serve speaks
    HTTP only; in the field a load balancer terminates TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def serve_one(raw: socket.socket) -> None:
        try:
            front = ctx.wrap_socket(raw, server_side=True)
            back = socket.create_connection(("127.0.0.1", backend_port), timeout=10)
            back.settimeout(None)
        except OSError:
            raw.close()
            return
        threading.Thread(target=pump, args=(front, back), daemon=True).start()
        pump(back, front)
        front.close()
        back.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(raw,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def _samples(repo: Path) -> float:
    """How many performance samples the server stored: proof that the runtimes sampled."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(repo / ".engine" / "state.db")) as db:
        (count,) = db.execute("SELECT coalesce(sum(samples), 0) FROM performance").fetchone()
    return float(count)


def _bench_pull(base: Path) -> dict[str, float]:
    """RSS of pull-mode runtimes against a real `engine serve`, one over HTTP and one over
    https (a TLS terminator in front, the system CA directory plus a test CA): idle before
    and after each installs a rollout."""
    from tests.harness import DeviceSpec, DeviceTimings, Fleet, wait_until

    group = {
        "fleet": {
            "match": {"site": "demo"},
            "agent": {"release": "3.0.0"},
            "rollout": {"waves": [100], "max_parallel": 2, "soak": "1s"},
        }
    }
    names = {"http": "bench-pull-http", "https": "bench-pull-https"}
    timings = DeviceTimings(interval="1s", jitter="0s")
    fleet = Fleet(base / "pull", [DeviceSpec(n, "linux") for n in names.values()], group,
                  timings=timings, poll_interval="1s")  # fmt: skip
    pki = make_pki(base / "pull-pki", "bench pull ca",
                   system_dir=ssl.get_default_verify_paths().capath)  # fmt: skip
    saved = {k: os.environ.get(k) for k in ("SSL_CERT_DIR", "SSL_CERT_FILE")}
    figures: dict[str, float] = {}
    try:
        fleet.setup("3.0.0", parallel=1)
        with _tls_front(pki, fleet.server.port) as https_url:
            tls_device = fleet.device(names["https"])
            tls_device.write_config(fleet.repo.public_key(), https_url,
                                    fleet.server.enrollment_secret)  # fmt: skip
            os.environ["SSL_CERT_DIR"] = str(pki.ca_dir)  # inherited by the runtimes
            os.environ.pop("SSL_CERT_FILE", None)
            fleet.start()
            fleet.wait_reported("3.0.0", timeout=60)
            time.sleep(2.0)  # a few quiet check-ins
            for kind, name in names.items():
                proc = fleet.device(name).proc
                assert proc is not None
                figures[f"idle RSS, pull over {kind}, before update (MB)"] = _rss_mb(proc.pid, 6)
            fleet.repo.set_release("3.0.1")
            applied = fleet.repo.engine("apply", "--yes", check=False, timeout=120)
            assert applied.returncode == 0, applied.stdout + applied.stderr
            for name in names.values():
                wait_until(f"{name} to install 3.0.1", partial(_installed, fleet.device(name)),
                           timeout=90)  # fmt: skip
            fleet.wait_reported("3.0.1", timeout=60)
            time.sleep(2.0)
            for kind, name in names.items():
                proc = fleet.device(name).proc
                assert proc is not None
                figures[f"idle RSS, pull over {kind}, after update (MB)"] = _rss_mb(proc.pid, 6)
            figures["performance samples the server kept (count)"] = _samples(fleet.repo.root)
    finally:
        fleet.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table of figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pad-mb", type=int, default=50)
    parser.add_argument("--layout", choices=["in_place", "versioned", "both"], default="both")
    parser.add_argument("--no-pull", action="store_true", help="skip the pull-mode figures")
    parser.add_argument("--pull-only", action="store_true", help="only the pull-mode figures")
    parser.add_argument(
        "--state-on",
        type=Path,
        help="keep state_dir (staging) under this directory, e.g. /dev/shm: another file "
        "system than the agent root, so every swapped file is copied (EXDEV)",
    )
    args = parser.parse_args(argv)
    if args.pull_only:
        with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
            for name, value in _bench_pull(Path(tmp)).items():
                print(f"{name:<46}{value:>12.3f}")
        return 0
    if args.state_on is not None:
        STATE_ON.append(Path(tempfile.mkdtemp(prefix="bench-state-", dir=args.state_on)))
    layouts = ["in_place", "versioned"] if args.layout == "both" else [args.layout]
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        base = Path(tmp)
        key = generate_key()
        keyfile = base / "release.key"
        keyfile.write_bytes(private_key_pem(key))
        repo = base / "repo"
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            build(repo, ["3.0.0", "3.0.1"], expires="2036-01-01T00:00:00Z",
                  pad_mb=args.pad_mb, key=keyfile)  # fmt: skip
        results = {lay: _bench_layout(base, repo, public_key_text(key.public_key()), lay)
                   for lay in layouts}  # fmt: skip
        https = _bench_https(base, repo, public_key_text(key.public_key()))
        pull = {} if args.no_pull else _bench_pull(base)
    for d in STATE_ON:
        shutil.rmtree(d, ignore_errors=True)
    names = list(next(iter(results.values())))
    print(f"agent-runtime benchmark: 3.0.0 -> 3.0.1, agent padded by {args.pad_mb} MiB, "
          "HTTP on 127.0.0.1")  # fmt: skip
    print(f"{'figure (seconds unless noted)':<46}" + "".join(f"{lay:>12}" for lay in layouts))
    for name in names:
        row = "".join(f"{results[lay].get(name, float('nan')):>12.3f}" for lay in layouts)
        print(f"{name:<46}{row}")
    print("https (system CA directory + a test CA), in_place")
    for name, value in https.items():
        print(f"{name:<46}{value:>12.3f}")
    if pull:
        print("pull mode against engine serve on 127.0.0.1 (example agent, 3.0.0 -> 3.0.1, "
              "in_place; https through a TLS terminator)")  # fmt: skip
        for name, value in pull.items():
            print(f"{name:<46}{value:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
