"""Fleet benchmark: one `engine serve` worker against many simulated devices on 127.0.0.1.

Two measurements, each against a real `engine serve` (one worker) started here:

``throughput``
    Enrolls ``--devices`` devices through the API, then runs ``wrk`` (a
    compiled load generator, so the client does not measure itself) with a Lua
    script that rotates device ids and tokens and POSTs real ``CheckinRequest``
    bodies to ``/v1/devices/{id}/checkin``: token check, report upsert, plan
    lookup, response. Prints requests/s and p50/p99 latency, on SQLite and on
    PostgreSQL (a temporary database, when 127.0.0.1:5432 answers).

``converge``
    Simulates ``--devices`` devices in a separate process (asyncio, raw
    HTTP/1.1 keep-alive connections) speaking the real protocol with
    compressed timings: a device that is offered a plan "applies" it after a
    short random delay by reporting the new version as committed, running and
    heartbeating. Measures the time from `engine apply` until the whole fleet
    reports the new release, through waves [1, 10, 50, 100].

Usage::

    python bench/fleet.py throughput [--devices 2000] [--duration 15] [--connections 50]
                                     [--backend sqlite,postgresql]
    python bench/fleet.py converge   [--devices 10000] [--poll 10] [--soak 2s]
                                     [--max-parallel 2000]
    python bench/fleet.py all

Figures are printed, never asserted (tests/ has no timed assertions).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(_REPO))

from tests.harness import OperatorRepo, ServerProcess, wait_until  # noqa: E402

PG_ADMIN_DSN = os.environ.get(
    "ENGINE_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
)
CHECKIN_BODY = {
    "platform": "linux",
    "agent_version": "3.0.0",
    "known_good": "3.0.0",
    "runtime_version": "0.1.0",
    "agent_running": True,
    "transaction": {"target": "3.0.0", "phase": "DONE", "result": "committed", "attempts": 1},
}


def _say(line: str) -> None:
    print(line, flush=True)


# -- operator repos ----------------------------------------------------------------------------


def _bench_repo(
    base: Path,
    devices: int,
    *,
    poll: str,
    rollout: dict[str, Any],
    nats: dict[str, Any] | None = None,
) -> OperatorRepo:
    """An operator repo with ``devices`` linux devices ``sim-NNNNN`` in one group on 3.0.0
    (with engine.yaml ``nats`` when given)."""
    from tests.harness import DeviceSpec

    repo = OperatorRepo(base / "fleet")
    specs = [DeviceSpec(f"sim-{i:05d}", "linux") for i in range(devices)]
    groups = {"fleet": {"match": {"site": "demo"}, "agent": {"release": "3.0.0"},
                        "rollout": rollout}}  # fmt: skip
    repo.create(specs, groups, poll_interval=poll, settings={"nats": nats} if nats else None)
    return repo


# -- PostgreSQL --------------------------------------------------------------------------------


@contextlib.contextmanager
def _postgres_database() -> Iterator[str | None]:
    """A temporary PostgreSQL database's URL (dropped afterwards), or None when unreachable."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        yield None
        return
    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    except psycopg.Error as e:
        _say(f"PostgreSQL not reachable ({str(e).strip()[:120]}): skipped")
        yield None
        return
    name = f"fleet_bench_{uuid.uuid4().hex[:12]}"
    info = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield (
                f"postgresql+psycopg://{info['user']}@{info.get('host', '127.0.0.1')}:"
                f"{info.get('port', '5432')}/{name}"
            )
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


# -- throughput with wrk -----------------------------------------------------------------------


def ensure_wrk() -> str:
    """The path of wrk, installing it with apt-get when it is missing (and we may)."""
    found = shutil.which("wrk")
    if found:
        return found
    _say("wrk (the HTTP load generator) is not installed; running: apt-get install -y wrk")
    if os.geteuid() != 0:
        raise SystemExit("not root: install wrk first with scripts/bench-deps (uses sudo)")
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get did not install wrk")
    return found


def enroll_all(server: ServerProcess, ids: list[str], parallel: int = 8) -> dict[str, str]:
    """Enroll every id through POST /v1/enroll; id → token."""

    def one(chunk: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        with requests.Session() as s:
            s.trust_env = False
            for device in chunk:
                r = s.post(
                    server.url + "/v1/enroll",
                    json={"device": device, "platform": "linux",
                          "enrollment_secret": server.enrollment_secret},
                    timeout=30,
                )  # fmt: skip
                r.raise_for_status()
                out[device] = r.json()["token"]
        return out

    chunks = [ids[i::parallel] for i in range(parallel)]
    tokens: dict[str, str] = {}
    with ThreadPoolExecutor(parallel) as pool:
        for part in pool.map(one, chunks):
            tokens.update(part)
    return tokens


LUA = """-- generated by bench/fleet.py: rotate device ids and tokens, POST real check-ins
local devices = {
%(devices)s
}
local body = '%(body)s'
local counter = 0
local threads = {}

function setup(thread)
  thread:set("offset", counter * 7919)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  i = offset
end

function request()
  i = i + 1
  local d = devices[(i %% #devices) + 1]
  return wrk.format("POST", "/v1/devices/" .. d[1] .. "/checkin",
    {["Authorization"] = "Bearer " .. d[2], ["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, ' ..
    '"p99_us": %%d, "max_us": %%d, "non_2xx": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def write_lua(path: Path, tokens: dict[str, str]) -> None:
    """The wrk script for these devices."""
    rows = ",\n".join(f'  {{"{d}", "{t}"}}' for d, t in tokens.items())
    body = json.dumps(CHECKIN_BODY, separators=(",", ":"))
    path.write_text(LUA % {"devices": rows, "body": body})


def run_wrk(
    wrk: str, url: str, script: Path, *, threads: int, connections: int, duration: int
) -> dict[str, Any]:
    """Run wrk; its RESULT line as a dict (plus the command)."""
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
           "-s", str(script), url]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration + 60)
    match = re.search(r"^RESULT (\{.*\})$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or match is None:
        raise SystemExit(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(match.group(1))
    result["command"] = " ".join([*cmd[:-3], "-s", script.name, url])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Check-ins per second and latency of one worker, per backend."""
    wrk = ensure_wrk()
    rows: list[dict[str, Any]] = []
    workers = [int(w) for w in str(args.workers).split(",")]
    backends = args.backend.split(",")
    for backend, count in [(b, w) for b in backends for w in workers]:
        with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
            base = Path(tmp)
            ctx = _postgres_database() if backend == "postgresql" else contextlib.nullcontext("")
            with ctx as pg:
                if backend == "postgresql" and pg is None:
                    continue
                rows.append(_throughput_one(wrk, base, backend, pg or None, args, count))
    _say("")
    _say(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    _say(f"{'backend':<11}{'workers':>8}{'devices':>8}{'conns':>6}{'req/s':>9}{'p50 ms':>8}"
         f"{'p90 ms':>8}{'p99 ms':>8}{'non-2xx':>9}{'errors':>7}")  # fmt: skip
    for r in rows:
        _say(f"{r['backend']:<11}{r['workers']:>8}{r['devices']:>8}{r['connections']:>6}"
             f"{r['rps']:>9.0f}"
             f"{r['p50_us'] / 1000:>8.1f}{r['p90_us'] / 1000:>8.1f}{r['p99_us'] / 1000:>8.1f}"
             f"{r['non_2xx']:>9}{r['socket_errors']:>7}")  # fmt: skip
    return rows


def _throughput_one(
    wrk: str,
    base: Path,
    backend: str,
    state: str | None,
    args: argparse.Namespace,
    workers: int = 1,
) -> dict[str, Any]:
    _say(f"== throughput on {backend}, {workers} worker(s): {args.devices} devices, "
         f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
         f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    repo = _bench_repo(base, 1, poll="300s", rollout={"waves": [100]})
    server = ServerProcess(
        repo, base / "server.log", state=state, args=["--allow-unknown-devices",
                                                      "--log-level", "warning",
                                                      "--workers", str(workers)],
    )  # fmt: skip
    server.start()
    try:
        t0 = time.perf_counter()
        tokens = enroll_all(server, [f"bench-{i:05d}" for i in range(args.devices)])
        _say(f"enrolled {len(tokens)} devices in {time.perf_counter() - t0:.1f}s")
        script = base / "checkin.lua"
        write_lua(script, tokens)
        # warm-up: every device's first check-in inserts its report row
        run_wrk(wrk, server.url, script, threads=args.threads, connections=args.connections,
                duration=3)  # fmt: skip
        result = run_wrk(
            wrk, server.url, script, threads=args.threads, connections=args.connections,
            duration=args.duration,
        )  # fmt: skip
    finally:
        server.stop()
    result.update(backend=backend, devices=args.devices, connections=args.connections,
                  workers=workers, load=os.getloadavg()[0])  # fmt: skip
    _say(f"{result['rps']:.0f} check-ins/s, p50 {result['p50_us'] / 1000:.1f} ms, "
         f"p99 {result['p99_us'] / 1000:.1f} ms, non-2xx {result['non_2xx']}")  # fmt: skip
    _say(f"command: {result['command']}")
    return result


# -- the device simulator (runs in its own process) --------------------------------------------


class _Conn:
    """One HTTP/1.1 keep-alive connection (just enough of the protocol for this API)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes | None, token: str | None
    ) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if token is not None:
            head.append(f"Authorization: Bearer {token}")
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
        try:
            status_line = await self.reader.readline()
            status = int(status_line.split()[1])
            length = 0
            close = False
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                key = name.strip().lower()
                if key == "content-length":
                    length = int(value)
                elif key == "connection" and value.strip().lower() == "close":
                    close = True
            data = await self.reader.readexactly(length) if length else b""
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            self.close()
            raise
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class _Simulator:
    def __init__(self, args: argparse.Namespace) -> None:
        from urllib.parse import urlsplit

        u = urlsplit(args.url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.args = args
        self.stats: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.stop = asyncio.Event()
        self.pool: asyncio.Queue[_Conn] = asyncio.Queue()
        self.wake: dict[str, asyncio.Event] = {}  # device -> set by a NATS nudge

    async def call(
        self, method: str, path: str, payload: Any, token: str | None
    ) -> tuple[int, bytes]:
        import orjson

        body = None if payload is None else orjson.dumps(payload)
        conn = await self.pool.get()
        try:
            status, data = await conn.request(method, path, body, token)
        except Exception:
            self.stats["errors"] += 1
            return 0, b""
        finally:
            self.pool.put_nowait(conn)
        self.stats[f"{path.rsplit('/', 1)[-1]} {status}"] += 1
        return status, data

    async def device(self, index: int) -> None:
        import orjson

        args = self.args
        device = f"{args.prefix}{index:05d}"
        token = None
        if args.pre_enrolled:
            token = _bench_token(args.pre_enrolled, device)
        while token is None and not self.stop.is_set():
            status, data = await self.call(
                "POST", "/v1/enroll",
                {"device": device, "platform": "linux", "enrollment_secret": args.secret,
                 # a retry after a lost answer proves it is the same device
                 "device_key": f"{device}-key".ljust(32, "0")}, None,
            )  # fmt: skip
            if status == 200:
                token = orjson.loads(data)["token"]
            else:
                await asyncio.sleep(random.uniform(0.5, 2.0))
        version = "3.0.0"
        self.versions[version] += 1
        wake = self.wake.setdefault(device, asyncio.Event())
        tx: dict[str, Any] | None = None
        await asyncio.sleep(random.uniform(0, args.poll))
        while not self.stop.is_set():
            report = {"platform": "linux", "agent_version": version, "known_good": version,
                      "runtime_version": "sim", "agent_running": True}  # fmt: skip
            if tx is not None:
                report["transaction"] = tx
            status, data = await self.call("POST", f"/v1/devices/{device}/checkin", report, token)
            delay = random.uniform(1, 3)
            if status == 200:
                answer = orjson.loads(data)
                delay = float(answer.get("poll_interval") or args.poll)
                plan = answer.get("plan")
                desired = plan.get("desired") if isinstance(plan, dict) else None
                if desired and desired != version:
                    await asyncio.sleep(random.uniform(args.apply_min, args.apply_max))
                    now = datetime.now(UTC).isoformat()
                    await self.call("POST", f"/v1/devices/{device}/events", {"events": [
                        {"target": desired, "step": "download", "status": "ok", "at": now},
                        {"target": desired, "step": "commit", "status": "ok", "at": now},
                    ]}, token)  # fmt: skip
                    await self.call("POST", f"/v1/devices/{device}/heartbeat",
                                    {"version": desired, "at": now, "pid": 1000 + index},
                                    token)  # fmt: skip
                    self.versions[version] -= 1
                    version = desired
                    self.versions[version] += 1
                    tx = {"target": desired, "phase": "DONE", "result": "committed",
                          "attempts": 1, "finished_at": now}  # fmt: skip
                    continue  # report at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)
            wake.clear()

    async def report(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)
            line = {"t": time.time(), "stats": dict(self.stats),
                    "versions": {k: v for k, v in self.versions.items() if v}}  # fmt: skip
            Path(self.args.stats).write_text(json.dumps(line))

    async def listen(self) -> None:
        """Wake a device when its nudge arrives (a random share of the nudge's spread later)."""
        import nats

        nc = await nats.connect(self.args.nats, connect_timeout=5)
        loop = asyncio.get_running_loop()

        async def on_nudge(msg: Any) -> None:
            self.stats["nudges"] += 1
            event = self.wake.get(msg.subject.rsplit(".", 1)[-1])
            if event is not None:
                spread = float(json.loads(msg.data).get("spread") or 0)
                loop.call_later(random.uniform(0, spread), event.set)

        await nc.subscribe(f"{self.args.nudge_prefix}.*", cb=on_nudge)
        await self.stop.wait()
        await nc.close()

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        listener = asyncio.create_task(self.listen()) if self.args.nats else None
        for _ in range(self.args.connections):
            self.pool.put_nowait(_Conn(self.host, self.port))
        first = self.args.first
        tasks = [
            asyncio.create_task(self.device(i)) for i in range(first, first + self.args.devices)
        ]
        reporter = asyncio.create_task(self.report())
        await self.stop.wait()
        for event in self.wake.values():
            event.set()
        await asyncio.gather(*tasks, reporter, return_exceptions=True)
        if listener is not None:
            await asyncio.gather(listener, return_exceptions=True)


def simulate(args: argparse.Namespace) -> None:
    """Run simulated devices until SIGTERM (``_simulate`` subcommand, a separate process)."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_Simulator(args).main())


def _stored_versions(url: str) -> dict[str, int]:
    """How many stored reports name each agent version."""
    from sqlalchemy import text

    from engine.store import Store

    with Store.open(url, migrate=False) as store, store.read() as conn:
        rows = conn.execute(
            text("SELECT agent_version, count(*) FROM reports GROUP BY agent_version")
        ).all()
    return {str(v): int(c) for v, c in rows if v is not None}


def _bench_token(seed: str, device: str) -> str:
    """The token of a pre-enrolled simulated device."""
    return f"bench-{seed}-{device}"


def _pre_enroll(url: str, count: int, seed: str) -> None:
    """Enroll ``sim-NNNNN`` devices directly in the store (tokens from ``_bench_token``)."""
    from sqlalchemy import insert

    from engine.server.credentials import hash_token
    from engine.store import Store
    from engine.store.schema import devices

    now = datetime.now(UTC)
    with Store.open(url, migrate=False) as store:
        for start in range(0, count, 10_000):
            rows = [
                {"device": d, "platform": "linux", "token_hash": hash_token(_bench_token(seed, d)),
                 "enrolled_at": now, "revoked_at": None, "runtime_version": "sim",
                 "enrollments": 1}
                for d in (f"sim-{i:05d}" for i in range(start, min(count, start + 10_000)))
            ]  # fmt: skip
            with store.write() as conn:
                conn.execute(insert(devices), rows)


def _rollout_figures(url: str, server: ServerProcess) -> dict[str, float]:
    """Per-device offer -> committed times, apply -> last committed, server RSS, DB size."""
    import psutil
    from sqlalchemy import text

    from engine.store import Store

    with Store.open(url, migrate=False) as store, store.read() as conn:
        rows = conn.execute(text(
            "SELECT rd.offered_at, rd.finished_at, r.created_at FROM rollout_devices rd "
            "JOIN rollouts r ON r.id = rd.rollout_id WHERE rd.state = 'succeeded'"
        )).all()  # fmt: skip
        if conn.dialect.name == "postgresql":
            size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
        else:
            size = Path(url.removeprefix("sqlite:///")).stat().st_size

    def instant(v: Any) -> datetime:
        return v if isinstance(v, datetime) else datetime.fromisoformat(v)

    spans = sorted((instant(f) - instant(o)).total_seconds() for o, f, _ in rows if o is not None)
    last = max((instant(f) - instant(c)).total_seconds() for _, f, c in rows) if rows else 0.0
    rss = 0
    if server.proc is not None:
        with contextlib.suppress(psutil.Error):
            top = psutil.Process(server.proc.pid)
            rss = sum(p.memory_info().rss for p in [top, *top.children(recursive=True)])

    def pct(q: float) -> float:
        return spans[min(len(spans) - 1, int(q * len(spans)))] if spans else 0.0

    return {"last_s": last, "p50_s": pct(0.5), "p95_s": pct(0.95),
            "rss_mb": rss / 2**20, "db_mb": float(size or 0) / 2**20}  # fmt: skip


# -- convergence ---------------------------------------------------------------------------------


def converge(args: argparse.Namespace) -> dict[str, Any]:
    """Time for a rollout over ``--devices`` simulated devices to converge."""
    waves = [float(w) for w in args.waves.split(",")]
    rollout = {"waves": waves, "soak": args.soak, "max_parallel": args.max_parallel,
               "max_failure_rate": 0.05, "min_success_rate": 0.95}  # fmt: skip
    backend = getattr(args, "converge_backend", "sqlite")
    workers = int(getattr(args, "converge_workers", 1))
    with (
        tempfile.TemporaryDirectory(prefix="fleet-converge-") as tmp,
        _postgres_database() if backend == "postgresql" else contextlib.nullcontext(None) as pg,
    ):
        base = Path(tmp)
        _say(f"== converge: {args.devices} simulated devices, waves {args.waves}, soak "
             f"{args.soak}, max_parallel {args.max_parallel}, poll {args.poll}s, "
             f"{backend} with {workers} worker(s), nudges "
             f"{'over ' + args.nats if getattr(args, 'nats', '') else 'off'}, load average "
             f"{os.getloadavg()[0]:.2f}")  # fmt: skip
        t0 = time.perf_counter()
        nats_url = getattr(args, "nats", "") or ""
        nudge_prefix = f"benchnudge{uuid.uuid4().hex[:8]}"
        nats = None
        if nats_url:
            nats = {"url": nats_url, "nudge_subject": f"{nudge_prefix}.{{device}}",
                    "nudge_spread": args.nudge_spread, "heartbeats": False}  # fmt: skip
        repo = _bench_repo(base, args.devices, poll=f"{args.poll}s", rollout=rollout, nats=nats)
        _say(f"operator repo with {args.devices} devices in {time.perf_counter() - t0:.1f}s")
        server = ServerProcess(
            repo,
            base / "server.log",
            state=pg,
            args=["--log-level", "warning", "--workers", str(workers)],
        )
        server.start(timeout=300)  # a loaded machine starts a big repo slowly
        args.state_url = pg or f"sqlite:///{repo.root / '.engine' / 'state.db'}"
        seed = ""
        if getattr(args, "pre_enroll", False):
            seed = uuid.uuid4().hex[:12]
            t0 = time.perf_counter()
            _pre_enroll(args.state_url, args.devices, seed)
            _say(f"{args.devices} enrollments written to the store in "
                 f"{time.perf_counter() - t0:.1f}s")  # fmt: skip
        procs = max(1, int(getattr(args, "sim_processes", 1)))
        sims: list[subprocess.Popen[bytes]] = []
        stats_files: list[Path] = []
        share, extra = divmod(args.devices, procs)
        first = 0
        for k in range(procs):
            count = share + (1 if k < extra else 0)
            stats_file = base / f"sim-stats-{k}.json"
            stats_files.append(stats_file)
            sims.append(
                subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "_simulate",
                     "--url", server.url, f"--secret={server.enrollment_secret}",
                     "--devices", str(count), "--first", str(first),
                     "--connections", str(max(8, args.sim_connections // procs)),
                     "--poll", str(args.poll), "--stats", str(stats_file),
                     f"--pre-enrolled={seed}", f"--nats={nats_url}",
                     f"--nudge-prefix={nudge_prefix}"],
                    start_new_session=True,
                )
            )  # fmt: skip
            first += count
        try:
            return _converge_run(args, repo, server, sims, stats_files)
        finally:
            for sim in sims:
                sim.send_signal(signal.SIGTERM)
            for sim in sims:
                try:
                    sim.wait(30)
                except subprocess.TimeoutExpired:
                    sim.kill()
            server.stop()


def _converge_run(
    args: argparse.Namespace,
    repo: OperatorRepo,
    server: ServerProcess,
    sims: list[subprocess.Popen[bytes]],
    stats_files: list[Path],
) -> dict[str, Any]:
    n = args.devices

    def versions() -> dict[str, int]:
        for sim in sims:
            if sim.poll() is not None:
                raise SystemExit(f"a simulator exited with {sim.returncode}")
        # From the store: a saturated server must not make the bench's own view time out.
        return _stored_versions(args.state_url)

    def progress(v: Callable[[], dict[str, int]] = versions) -> str:
        return ", ".join(f"{k}: {c}" for k, c in sorted(v().items())) or "nothing yet"

    t0 = time.perf_counter()
    wait_until(f"{n} devices to enroll and report 3.0.0", lambda: versions().get("3.0.0") == n,
               timeout=600, interval=1, progress=progress, out=_say, every=5)  # fmt: skip
    enrolled = time.perf_counter() - t0
    _say(f"all {n} devices enrolled and reported 3.0.0 in {enrolled:.1f}s")
    repo.set_release("3.0.1")
    t_apply = time.perf_counter()
    state_env = {"ENGINE_STATE_URL": args.state_url}
    applied = repo.engine("apply", "--yes", timeout=600, env=state_env)
    apply_secs = time.perf_counter() - t_apply
    _say(f"engine apply --yes took {apply_secs:.1f}s")
    if applied.stdout.strip():
        _say("  " + applied.stdout.strip().splitlines()[-1])
    wait_until(f"{n} devices to run 3.0.1", lambda: versions().get("3.0.1") == n,
               timeout=args.timeout, interval=1, progress=progress, out=_say, every=5)  # fmt: skip
    total = time.perf_counter() - t_apply
    requests: Counter[str] = Counter()
    for stats_file in stats_files:
        with contextlib.suppress(OSError, ValueError):
            requests.update(json.loads(stats_file.read_text()).get("stats") or {})
    _say("")
    _say(f"{'devices':>8}{'waves':>14}{'soak':>6}{'max_par':>8}{'poll s':>7}"
         f"{'enroll s':>9}{'apply s':>8}{'converge s':>11}")  # fmt: skip
    _say(f"{n:>8}{args.waves:>14}{args.soak:>6}{args.max_parallel:>8}{args.poll:>7}"
         f"{enrolled:>9.1f}{apply_secs:>8.1f}{total:>11.1f}")  # fmt: skip
    _say(f"simulator requests ({len(sims)} processes): {dict(requests)}")
    extra = _rollout_figures(args.state_url, server)
    _say(f"apply -> last committed {extra['last_s']:.1f}s; per device offer -> committed "
         f"p50 {extra['p50_s']:.1f}s p95 {extra['p95_s']:.1f}s; server RSS "
         f"{extra['rss_mb']:.0f} MB; database {extra['db_mb']:.0f} MB; load average "
         f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    return {"devices": n, "enroll_s": enrolled, "apply_s": apply_secs, "converge_s": total}


# -- command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the chosen benchmark."""
    parser = argparse.ArgumentParser(prog="bench/fleet.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    tp = sub.add_parser("throughput", help="check-ins/s of one worker (wrk)")
    cv = sub.add_parser("converge", help="time for a simulated fleet's rollout to converge")
    both = sub.add_parser("all", help="throughput, then converge")
    for p in (tp, both):
        p.add_argument("--devices", type=int, default=2000)
        p.add_argument("--duration", type=int, default=15)
        p.add_argument("--connections", type=int, default=50)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--backend", default="sqlite,postgresql")
        p.add_argument(
            "--workers", default="1", help="engine serve --workers per backend, e.g. 1,2"
        )
    cv.add_argument("--devices", dest="sim_devices", type=int, default=10000)
    both.add_argument("--sim-devices", dest="sim_devices", type=int, default=10000)
    for p in (cv, both):
        p.add_argument("--waves", default="1,10,50,100")
        p.add_argument("--soak", default="2s")
        p.add_argument("--max-parallel", dest="max_parallel", type=int, default=2000)
        p.add_argument("--poll", type=float, default=10.0)
        p.add_argument("--sim-connections", dest="sim_connections", type=int, default=64)
        p.add_argument("--timeout", type=float, default=900)
        p.add_argument("--converge-backend", dest="converge_backend", default="sqlite",
                       choices=["sqlite", "postgresql"])  # fmt: skip
        p.add_argument("--converge-workers", dest="converge_workers", type=int, default=1)
        p.add_argument("--nats", default="", help="NATS URL: the engine nudges offered devices")
        p.add_argument("--nudge-spread", dest="nudge_spread", default="1s")
        p.add_argument("--sim-processes", dest="sim_processes", type=int, default=1,
                       help="simulator processes sharing the devices (one is CPU-bound "
                       "beyond some 30,000 devices)")  # fmt: skip
        p.add_argument("--pre-enroll", dest="pre_enroll", action="store_true",
                       help="write the devices' enrollments into the store before the run "
                       "(large fleets: enrollment is not what is measured)")  # fmt: skip
    sim = sub.add_parser("_simulate", help=argparse.SUPPRESS)
    sim.add_argument("--url", required=True)
    sim.add_argument("--secret", required=True)
    sim.add_argument("--devices", type=int, required=True)
    sim.add_argument("--first", type=int, default=0, help="index of this process's first device")
    sim.add_argument("--connections", type=int, default=64)
    sim.add_argument("--poll", type=float, default=10.0)
    sim.add_argument("--prefix", default="sim-")
    sim.add_argument("--apply-min", dest="apply_min", type=float, default=0.2)
    sim.add_argument("--apply-max", dest="apply_max", type=float, default=1.0)
    sim.add_argument("--stats", required=True)
    sim.add_argument("--pre-enrolled", dest="pre_enrolled", default="")
    sim.add_argument("--nats", default="", help="NATS URL: wake devices on their nudges")
    sim.add_argument("--nudge-prefix", dest="nudge_prefix", default="")
    args = parser.parse_args(argv)
    if args.cmd == "_simulate":
        simulate(args)
        return 0
    if args.cmd in ("throughput", "all"):
        throughput(args)
    if args.cmd in ("converge", "all"):
        args.devices = args.sim_devices
        converge(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
