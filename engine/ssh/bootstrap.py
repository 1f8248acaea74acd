"""`engine bootstrap`: install the runtime on Linux and macOS hosts over SSH, in parallel.

Per host: connect (host key checked), detect the host's bundle target, upload
the installer (the script ``GET /install/<platform>`` serves, rendered by
``engine.install.render``) and the runtime bundle over sftp, run it offline
(``--bundle-dir``) with the device's single-use invite code and ``--json``,
and read its result (the runtime home and version under ``runtime``: the
runtime runs under the supervisor, see docs/install.md). ``run_bootstrap`` is
that upload-and-run step in one place; ``issue_codes`` issues the invite codes
in the store.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from engine.server.invites import issue_invite
from engine.ssh._runtime import checked_bundle, remote_target
from engine.ssh.errors import RemoteCommandError, SshError
from engine.ssh.session import SshSession
from engine.ssh.targets import SshTarget
from engine.store import Store
from fleetbase.clock import utc_now
from fleetbase.platform import Platform
from states.bundle import MANIFEST_NAME, SIGNATURE_NAME

__all__ = [
    "BootstrapOptions",
    "HostResult",
    "bootstrap_hosts",
    "issue_codes",
    "render_results",
    "run_bootstrap",
]

#: Seconds the bootstrap script may take on a host (venv, pip install offline, enroll).
BOOTSTRAP_TIMEOUT = 600.0


@dataclass(frozen=True)
class BootstrapOptions:
    """What every host gets: the installer, the bundles, its invite code, limits.

    ``extra_args`` go to the installer after the standard ones, ``{device}``
    replaced by the device id (e.g. ``--prefix``, ``--service none``).
    """

    script: Callable[[Platform], str]  # the installer's source for a platform
    bundles_dir: Path
    trusted_keys: list[str]  # the bundle's signature is checked here before it is sent
    invite: Callable[[str], str]  # device id -> single-use enrollment code
    accept_new: bool = False
    connect_timeout: float = 10.0
    run_timeout: float = BOOTSTRAP_TIMEOUT
    extra_args: tuple[str, ...] = ()


def issue_codes(store: Store, devices: Iterable[str], ttl: timedelta) -> dict[str, str]:
    """A fresh single-use invite code for each device (one transaction; each replaces the
    device's earlier code), as `engine devices invite` issues them."""
    now = utc_now()
    with store.write() as conn:
        return {d: issue_invite(conn, d, ttl, now).code for d in devices}


@dataclass(frozen=True)
class HostResult:
    """One host's outcome, as a row of the result table."""

    device: str
    host: str
    ok: bool
    status: str  # ok | an SshError kind
    detail: str
    result: dict[str, Any] | None = None


def run_bootstrap(
    session: SshSession, target: SshTarget, options: BootstrapOptions, code: str
) -> dict[str, Any]:
    """Upload the installer and the host's runtime bundle, run it offline; its JSON result.

    RemoteCommandError when the script fails or prints no JSON document.
    """
    name = remote_target(session)
    bundle = options.bundles_dir / name
    manifest = checked_bundle(bundle, name, options.trusted_keys)
    work = session.path(f"{target.runtime_dir}/bootstrap")
    session.makedirs(f"{work}/bundle")
    session.write(f"{work}/install.py", options.script(target.platform).encode(), mode=0o700)
    for small in (MANIFEST_NAME, SIGNATURE_NAME):  # always sent: a same-size edit is possible
        session.write(f"{work}/bundle/{small}", (bundle / small).read_bytes())
    for entry in manifest.files:
        session.upload(bundle / entry.name, f"{work}/bundle/{entry.name}")
    # The code goes in a private file the script reads and deletes, not on its command
    # line, where any local user could read it with ps.
    session.write(f"{work}/invite.code", code.encode() + b"\n", mode=0o600)
    argv = ["python3", f"{work}/install.py", "--device", target.device,
            "--code-file", f"{work}/invite.code",
            "--agent-root", target.agent_root, "--bundle-dir", f"{work}/bundle", "--json",
            *(a.replace("{device}", target.device) for a in options.extra_args)]  # fmt: skip
    res = session.run(argv, timeout=options.run_timeout)
    doc = _result_document(res.stdout)
    if doc is None:
        last = (res.stderr.strip() or res.stdout.strip() or "no output").splitlines()[-1]
        raise RemoteCommandError(
            f"{session.endpoint}: the bootstrap script exited with {res.exit_status} "
            f"without a JSON result: {last}"
        )
    if res.exit_status != 0:
        why = doc.get("error") or doc.get("detail") or f"exit status {res.exit_status}"
        raise RemoteCommandError(f"{session.endpoint}: bootstrap failed: {why}")
    return doc


def _result_document(stdout: str) -> dict[str, Any] | None:
    """The installer's ``--json`` result: the whole output (it is indented), else its last
    line (anything printed before it); None when neither is a JSON object."""
    text = stdout.strip()
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            doc = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None


def _one(target: SshTarget, options: BootstrapOptions) -> HostResult:
    host = str(target.endpoint)
    try:
        with SshSession(
            target.endpoint, accept_new=options.accept_new, timeout=options.connect_timeout
        ) as session:
            doc = run_bootstrap(session, target, options, options.invite(target.device))
    except SshError as e:
        return HostResult(target.device, host, False, e.kind, str(e))
    except OSError as e:
        return HostResult(target.device, host, False, "failed", f"{host}: file transfer: {e}")
    return HostResult(target.device, host, True, "ok", _summary(doc), doc)


def _summary(doc: dict[str, Any]) -> str:
    """One line from the installer's result: what changed, what the agent was found to be,
    and the runtime's version and home."""
    if doc.get("detail"):
        return str(doc["detail"])
    changed = doc.get("changed")
    n = len(changed) if isinstance(changed, list) else 0
    parts = [f"{n} change{'s' if n != 1 else ''}" if n else "nothing to change"]
    adoption = doc.get("adoption")
    if isinstance(adoption, dict) and adoption.get("status"):
        found = " ".join(str(adoption[k]) for k in ("status", "version") if adoption.get(k))
        parts.append(f"agent {found}")
    runtime = doc.get("runtime")
    if isinstance(runtime, dict) and runtime.get("version"):
        parts.append(f"runtime {runtime['version']} in {runtime.get('home')}")
    return "; ".join(parts)


def bootstrap_hosts(
    targets: Iterable[SshTarget],
    options: BootstrapOptions,
    *,
    forks: int,
    on_result: Callable[[HostResult], None] = lambda _r: None,
) -> list[HostResult]:
    """Bootstrap each target, at most ``forks`` at once; results in the targets' order."""
    todo = list(targets)
    results: list[HostResult] = []
    with ThreadPoolExecutor(max(1, forks), thread_name_prefix="bootstrap") as pool:
        for res in pool.map(lambda t: _one(t, options), todo):
            on_result(res)
            results.append(res)
    return results


def render_results(results: list[HostResult]) -> str:
    """The per-host result table (device, host, status, detail) and a count line."""
    rows = [("DEVICE", "HOST", "STATUS", "DETAIL")]
    rows += [(r.device, r.host, r.status, r.detail) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows
    ]
    failed = sum(1 for r in results if not r.ok)
    lines.append(f"{len(results) - failed} ok, {failed} failed")
    return "\n".join(lines) + "\n"
