"""The runtime updating itself: install a runtime release beside the running one, hand over.

Only under the supervisor (``agent_runtime/supervisor.py``), which names the
runtime home in ``$AGENT_RUNTIME_HOME``. For an offered runtime release
(``CheckinResponse.runtime``) the runtime that runs:

1. downloads its target's bundle from the server into ``downloads/<version>/``
   and verifies it (``bundle.json.sig`` by a pinned key, every wheel byte for
   byte, the runtime version the offered one);
2. builds ``versions/<version>/``: a venv built under a temporary name, the
   runtime installed into it offline from the bundle, then renamed in;
3. writes the trial into ``runtime.json`` and exits with ``SWITCH_EXIT``; the
   supervisor starts the new runtime and keeps it only when it checks in
   (``confirm_trial``) within the confirm timeout.

A failure in 1 or 2 leaves everything as it was and the outcome ``failed``,
reported at the next check-in like a revert (``outcome``). The agent is never
touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from agent_runtime import supervisor as sv
from agent_runtime.errors import ServerError
from agent_runtime.server_client import ServerClient
from fleetbase.version import Version, VersionError
from states.bundle import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    BundleError,
    local_target_name,
    read_manifest,
    verify_bundle,
)
from states.protocol import RuntimeOffer, RuntimeUpdateReport
from states.signing import SignatureError, raw_trusted_keys

__all__ = ["RuntimeHome", "local_target"]

#: Seconds a venv creation or an offline pip install may take.
INSTALL_TIMEOUT = 600.0
#: Largest wheel accepted from the server.
MAX_WHEEL_BYTES = 256 * 1024 * 1024


def local_target() -> str:
    """This machine's bundle target, e.g. ``linux-x86_64-py3.11``."""
    return local_target_name() or sys.platform


class RuntimeHome:
    """The runtime home the supervisor runs this runtime from (see the module docstring)."""

    def __init__(self, home: Path, version: str, out: Callable[[str], None] = print) -> None:
        """The home at ``home``; ``version`` is the version of the runtime that runs."""
        self.home = home
        self.version = version
        self.out = out
        self._confirmed = False

    @staticmethod
    def from_env(version: str, out: Callable[[str], None] = print) -> RuntimeHome | None:
        """The home named by ``$AGENT_RUNTIME_HOME``, or None when not under the supervisor."""
        home = os.environ.get(sv.HOME_ENV)
        return RuntimeHome(Path(home), version, out) if home else None

    # -- what the runtime reports ---------------------------------------------------------

    def usable(self) -> bool:
        """Whether this home can take a runtime release: a writable directory with
        ``versions/`` and a ``runtime.json`` naming the current version, as the
        supervisor keeps it (the runtime then reports ``FEATURE_RUNTIME_UPDATE``)."""
        state = sv.read_json(self.home / sv.STATE)
        return (
            state is not None
            and isinstance(state.get("current"), str)
            and (self.home / sv.VERSIONS).is_dir()
            and os.access(self.home, os.W_OK)
        )

    def outcome(self) -> RuntimeUpdateReport | None:
        """The last update's outcome (``outcome.json``), reported at every check-in."""
        data = sv.read_json(self.home / sv.OUTCOME)
        if data is None:
            return None
        try:
            return RuntimeUpdateReport.model_validate(data)
        except ValidationError:
            return None

    def confirm_trial(self) -> None:
        """After a successful check-in: if this runtime is on trial, confirm it."""
        if self._confirmed:
            return
        state = sv.read_json(self.home / sv.STATE) or {}
        trial = state.get("trial")
        if (
            isinstance(trial, dict)
            and trial.get("started")
            and trial.get("version") == self.version
        ):
            sv.write_json(self.home / sv.CONFIRMED, {"trial": trial.get("id")})
            self.out(f"runtime {self.version} checked in: confirmed")
        self._confirmed = True

    # -- installing a new runtime ---------------------------------------------------------

    def install(self, offer: RuntimeOffer, client: ServerClient, trusted_keys: list[str]) -> bool:
        """Install ``offer``'s release beside this runtime and prepare its trial; True when
        the runtime should now exit with ``SWITCH_EXIT``. On failure the outcome is
        ``failed`` and nothing else changed."""
        (self.home / sv.OUTCOME).unlink(missing_ok=True)  # a new attempt
        try:
            self._install(offer, client, trusted_keys)
        except (ServerError, BundleError, SignatureError, OSError, _InstallError) as e:
            shutil.rmtree(self.home / "downloads", ignore_errors=True)
            self._fail(offer.version, str(e))
            return False
        trial = {"id": uuid.uuid4().hex, "version": offer.version, "previous": self.version,
                 "started": False}  # fmt: skip
        sv.write_json(self.home / sv.STATE, {"current": self.version, "trial": trial})
        self.out(f"runtime {offer.version} installed beside {self.version}: handing over")
        return True

    def _fail(self, target: str, why: str) -> None:
        self.out(f"runtime {target} not installed: {why}")
        sv.write_json(
            self.home / sv.OUTCOME,
            {"target": target, "result": "failed", "detail": why[:2000],
             "at": datetime.now(UTC).isoformat(timespec="seconds")},
        )  # fmt: skip

    def _install(self, offer: RuntimeOffer, client: ServerClient, trusted_keys: list[str]) -> None:
        try:
            version = Version(offer.version)
        except VersionError as e:
            raise _InstallError(f"offered runtime {offer.version!r}: {e}") from e
        if not trusted_keys:
            raise _InstallError("no trusted_keys in the device config to check the bundle with")
        keys = raw_trusted_keys(trusted_keys)
        target = local_target()
        bundle = self.home / "downloads" / str(version) / target
        shutil.rmtree(bundle, ignore_errors=True)
        bundle.mkdir(parents=True)
        base = f"{offer.releases.rstrip('/')}/{target}"
        manifest = client.download(f"{base}/{MANIFEST_NAME}", 1024 * 1024)
        (bundle / MANIFEST_NAME).write_bytes(manifest)
        (bundle / SIGNATURE_NAME).write_bytes(
            client.download(f"{base}/{SIGNATURE_NAME}", 64 * 1024)
        )
        listed = read_manifest(manifest)
        for entry in listed.files:
            data = client.download(f"{base}/{entry.name}", MAX_WHEEL_BYTES)
            (bundle / entry.name).write_bytes(data)
        checked = verify_bundle(bundle, keys)
        if Version(checked.runtime_version) != version:
            raise _InstallError(f"the bundle is runtime {checked.runtime_version}, not {version}")
        if checked.target != target:
            raise _InstallError(f"the bundle is for {checked.target}, this device is {target}")
        self._build_venv(str(version), bundle, checked.runtime_version)

    def _build_venv(self, version: str, bundle: Path, wheel_version: str) -> None:
        """Build ``versions/<version>`` in place (a venv is not relocatable: its scripts name
        its path), marked ``.<version>.installing`` until it is complete; the trial names it
        only afterwards, so a half-built venv is never run (and is rebuilt next time).

        The marker holds the process group of the build's current step: a runtime killed
        mid-build leaves its pip running, and the next build stops that group first."""
        versions = self.home / sv.VERSIONS
        versions.mkdir(parents=True, exist_ok=True)
        marker = versions / sv.installing_marker(version)
        _stop_earlier_build(marker)
        marker.touch()
        final = versions / version
        if final.is_symlink():
            final.unlink()
        elif final.exists():
            shutil.rmtree(final)
        try:
            _run([sys.executable, "-m", "venv", str(final)], "creating the venv", marker)
            python = final / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
            _run(
                [str(python), "-m", "pip", "install", "--quiet", "--no-index",
                 "--disable-pip-version-check", "--find-links", str(bundle),
                 f"fleet-rollout=={wheel_version}"],
                "installing the runtime",
                marker,
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        marker.unlink()
        shutil.rmtree(bundle.parent, ignore_errors=True)


class _InstallError(Exception):
    """A runtime release cannot be installed; the message says why."""


def _stop_earlier_build(marker: Path) -> None:
    """SIGKILL the process group an interrupted build left running (its pip), if any. Not on
    Windows, where the recorded pid names no group and may have been reused since."""
    found = sv.read_json(marker)
    group = found.get("pgid") if found else None
    if os.name == "nt" or not isinstance(group, int) or group <= 1:
        return
    _kill_group(group)


def _kill_group(pid: int) -> None:
    """Kill the build step ``pid`` and what it started: its process group (POSIX), its
    process tree (Windows, ``taskkill /F /T``: there is no process group to signal)."""
    if sys.platform == "win32":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["taskkill.exe", "/F", "/T", "/PID", str(pid)],
                           capture_output=True, timeout=60, check=False)  # fmt: skip
        return
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _run(cmd: list[str], what: str, marker: Path) -> None:
    """Run one build step in a process group of its own, recorded in ``marker``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True,
        )  # fmt: skip
    except OSError as e:
        raise _InstallError(f"{what}: {e}") from e
    sv.write_json(marker, {"pgid": proc.pid, "step": what})
    try:
        out, _ = proc.communicate(timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        _kill_group(proc.pid)
        proc.wait()
        raise _InstallError(f"{what}: no end within {INSTALL_TIMEOUT:g}s") from e
    if proc.returncode != 0:
        tail = " | ".join(out.strip().splitlines()[-5:])
        raise _InstallError(f"{what} failed (exit {proc.returncode}): {tail}")
