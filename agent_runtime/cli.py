"""The ``agent-runtime`` command line: converge, status, rollback, enroll, adopt, service.

Exit codes: 0 converged or nothing to do, 1 failed / rolled back / refused,
2 bad config or usage.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent_runtime import supervisor
from agent_runtime._memory import release_memory
from agent_runtime.config import DEFAULT_CONFIG_PATHS, DeviceConfig, load_config
from agent_runtime.converge import FilePlanSource, PlanSource, Runtime, exit_code
from agent_runtime.errors import AgentRuntimeError, ConfigError, PlanError

if TYPE_CHECKING:
    from agent_runtime.journal import JournalRecord
    from agent_runtime.phases import Phase
    from states.protocol import StepEvent

__all__ = ["main"]

CONFIG_ENV = "AGENT_RUNTIME_CONFIG"


def _out(line: str) -> None:
    print(line, flush=True)


def _config_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no device config: pass --config FILE or set {CONFIG_ENV} "
        f"(looked in {', '.join(str(p) for p in DEFAULT_CONFIG_PATHS)})"
    )


def _source(args: argparse.Namespace, config: DeviceConfig) -> PlanSource:
    if args.plan:
        return FilePlanSource(Path(args.plan), config.device)
    raise ConfigError("converge needs --plan FILE, or a 'server' section in the device config")


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _converge(args: argparse.Namespace, config: DeviceConfig) -> int:
    if not supervisor.may_run():
        _err("agent-runtime: the supervisor that started this runtime is gone before it "
             "recorded it; exiting (the next supervisor starts its own)")  # fmt: skip
        return 0
    if args.json and not (args.once and args.plan):
        raise ConfigError("converge --json needs --once and --plan FILE")
    if not args.plan and config.server is not None:
        return _pull(args, config)
    # --json: stdout carries one JSON document only; progress goes to stderr
    runtime = Runtime(config, out=_err if args.json else _out)
    source = _source(args, config)
    if args.once:
        events = _collect_events(runtime) if args.json else []
        res = runtime.converge_once(source)
        if args.json:
            doc = {"result": str(res.result), "detail": res.detail, "status": runtime.status(),
                   "events": [e.model_dump(mode="json") for e in events]}  # fmt: skip
            print(json.dumps(doc), flush=True)
        else:
            _out(f"result: {res.result} — {res.detail}")
        return exit_code(res.result)
    stop = _stop_on_signals()
    while not stop.is_set():
        try:
            res = runtime.converge_once(source)
            _out(f"result: {res.result} — {res.detail}")
        except AgentRuntimeError as e:  # the loop never dies: report and try again later
            _out(f"converge failed: {e}")
        except Exception as e:
            _out(f"converge crashed (bug): {type(e).__name__}: {e}")
        delay = runtime.jitter()
        release_memory()
        _out(f"next converge in {delay:.0f}s")
        stop.wait(delay)
    return 0


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM, SIGINT and, on Windows, CTRL_BREAK (SIGBREAK: how the
    supervisor asks a runtime in its own process group to stop there)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if sys.platform == "win32":
        signal.signal(signal.SIGBREAK, on_signal)
    return stop


def _collect_events(runtime: Runtime) -> list[StepEvent]:
    """The step events of ``runtime``'s transactions, as pull mode would send them."""
    from agent_runtime.step_events import step_event

    events: list[StepEvent] = []

    def on_phase(record: JournalRecord, phase: Phase, status: str, detail: str) -> None:
        event = step_event(record, phase, status, detail, datetime.now(UTC))
        if event is not None:
            events.append(event)

    runtime.executor.fx.on_phase = on_phase
    return events


def _pull(args: argparse.Namespace, config: DeviceConfig) -> int:
    """Pull mode: check in with the config's server and converge to what it offers."""
    from agent_runtime.pull import run_pull

    stop = _stop_on_signals()
    return run_pull(config, stop=stop, once=args.once, out=_out)


def _status(args: argparse.Namespace, config: DeviceConfig) -> int:
    status = Runtime(config, out=_out).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    j = status["journal"]
    journal = j.get("state", "unreadable")
    if journal in ("open", "closed"):
        journal += f" ({j['phase']}, {j['previous'] or 'nothing'} -> {j['target']}, tx {j['txid']})"
    attempts = ", ".join(f"{k}: {v}" for k, v in status["attempts"].items()) or "none"
    rows = [
        ("device", status["device"]),
        ("layout", status["layout"]),
        ("installed", status["installed"] or "nothing"),
        ("known-good", status["known_good"] or "none"),
        ("previous", status["previous"] or "none"),
        ("config", status["config_digest"] or "not managed"),
        ("agent", "running" if status["agent_running"] else "not running"),
        ("journal", journal),
        ("last result", f"{status['last_result'] or 'none'} {status['last_detail']}".strip()),
        ("attempts", attempts),
        ("facts", _facts_line(status["facts"])),
    ]
    for key, value in rows:
        print(f"{key + ':':<13}{value}")
    return 0


def _facts_line(found: dict[str, Any]) -> str:
    """``python 3.11.7, os 6.1.0-18-amd64, openssl 3.0.19``: what requires: is checked against."""
    parts = [f"python {found['python_version']}", f"os {found['os_version'] or 'unknown'}"]
    parts += [f"{name} {version}" for name, version in found["components"].items()]
    return ", ".join(parts)


def _rollback(args: argparse.Namespace, config: DeviceConfig) -> int:
    res = Runtime(config, out=_out).rollback()
    _out(f"result: {res.result} — {res.detail}")
    return 0 if res.result.value in ("rolled_back", "committed") else 1


def _enroll(args: argparse.Namespace, config: DeviceConfig) -> int:
    from agent_runtime._pull_basics import TokenFile
    from agent_runtime.enroll import enroll
    from agent_runtime.server_client import ServerClient

    if config.server is None:
        raise ConfigError("enroll needs a 'server' section in the device config")
    tokens = TokenFile(config.server.token_file)
    if tokens.load() is not None:
        _out(f"{config.device} is enrolled already ({tokens.path})")
        return 0
    client = ServerClient(config.server.url, config.device,
                          timeout=config.server.timeout.total_seconds())  # fmt: skip
    try:
        enroll(config, client, tokens)
    finally:
        client.close()
    _out(f"enrolled {config.device} with {config.server.url}")
    return 0


def _adopt(args: argparse.Namespace, config: DeviceConfig) -> int:
    from agent_runtime.adopt import SignedRelease, local_releases, server_releases

    releases: list[SignedRelease]
    if args.releases:
        releases = local_releases(Path(args.releases))
    elif config.server is not None:
        from agent_runtime.server_client import ServerClient

        client = ServerClient(config.server.url, config.device,
                              timeout=config.server.timeout.total_seconds())  # fmt: skip
        try:
            releases = server_releases(client)
        finally:
            client.close()
    else:
        raise ConfigError("adopt needs --releases DIR or a 'server' section in the device config")
    adoption = Runtime(config, out=_out if not args.json else lambda _line: None).adopt(releases)
    if args.json:
        print(adoption.model_dump_json())
    return 0 if adoption.status != "unknown" else 1


def _service(args: argparse.Namespace, config: DeviceConfig) -> int:
    from agent_runtime.services.runtime_service import RuntimeService

    if args.home is None and (args.confirm_timeout is not None or args.python is not None):
        raise ConfigError("--confirm-timeout and --python need --home (they are the supervisor's)")
    timeout = 120.0 if args.confirm_timeout is None else args.confirm_timeout
    if args.home is not None and args.manager == "windows":
        from agent_runtime.services.windows_supervised import service_action

        return service_action(args.action, home=Path(args.home), config=Path(args.config_path),
                              out=_out, confirm_timeout=timeout,
                              pythonw=Path(args.python) if args.python else None)  # fmt: skip

    venv_bin = Path(sys.executable).parent
    if args.manager == "windows":
        executable = venv_bin / "pythonw.exe"
    else:
        executable = venv_bin / "agent-runtime"
    directory = Path(args.directory) if args.directory else None
    log = config.state_dir / "runtime.log"
    service: RuntimeService
    if args.home is not None:
        from agent_runtime.services.supervised_service import SupervisedService

        service = SupervisedService(
            args.manager,
            python=Path(args.python) if args.python else _base_python(),
            home=Path(args.home).absolute(),
            config=Path(args.config_path).absolute(),
            log=log,
            confirm_timeout=timeout,
            directory=directory,
        )
    else:
        service = RuntimeService(
            args.manager,
            executable=executable,
            config=Path(args.config_path).absolute(),
            log=log,
            directory=directory,
        )
    if args.action == "show":
        content = service.content()
        if content is None:
            from agent_runtime.services.runtime_service import windows_create_commands

            for argv in windows_create_commands(executable, service.config):
                print(" ".join(argv))
        else:
            sys.stdout.write(content.decode())
        return 0
    change = service.install() if args.action == "install" else service.uninstall()
    _out(change.detail)
    return 0


def _base_python() -> Path:
    """The interpreter this venv was made from (the supervisor must not run from a runtime's
    venv: a runtime update removes old venvs)."""
    return Path(getattr(sys, "_base_executable", None) or sys.executable)


class _VersionAction(argparse.Action):
    # Looked up only when asked for: importlib.metadata costs time at every start-up.
    def __call__(self, parser: argparse.ArgumentParser, *_: object, **__: object) -> None:
        from agent_runtime.enroll import runtime_version

        print(f"{parser.prog} {runtime_version()}")  # on stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``agent-runtime``."""
    parser = argparse.ArgumentParser(
        prog="agent-runtime",
        description="Converge this device's agent to its planned release, crash-safely.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, nargs=0, help="show the version and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    conv = sub.add_parser("converge", help="install the planned release (periodic unless --once)")
    conv.add_argument("--once", action="store_true", help="converge once and exit")
    conv.add_argument(
        "--plan",
        metavar="FILE",
        help="plan file written by `engine plan --out` (default: pull mode, when the config "
        "names a server)",
    )
    conv.add_argument("--config", metavar="FILE", help=f"device config (default ${CONFIG_ENV})")
    conv.add_argument(
        "--json",
        action="store_true",
        help="with --once --plan: print one JSON document (result, detail, status) on stdout",
    )
    conv.set_defaults(func=_converge)
    st = sub.add_parser("status", help="installed, known-good, journal, last result")
    st.add_argument("--json", action="store_true", help="one JSON document on stdout")
    st.add_argument("--config", metavar="FILE")
    st.set_defaults(func=_status)
    rb = sub.add_parser("rollback", help="restore the previous known-good release now")
    rb.add_argument("--config", metavar="FILE")
    rb.set_defaults(func=_rollback)
    en = sub.add_parser(
        "enroll", help="trade the invite code (or enrollment secret) for this device's token"
    )
    en.add_argument("--config", metavar="FILE")
    en.set_defaults(func=_enroll)
    ad = sub.add_parser(
        "adopt",
        help="identify the installed agent by hashing it against the signed releases",
        description="Compare the agent's files with every signed release (the server's, or "
        "--releases DIR) and record the matching release as installed and known-good; files "
        "of no release are backed up and the device reports 'unknown' (exit 1). Never restarts "
        "the agent.",
    )
    ad.add_argument("--releases", metavar="DIR", help="directory of <version>.yaml + .sig files")
    ad.add_argument("--json", action="store_true", help="print the result as one JSON document")
    ad.add_argument("--config", metavar="FILE")
    ad.set_defaults(func=_adopt)
    sv = sub.add_parser("service", help="install or remove agent-runtime as an OS service")
    sv.add_argument("action", choices=["install", "uninstall", "show"])
    sv.add_argument("--manager", required=True, choices=["systemd", "launchd", "windows"])
    sv.add_argument(
        "--directory", metavar="DIR", help="where the unit / plist goes (default the system's)"
    )
    sv.add_argument(
        "--home",
        metavar="DIR",
        help="the runtime home (versions/<v> venvs): the service runs the supervisor over it, "
        "so that the runtime updates itself (docs/runtime.md, 'Runtime self-update')",
    )
    sv.add_argument("--config", metavar="FILE")
    sv.add_argument(
        "--confirm-timeout",
        type=float,
        metavar="SECONDS",
        help="with --home: how long a new runtime gets to check in before the supervisor "
        "restores the old one (default 120)",
    )
    sv.add_argument(
        "--python",
        metavar="FILE",
        help="with --home: the system's Python that runs the supervisor (Windows: its "
        "pythonw.exe; default: the one this runtime's venv was made from)",
    )
    sv.set_defaults(func=_service)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        path = _config_path(args.config)
        args.config_path = str(path)
        config = load_config(path)
        code: int = args.func(args, config)
        return code
    except (ConfigError, PlanError) as e:
        print(f"agent-runtime: {e}", file=sys.stderr)
        return 2
    except AgentRuntimeError as e:
        print(f"agent-runtime: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. the state directory is full or read-only
        print(f"agent-runtime: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
