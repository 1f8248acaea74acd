"""The quickstart: a whole rollout story on this machine, in about a minute.

Starts `engine serve` on SQLite and a small fleet of real device runtimes in a
temporary directory (each running the example agent 3.0.0), rolls out the
good release 3.0.1 to the canaries and, once they completed and soaked, to
the fleet in waves; then the broken 3.0.2: the canaries fail and roll back to
3.0.1 on their own, the canary rollout halts, and the fleet's rollout, which
waits for it (``after: [canary]``), halts without touching a single device.
Last 3.0.4, which works and heartbeats but leaks memory: the canaries take it,
their runtimes' samples show the agent's memory growing past the groups'
``max_rss_increase: 25%``, the canary rollout halts on memory during its soak
(with the figures), its devices go back to 3.0.1, and the fleet's rollout
halts again without touching a device. Prints what happened and cleans up
(also on Ctrl-C). Uses only the product's commands (``examples/demo_fleet.py``):
`engine keygen`, `engine release sign`, `engine serve`, `engine plan`,
`engine apply`, `engine status`, the operator API, and `agent-runtime converge`.

Usage: ``scripts/demo [--devices N] [--keep]`` (or ``python examples/demo.py``).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(_REPO))

from examples.demo_fleet import DemoFleet, demo_devices, wait_until  # noqa: E402

SOAK = "5s"
#: The canary's soak for 3.0.4: its devices' memory is watched until it ends.
LEAK_SOAK = "1m"


def demo_groups(release: str) -> dict[str, Any]:
    """A canary group (internal machines first) and the fleet in three waves after it."""
    return {
        "canary": {
            "description": "IT's own machines take every release first",
            "match": {"tags": "internal"},
            "priority": 100,
            "agent": {"release": release},
            "rollout": {"waves": [100], "max_parallel": 5, "soak": SOAK,
                        "max_failure_rate": 0.0, "max_rss_increase": "25%"},
        },
        "fleet": {
            "description": "every store device",
            "match": {"site": "demo"},
            "agent": {"release": release},
            "rollout": {"waves": [10, 50, 100], "max_parallel": 5, "soak": SOAK,
                        "max_failure_rate": 0.1, "after": ["canary"],
                        "max_rss_increase": "25%"},
        },
    }  # fmt: skip


class Demo:
    """The demo's steps, printing as it goes."""

    def __init__(self, base: Path, devices: int) -> None:
        self.t0 = time.monotonic()
        canaries = max(2, min(4, devices // 7))
        specs = demo_devices(base / "devices", devices, canaries)
        self.fleet = DemoFleet(base, specs, demo_groups("3.0.0"))
        self.canaries = [d.id for d in specs if d.tag == "internal"]

    def say(self, line: str = "") -> None:
        """Print a line with the elapsed time."""
        stamp = f"[{time.monotonic() - self.t0:5.1f}s] " if line else ""
        print(f"{stamp}{line}", flush=True)

    def title(self, text: str) -> None:
        """A section heading."""
        print(f"\n== {text}", flush=True)

    def engine(self, *args: str, show: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `engine ARGS` in the operator repo, echoing the command and (optionally) output."""
        print(f"$ engine {' '.join(args)}", flush=True)
        # shown straight on the terminal: apply --wait draws its live progress
        return self.fleet.engine(*args, capture=not show)

    def run(self) -> None:
        """The whole story."""
        f = self.fleet
        n = len(f.devices)
        self.title(f"1. A fleet of {n} devices on this machine")
        self.say(f"operator repo {f.repo}: {len(self.canaries)} canaries (tag internal), "
                 f"{n - len(self.canaries)} store devices; releases 3.0.0 to 3.0.4")  # fmt: skip
        f.create_repo()
        self.say("signed releases 3.0.0, 3.0.1, 3.0.2, 3.0.3, 3.0.4 with a new key "
                 "(`engine keygen`, `engine release sign`)")  # fmt: skip
        f.start_server()
        self.say(f"engine serve is up at {f.url} (SQLite store, log {f.server_log})")
        f.write_configs()
        self.say(f"installing agent 3.0.0 on {n} devices (`agent-runtime converge --once "
                 "--plan`) …")  # fmt: skip
        f.preinstall("3.0.0")
        self.say(f"starting {n} device runtimes (`agent-runtime converge`, pull mode, "
                 "check-in every second)")  # fmt: skip
        f.start_runtimes()
        self.wait_running("3.0.0", "every device to enroll and report 3.0.0", timeout=120)
        self.say(f"all {n} devices enrolled and report agent 3.0.0, running and heartbeating")

        self.title("2. Roll out the good release 3.0.1")
        f.set_release("3.0.1")
        self.say("inventory: both groups now want 3.0.1; the fleet waits for the canary "
                 "(after: [canary])")  # fmt: skip
        plan = self.engine("plan", show=False)
        print("\n".join(plan.stdout.splitlines()[:1]), flush=True)
        self.engine("apply", "--yes", "--wait")
        self.wait_running("3.0.1", "every device to run 3.0.1", timeout=120)
        self.say(f"all {n} devices run 3.0.1 and heartbeat")
        status = f.status()
        self.show_waves("3.0.1", status)
        self.show_gate("canary@3.0.1", "fleet@3.0.1", status)

        self.title("3. Roll out the broken release 3.0.2 (it exits at start)")
        f.set_release("3.0.2")
        self.say("inventory: both groups now want 3.0.2")
        before = {i: len(d.transactions()) for i, d in f.devices.items()}
        self.engine("apply", "--yes", "--wait")
        # the server's record of who took 3.0.2: a device may still be restarting
        # when the rollout halts, before its own log shows the attempt
        tried = self.took("canary@3.0.2") | self.took("fleet@3.0.2")
        wait_until("the devices that tried 3.0.2 to finish and heartbeat on 3.0.1 again",
                   lambda: all(len(f.devices[i].transactions()) > before[i] for i in tried)
                   and self.running("3.0.1") >= tried, timeout=60)  # fmt: skip

        self.title("4. What happened")
        self.narrate(tried)
        self.title("engine status")
        self.engine("status")

        self.title("5. Roll out 3.0.4 (it works and heartbeats, but leaks memory); "
                   "max_rss_increase 25%")  # fmt: skip
        f.set_release("3.0.4")
        f.set_rollout("canary", soak=LEAK_SOAK)
        self.say(f"inventory: both groups want 3.0.4; the canary soaks {LEAK_SOAK}, long enough "
                 "for a leak to show")  # fmt: skip
        self.engine("apply", "--yes", "--wait")
        took = self.took("canary@3.0.4") | self.took("fleet@3.0.4")
        wait_until("the devices that took 3.0.4 to run 3.0.1 again",
                   lambda: self.running("3.0.1") >= took, timeout=120)  # fmt: skip
        self.narrate_leak(took)
        self.title("engine status (the agent's cost per release is at the end)")
        self.engine("status")

    def running(self, version: str) -> set[str]:
        """Devices the server knows to run ``version`` with a fresh heartbeat of it."""
        now = datetime.now(UTC)
        out = set()
        for device, row in self.fleet.reports().items():
            beat = row.get("heartbeat_at")
            fresh = beat is not None and (now - datetime.fromisoformat(beat)).total_seconds() < 5
            if row.get("agent_version") == version and row.get("heartbeat_version") == version \
                    and fresh:  # fmt: skip
                out.add(device)
        return out

    def wait_running(self, version: str, what: str, timeout: float) -> None:
        """Wait until every device runs ``version`` and heartbeats, printing progress."""
        n = len(self.fleet.devices)
        wait_until(what, lambda: len(self.running(version)) == n, timeout=timeout,
                   progress=self._versions_line, out=self.say)  # fmt: skip

    def _versions_line(self) -> str:
        counts: dict[str, int] = {}
        for row in self.fleet.reports().values():
            v = str(row.get("agent_version"))
            counts[v] = counts.get(v, 0) + 1
        return ", ".join(f"{v}: {c}" for v, c in sorted(counts.items())) or "no reports yet"

    def show_waves(self, release: str, status: dict[str, Any]) -> None:
        """Each rollout of ``release`` with its waves, from `engine status --json`."""
        for r in status["rollouts"]:
            if r["release"] != release:
                continue
            waves = ", ".join(f"wave {w['index']} ({w['percent']:g}%): {w['succeeded']} "
                              "succeeded" for w in r["waves"])  # fmt: skip
            self.say(f"rollout {r['name']}: {r['state']}; {waves}")

    def show_gate(self, gate: str, gated: str, status: dict[str, Any]) -> None:
        """When the gate rollout completed and when the gated one's first device took its plan."""
        by_name = {r["name"]: r for r in status["rollouts"]}
        done = datetime.fromisoformat(by_name[gate]["finished_at"])
        starts = [datetime.fromisoformat(d["started_at"])
                  for d in self.fleet.rollout(gated)["devices"] if d.get("started_at")]  # fmt: skip
        later = (min(starts) - done).total_seconds()
        self.say(f"{gate} completed at {done:%H:%M:%S}; the first device of {gated} took its "
                 f"plan {later:.1f}s later (the canary soaks {SOAK})")  # fmt: skip

    def took(self, rollout: str) -> set[str]:
        """Devices that took the plan of ``rollout`` (group@release), from the operator API."""
        return {d["device"] for d in self.fleet.rollout(rollout)["devices"] if d["attempts"] > 0}

    def narrate(self, tried: set[str]) -> None:
        """Per device: group, what it tried, where it is now; then the counts."""
        f = self.fleet
        reports = f.reports()
        running = self.running("3.0.1") | self.running("3.0.2")
        print(f"{'device':<16}{'platform':<9}{'group':<8}{'3.0.2?':<24}{'now':<7}agent", flush=True)
        for i, d in f.devices.items():
            group = "canary" if i in self.canaries else "fleet"
            attempt = [r for t, r in d.transactions() if t == "3.0.2"]
            took = f"tried: {attempt[-1]}" if attempt else "never offered"
            now = str(reports.get(i, {}).get("agent_version"))
            alive = "running, heartbeating" if i in running else "DOWN"
            print(f"{i:<16}{d.platform:<9}{group:<8}{took:<24}{now:<7}{alive}", flush=True)
        halted = [r for r in f.status()["rollouts"] if r["release"] == "3.0.2"]
        print(flush=True)
        for r in halted:
            print(f"rollout {r['name']}: {r['state']} — {r.get('reason') or ''}", flush=True)
        print(
            f"{len(tried)} devices (canaries) tried 3.0.2; each failed its health check "
            "(the agent exited) and rolled itself back to 3.0.1, which runs and heartbeats again.",
            flush=True,
        )
        fleet = [i for i in f.devices if i not in self.canaries]
        offered = len([i for i in fleet if i in tried])
        print(f"{len(fleet) - offered} of the {len(fleet)} fleet devices were never offered "
              "3.0.2: the fleet's rollout waited for the canary's and halted with it.",
              flush=True)  # fmt: skip
        print(f"fleet versions now: {self._versions_line()}", flush=True)
        if tried - set(self.canaries):
            raise RuntimeError(f"fleet devices tried 3.0.2: {sorted(tried - set(self.canaries))}")

    def narrate_leak(self, took: set[str]) -> None:
        """Why the 3.0.4 rollouts halted, in numbers, and where the devices are now."""
        for name in ("canary@3.0.4", "fleet@3.0.4"):
            r = self.fleet.rollout(name)
            print(f"rollout {name}: {r['state']} — {r.get('reason') or ''}", flush=True)
        for d in self.fleet.rollout("canary@3.0.4")["devices"]:
            if d["attempts"] > 0:
                why = d.get("reason") or "went back with the halt"
                print(f"  {d['device']}: {d['state']} — {why}", flush=True)
        print(f"{len(took)} devices took 3.0.4; all of them run 3.0.1 again and heartbeat.",
              flush=True)  # fmt: skip
        print(f"fleet versions now: {self._versions_line()}", flush=True)
        if took - set(self.canaries):
            raise RuntimeError(f"fleet devices took 3.0.4: {sorted(took - set(self.canaries))}")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 when the story played out, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=20, help="fleet size (default 20)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and print its path")
    args = parser.parse_args(argv)
    if args.devices < 6:
        parser.error("--devices must be at least 6")
    base = Path(tempfile.mkdtemp(prefix="fleet-demo-"))

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    demo = Demo(base, args.devices)
    code = 1
    try:
        demo.run()
        code = 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", flush=True)
        code = 130
    except (TimeoutError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"\ndemo failed: {e}", file=sys.stderr, flush=True)
        print(f"server log: {demo.fleet.server_log}\n{demo.fleet.server_tail()}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        demo.say("stopping the runtimes, agents and the server")
        demo.fleet.stop()
        if args.keep:
            print(f"kept {base}", flush=True)
        else:
            shutil.rmtree(base, ignore_errors=True)
        demo.say(f"done in {time.monotonic() - demo.t0:.0f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
