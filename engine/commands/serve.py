"""`engine serve`: run the HTTP server for devices and operators, and the rollout controller."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.commands._args import add_repo_option, add_state_option
from engine.errors import EngineError
from inventory.errors import InventoryError

__all__ = ["register", "run"]

EXIT_OK = 0
EXIT_ERROR = 1

ENV_WEBHOOK_SECRET = "ENGINE_WEBHOOK_SECRET"
#: prometheus_client's multiprocess directory (``--workers`` > 1); see _metrics_dir.
ENV_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("engine.server")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `serve` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="serve devices and operators over HTTP and run rollouts",
        description="Serve the device API (enrollment, check-in, events, heartbeats, "
        "releases, artifacts), the operator API and dashboard, and the endpoints agents "
        "in the field call; run the rollout controller. Stops cleanly on SIGTERM/SIGINT.",
    )
    add_repo_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    add_state_option(p)
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes (default 1; SQLite: keep 1)"
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        metavar="SECONDS",
        help="seconds between device check-ins (default: engine.yaml poll_interval, 60)",
    )
    p.add_argument(
        "--allow-unknown-devices",
        action="store_true",
        help="let any device id enroll, not only the inventory's",
    )
    p.add_argument(
        "--webhook-url",
        metavar="URL",
        help="POST rollout halted/paused/completed and device failed events to this URL "
        f"(signed with ${ENV_WEBHOOK_SECRET}; kept in the store until delivered)",
    )
    p.add_argument(
        "--no-controller",
        action="store_true",
        help="serve only; another replica runs the rollout controller",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        metavar="SECONDS",
        help="close a connection whose request headers take longer (default: engine.yaml "
        "server_limits.header_timeout, 10)",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=float,
        metavar="SECONDS",
        help="close an idle keep-alive connection after this long (default: engine.yaml "
        "server_limits.keep_alive_timeout, 5)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="open connections per worker; more are closed at once (default: engine.yaml "
        "server_limits.max_connections, 1000)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def _error(message: str) -> int:
    print(f"engine serve: {message}", file=sys.stderr)
    return EXIT_ERROR


def run(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code."""
    if args.workers < 1:
        return _error("--workers must be at least 1")
    try:
        metrics_dir = _metrics_dir(args.workers)
    except OSError as e:
        return _error(f"cannot prepare ${ENV_MULTIPROC_DIR}: {e}")
    try:
        return _run(args)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _metrics_dir(workers: int) -> Path | None:
    """Set up prometheus_client's multiprocess mode for ``workers`` > 1, before it is imported.

    Every process (workers and this one, which runs the controller) writes its
    counters to files in ``$PROMETHEUS_MULTIPROC_DIR``, and ``/metrics`` sums
    them. An operator's directory is used, emptied of the last run's files;
    else a temporary one is made: the directory this returns, removed at exit.
    """
    if workers == 1:
        os.environ.pop(ENV_MULTIPROC_DIR, None)
        return None
    given = os.environ.get(ENV_MULTIPROC_DIR)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return None
    made = Path(tempfile.mkdtemp(prefix="engine-metrics-"))
    os.environ[ENV_MULTIPROC_DIR] = str(made)
    return made


def _run(args: argparse.Namespace) -> int:
    from engine.server.bootstrap import ServeOptions, build_server, options_to_env, setup_logging

    setup_logging(args.log_level)
    options = ServeOptions(
        root=str(Path(args.directory).absolute()),
        state=args.state,
        poll_interval=args.poll_interval,
        allow_unknown_devices=args.allow_unknown_devices,
        log_level=args.log_level,
    )
    try:
        built = build_server(options)
    except InventoryError as e:
        return _error(f"the operator repo has errors:\n{e}")
    except EngineError as e:
        return _error(str(e))
    settings = built.settings
    try:
        limits = connection_limits(built.repo.settings.server_limits, args)
    except ValueError as e:
        settings.store.close()
        return _error(str(e))
    try:
        sock = socket.create_server((args.host, args.port), reuse_port=False)
    except OSError as e:
        settings.store.close()
        return _error(f"cannot listen on {args.host}:{args.port}: {e.strerror}")
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    stop = threading.Event()
    bridge = _start_nats(built)
    controller_thread = None
    if not args.no_controller:
        try:
            controller_thread = _start_controller(settings, args.webhook_url, stop, bridge)
        except ValueError as e:  # a bad ENGINE_ROLLOUT_* timing
            if bridge is not None:
                bridge.stop()
            settings.store.close()
            sock.close()
            return _error(str(e))
    print(f"engine serve: store {settings.store.display_url}", flush=True)
    print(f"engine serve: admin token in {built.admin.origin}", flush=True)
    print(f"engine serve: enrollment secret in {built.enrollment.origin}", flush=True)
    print(f"engine serve: metrics token in {built.metrics.origin}", flush=True)
    # uvicorn handles SIGTERM/SIGINT itself, then raises the signal again once it
    # has shut down: these handlers take it so that the cleanup below still runs.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _note_signal)
    try:
        if args.workers == 1:
            _serve_one(built.app(), sock, url, args.log_level, limits)
        else:
            os.environ.update(options_to_env(options, built))
            _serve_many(sock, url, args.workers, args.log_level, limits)
    finally:
        stop.set()
        if controller_thread is not None:
            controller_thread.join(timeout=10)
        if bridge is not None:
            bridge.stop()
        settings.store.close()
        sock.close()
    print("engine serve: stopped", flush=True)
    return EXIT_OK


def _note_signal(signum: int, _frame: object) -> None:
    log.info("engine serve: %s received, stopping", signal.Signals(signum).name)


def _start_nats(built: Any) -> Any:
    """The NATS link of engine.yaml's ``nats`` section, started; None when there is none."""
    nats_settings = built.repo.settings.nats
    if nats_settings is None:
        return None
    from engine.server.nats_bridge import NatsBridge

    bridge = NatsBridge(
        nats_settings,
        built.settings.store,
        root=built.settings.repo_root,
        clock=built.settings.clock,
    )
    bridge.start()
    print(f"engine serve: NATS at {nats_settings.url} (nudges, heartbeats)", flush=True)
    return bridge


def _start_controller(
    settings: Any, webhook_url: str | None, stop: threading.Event, nudger: Any
) -> Any:
    from datetime import timedelta

    from engine.rollouts.controller import RolloutController
    from engine.rollouts.model import Timings

    timings = Timings.from_env()
    if timings.poll_interval is None:
        timings = replace(timings, poll_interval=timedelta(seconds=settings.poll_interval))
    controller = RolloutController(
        settings.store,
        clock=settings.clock,
        timings=timings,
        webhook_url=webhook_url,
        webhook_secret=os.environ.get(ENV_WEBHOOK_SECRET) or None,
        nudger=nudger,
    )
    thread = threading.Thread(
        target=controller.run, args=(stop,), name="rollout-controller", daemon=True
    )
    thread.start()
    return thread


def connection_limits(configured: Any, args: argparse.Namespace) -> Any:
    """The connection limits: flags over engine.yaml ``server_limits``; raises ValueError
    for a value out of range, or when the process may not open enough files for them."""
    from engine.server._connections import ConnectionLimits

    header = args.header_timeout
    keep_alive = args.keep_alive_timeout
    limits = ConnectionLimits(
        header_timeout=configured.header_timeout.total_seconds() if header is None else header,
        keep_alive_timeout=(
            configured.keep_alive_timeout.total_seconds() if keep_alive is None else keep_alive
        ),
        max_connections=(
            configured.max_connections if args.max_connections is None else args.max_connections
        ),
    )
    if not 0 < limits.header_timeout <= 3600:
        raise ValueError("--header-timeout must be more than 0 and at most 3600 seconds")
    if not 0 < limits.keep_alive_timeout <= 3600:
        raise ValueError("--keep-alive-timeout must be more than 0 and at most 3600 seconds")
    if not 1 <= limits.max_connections <= 1_000_000:
        raise ValueError("--max-connections must be between 1 and 1000000")
    _raise_file_limit(limits.max_connections + _SPARE_FILES)
    return limits


#: Descriptors besides client connections: store, log, artifacts being sent, the listener.
_SPARE_FILES = 256


def _raise_file_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to ``needed`` (up to the hard limit); ValueError when
    the hard limit is lower, so the connection cap is met before descriptors run out."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ValueError(
                f"max_connections needs {needed} open files but the limit is {hard} "
                "(ulimit -n): lower --max-connections or raise the limit"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _uvicorn_config(app: Any, log_level: str, limits: Any, **extra: Any) -> Any:
    from engine.server._connections import EngineConfig

    return EngineConfig(
        app,
        limits=limits,
        access_log=False,
        log_config=None,
        log_level=log_level,
        loop="uvloop",
        lifespan="on",  # shutdown writes the check-ins' buffered reports
        # Nothing uses the client's address: no X-Forwarded-* processing per request.
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        **extra,
    )


def _serve_one(app: Any, sock: socket.socket, url: str, log_level: str, limits: Any) -> None:
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(f"engine serve: ready at {url} (dashboard {url}/, API {url}/docs)")
                sys.stdout.flush()

    _Server(_uvicorn_config(app, log_level, limits)).run(sockets=[sock])


def _serve_many(sock: socket.socket, url: str, workers: int, log_level: str, limits: Any) -> None:
    from uvicorn.supervisors import Multiprocess

    config = _uvicorn_config(
        "engine.server.bootstrap:app_from_env", log_level, limits, factory=True, workers=workers
    )
    print(f"engine serve: ready at {url} with {workers} workers", flush=True)
    Multiprocess(config, sockets=[sock]).run()
