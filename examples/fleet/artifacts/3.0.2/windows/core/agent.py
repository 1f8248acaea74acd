"""The example agent's main loop: heartbeat (to a file, and over NATS when configured) until
told to stop."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

from core.behaviour import BEHAVIOUR
from core.heartbeat import heartbeat_path, write_heartbeat
from core.nats_heartbeat import NatsHeartbeat
from core.settings import load_config, load_flags
from core.version import VERSION

#: Exit code of a release that is broken at start (3.0.2 in the example fleet).
EXIT_BROKEN = 3
#: What a leaking release (3.0.4) keeps per heartbeat, and where it stops growing.
LEAK_BYTES = 2 * 1024 * 1024
LEAK_LIMIT = 256 * 1024 * 1024


def heartbeat_interval() -> float:
    """Seconds between heartbeats: $HEARTBEAT_INTERVAL, default 1."""
    return float(os.environ.get("HEARTBEAT_INTERVAL") or "1")


def main() -> int:
    """Run the agent until SIGTERM or SIGINT; returns the process exit code."""
    if BEHAVIOUR == "exit_at_start":
        print(f"agent {VERSION}: cannot start: configuration is broken", file=sys.stderr)
        return EXIT_BROKEN
    config = load_config()
    flags = load_flags()
    # A config can switch heartbeats off: the runtime must then roll the config back.
    beating = BEHAVIOUR != "no_heartbeat" and config.get("heartbeat", True) is not False
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    interval = heartbeat_interval()
    path = heartbeat_path()
    bus = NatsHeartbeat.from_env()
    where = f"{path}" if bus is None else f"{path} and NATS {bus.subject}"
    print(f"agent {VERSION} started, pid {os.getpid()}, heartbeat {where}", flush=True)
    if config or flags:
        print(f"agent {VERSION} config {sorted(config)} flags {flags}", flush=True)
    leaked: list[bytes] = []
    while not stop.is_set():
        if beating:
            write_heartbeat(path, VERSION)
            if bus is not None:
                bus.send(VERSION)
        if BEHAVIOUR == "leak_memory" and len(leaked) * LEAK_BYTES < LEAK_LIMIT:
            leaked.append(bytes([len(leaked) % 251]) * LEAK_BYTES)  # filled: resident
        stop.wait(interval)
    if bus is not None:
        bus.close()
    print(f"agent {VERSION} stopping", flush=True)
    return 0
