#!/usr/bin/env python3
"""Install agent-runtime on this device and let it take over the agent already here.

Served by ``engine serve`` at ``/install/<platform>`` with the server's URL and
the release signing keys it pins filled in below; standard library only, so
the field's snippet system, ``curl ... | sudo python3 -``, or ``engine
bootstrap`` over SSH can run it::

    python3 install.py --device ID --code INVITE [--agent-root DIR]
        [--service systemd|launchd|windows|none] [--prefix DIR] [--config-dir DIR]
        [--bundle-dir DIR] [--confirm-timeout S] [--uninstall] [--json]

Steps (each skipped when already done, so a second run changes nothing):
verify the runtime bundle (signature by a pinned key over bundle.json, then
every wheel's size and sha256; anything off and nothing is installed); lay out
the prefix as a runtime home (docs/runtime.md, "Runtime self-update"): the
venv ``versions/<V>/`` with ``pip install --no-index`` from the bundle,
``runtime.json`` naming V current, a copy of the runtime's ``supervisor.py``
(on Windows ``winsupervisor.py`` too, the wrapper the Service Control Manager
runs); write the device config and the invite code (mode 0600); enroll;
identify the installed agent (``agent-runtime adopt``, which never restarts
it); register the OS service that runs the supervisor with this Python (on
Windows its ``pythonw.exe``), which runs the current runtime and updates it
(``--service none``: the note says the command to run); write the launcher
``<prefix>/bin/agent-runtime`` (Windows: ``bin\\agent-runtime.cmd``, which runs
``bin\\agent-runtime.py`` beside it), which runs the current runtime. A prefix
that is a plain venv (installed before runtime self-update) is converted in
place: the service is swapped (only the runtime restarts, never the agent),
then the old venv's files are removed; config, token and state stay.
``--uninstall`` removes the runtime, its config, state and service, and leaves
the agent's files as they are. Exit 0 or 1; the last line says what happened
(``--json``: one JSON document on stdout).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform as _platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Filled in by engine/install/render.py (served or pushed over SSH); never a secret.
SERVER_URL = ""
PINNED_KEYS: list[str] = []
PLATFORM = ""

PACKAGE = "fleet-rollout"
HTTP_TIMEOUT = 60.0
MAX_BUNDLE_FILE = 200 * 1024 * 1024


class InstallError(Exception):
    """A step failed; the message says which and why."""


# -- ed25519 verification (RFC 8032, section 5.1.7), pure Python -------------------------
# Pure Python rather than the runtime's libcrypto binding: it works on every OS's stock
# Python (Windows included, where a DLL's dependencies are not searched), and verifying
# one small bundle.json is fast enough. Only public data is handled: timing leaks nothing.

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_Point = tuple[int, int, int, int]


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    return _P - x if (x & 1) != sign else x


def _decode(data: bytes) -> _Point | None:
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


def _add(p: _Point, q: _Point) -> _Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s: int, p: _Point) -> _Point:
    q: _Point = (0, 1, 1, 0)
    while s:
        if s & 1:
            q = _add(q, p)
        p, s = _add(p, p), s >> 1
    return q


_GY = 4 * pow(5, _P - 2, _P) % _P
_GX = _recover_x(_GY, 0) or 0
_G: _Point = (_GX, _GY, 1, _GX * _GY % _P)


def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid ed25519 signature of ``message`` by ``public_key``."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a, r = _decode(public_key), _decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= _L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public_key + message).digest(), "little")
    left, right = _mul(s, _G), _add(r, _mul(h % _L, a))
    return (left[0] * right[2] - right[0] * left[2]) % _P == 0 and (
        left[1] * right[2] - right[1] * left[2]
    ) % _P == 0


def raw_key(text: str) -> bytes:
    """The 32 bytes of a pinned key ``ed25519:<base64>``."""
    if not text.startswith("ed25519:"):
        raise InstallError(f"pinned key {text[:30]!r} is not 'ed25519:<base64>'")
    raw = base64.b64decode(text[len("ed25519:") :], validate=True)
    if len(raw) != 32:
        raise InstallError(f"pinned key {text[:30]!r} is not 32 bytes")
    return raw


def verify_signature(data: bytes, signature_doc: bytes, keys: list[str]) -> str:
    """The key id of a pinned key whose signature over ``data`` is valid; InstallError if none
    (the ``.sig`` format of release manifests: {"signatures": [{keyid, algorithm, sig}]})."""
    if not keys:
        raise InstallError("no pinned keys: refusing to trust any bundle")
    pinned = {hashlib.sha256(raw_key(k)).hexdigest()[:16]: raw_key(k) for k in keys}
    try:
        entries = json.loads(signature_doc)["signatures"]
    except (ValueError, KeyError, TypeError) as e:
        raise InstallError(f"bundle.json.sig is not a signature document: {e}") from e
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("algorithm", "ed25519") != "ed25519":
            continue
        key = pinned.get(str(entry.get("keyid")))
        if key is not None and ed25519_verify(key, base64.b64decode(str(entry["sig"])), data):
            return str(entry["keyid"])
    raise InstallError(f"bundle.json is not signed by a pinned key ({', '.join(pinned)})")


# -- this host ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """What this machine is: platform family, architecture, Python, service manager."""

    platform: str
    arch: str
    python: str
    service: str  # systemd | launchd | windows | none
    why_none: str = ""


def detect() -> Host:
    """Detect OS, architecture, Python version and whether an OS service manager runs."""
    plat = {"win32": "windows", "darwin": "macos"}.get(sys.platform, "linux")
    arch = _platform.machine().lower() or "unknown"
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if plat == "windows":
        return Host(plat, arch, py, "windows")
    if plat == "macos":
        return Host(plat, arch, py, "launchd")
    try:
        init = Path("/proc/1/comm").read_text().strip()
    except OSError:
        init = "unknown"
    if Path("/run/systemd/system").is_dir() and init == "systemd":
        return Host(plat, arch, py, "systemd")
    container = Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()
    why = f"PID 1 is {init!r}, not systemd" + (" (a container)" if container else "")
    return Host(plat, arch, py, "none", why)


@dataclass
class Paths:
    """Where the runtime, its config and state go, and where the agent lives; ``windows``:
    the venvs there have the Windows layout (``Scripts\\<name>.exe``)."""

    prefix: Path
    config_dir: Path
    state_dir: Path
    agent_root: Path
    windows: bool = False

    @property
    def config(self) -> Path:
        return self.config_dir / "config.yaml"

    @property
    def code_file(self) -> Path:
        return self.config_dir / "enrollment.code"

    @property
    def token_file(self) -> Path:
        return self.config_dir / "token"

    def bin(self, name: str) -> Path:
        """``name`` of a venv at the prefix (POSIX: the launcher when ``name`` is
        agent-runtime and the prefix is a runtime home)."""
        return venv_exe(self.prefix, name, self.windows)


def venv_exe(venv: Path, name: str, windows: bool) -> Path:
    """A venv's interpreter or console script ``name``: ``Scripts\\<name>.exe`` on Windows,
    ``bin/<name>`` elsewhere (as ``runtime_exe`` of agent_runtime/supervisor.py has it)."""
    return venv / "Scripts" / f"{name}.exe" if windows else venv / "bin" / name


def default_paths(plat: str, args: argparse.Namespace) -> Paths:
    """The platform's standard locations; --prefix (then config/state under it) overrides."""
    if plat == "windows":
        pf = Path(os.environ.get("PROGRAMFILES", "C:/Program Files"))
        pd = Path(os.environ.get("PROGRAMDATA", "C:/ProgramData"))
        std = Paths(pf / "AgentRuntime", pd / "AgentRuntime", pd / "AgentRuntime" / "state",
                    pf / "Wegweiser" / "Agent", windows=True)  # fmt: skip
    elif plat == "macos":
        std = Paths(Path("/Library/AgentRuntime"), Path("/etc/agent-runtime"),
                    Path("/Library/Application Support/AgentRuntime"),
                    Path("/opt/Wegweiser/Agent"))  # fmt: skip
    else:
        std = Paths(Path("/opt/agent-runtime"), Path("/etc/agent-runtime"),
                    Path("/var/lib/agent-runtime"), Path("/opt/Wegweiser/Agent"))  # fmt: skip
    if args.prefix:
        std.prefix = Path(args.prefix).absolute()
        std.config_dir, std.state_dir = std.prefix / "etc", std.prefix / "state"
    if args.config_dir:
        std.config_dir = Path(args.config_dir).absolute()
    if args.state_dir:
        std.state_dir = Path(args.state_dir).absolute()
    if args.agent_root:
        std.agent_root = Path(args.agent_root).absolute()
    return std


# -- the bundle -----------------------------------------------------------------------------


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
            data: bytes = resp.read(MAX_BUNDLE_FILE + 1)
    except OSError as e:
        raise InstallError(f"GET {url}: {e}") from e
    if len(data) > MAX_BUNDLE_FILE:
        raise InstallError(f"GET {url}: larger than {MAX_BUNDLE_FILE} bytes")
    return data


def download_bundle(server: str, host: Host, dest: Path) -> Path:
    """Fetch the bundle for this host from the server into ``dest``; its directory."""
    try:
        listed = json.loads(_get(f"{server}/runtime/bundles"))
    except ValueError as e:
        raise InstallError(f"{server}/runtime/bundles is not JSON: {e}") from e
    rows = listed if isinstance(listed, list) else listed.get("bundles", [])
    fits = [
        r
        for r in rows
        if isinstance(r, dict)
        and (r.get("platform"), r.get("python")) == (host.platform, host.python)
        and _same_arch(str(r.get("arch")), host.arch)
    ]
    if not fits:
        have = ", ".join(str(r.get("target")) for r in rows if isinstance(r, dict)) or "none"
        raise InstallError(
            f"the server has no runtime bundle for {host.platform} {host.arch} Python "
            f"{host.python} (it has: {have}); build one with engine runtime bundle"
        )
    target = str(fits[0]["target"])
    base = f"{server}/runtime/bundles/{target}"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("bundle.json", "bundle.json.sig"):
        (dest / name).write_bytes(_get(f"{base}/{name}"))
    doc = json.loads((dest / "bundle.json").read_bytes())
    for entry in doc.get("files", []):
        name = str(entry["name"])
        if "/" in name or "\\" in name or name.startswith("."):
            raise InstallError(f"bundle.json names a file outside the bundle: {name!r}")
        (dest / name).write_bytes(_get(f"{base}/{name}"))
    return dest


def _same_arch(a: str, b: str) -> bool:
    alias = {"amd64": "x86_64", "arm64": "aarch64"}
    return alias.get(a.lower(), a.lower()) == alias.get(b.lower(), b.lower())


def verify_bundle(directory: Path, host: Host, keys: list[str]) -> dict[str, Any]:
    """bundle.json, after checking its signature, that it is for this host, and every listed
    file's size and sha256; InstallError on anything off (extra wheels included)."""
    try:
        data = (directory / "bundle.json").read_bytes()
        signature = (directory / "bundle.json.sig").read_bytes()
    except OSError as e:
        raise InstallError(f"bundle in {directory}: {e}") from e
    verify_signature(data, signature, keys)
    doc: dict[str, Any] = json.loads(data)
    if doc.get("platform") != host.platform or doc.get("python") != host.python:
        raise InstallError(
            f"bundle {doc.get('target')} is for {doc.get('platform')} Python "
            f"{doc.get('python')}, this host is {host.platform} Python {host.python}"
        )
    listed = {str(f["name"]): f for f in doc.get("files", [])}
    for name, entry in listed.items():
        path = directory / name
        if Path(name).name != name or not path.is_file():
            raise InstallError(f"bundle file {name} is missing from {directory}")
        size = path.stat().st_size
        if size != int(entry["size"]):
            raise InstallError(
                f"bundle file {name}: {size} bytes, bundle.json says {entry['size']}"
            )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != entry["sha256"]:
            raise InstallError(f"bundle file {name}: sha256 {digest}, bundle.json says "
                               f"{entry['sha256']}")  # fmt: skip
    extra = sorted(p.name for p in directory.glob("*.whl") if p.name not in listed)
    if extra:
        raise InstallError(f"bundle has wheels bundle.json does not list: {', '.join(extra)}")
    return doc


# -- installing -----------------------------------------------------------------------------


@dataclass
class Report:
    """What this run did, for the last line and for --json."""

    device: str
    changed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    adoption: dict[str, Any] | None = None
    runtime: dict[str, Any] | None = None  # home, version, command, supervisor
    ok: bool = True
    error: str | None = None


def _run(argv: list[str], what: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as e:  # e.g. a venv without the interpreter this platform's layout names
        raise InstallError(f"{what} failed: cannot run {argv[0]}: {e.strerror or e}") from e
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
        raise InstallError(f"{what} failed (exit {proc.returncode}): {' / '.join(said)}")
    return proc.stdout


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


def device_config(args: argparse.Namespace, host: Host, paths: Paths, keys: list[str]) -> str:
    """The device config (JSON, which is YAML) for the in-place agent at the agent root."""
    manager = args.agent_service or (host.service if host.service != "none" else "process")
    config = {
        "device": args.device,
        "platform": host.platform,
        "agent_root": str(paths.agent_root),
        "layout": "in_place",
        "state_dir": str(paths.state_dir),
        "service": {"manager": manager},
        "trusted_keys": keys,
        "server": {
            "url": args.server,
            "token_file": str(paths.token_file),
            "enrollment_code_file": str(paths.code_file),
        },
    }
    return json.dumps(config, indent=2) + "\n"


# -- the runtime home: versions beside each other, run by the supervisor ---------------------
# Names as agent_runtime/supervisor.py has them (this script cannot import the package).

VERSIONS = "versions"
STATE = "runtime.json"
SUPERVISOR = "supervisor.py"
#: The SCM wrapper the Windows service runs (agent_runtime/winsupervisor.py, ADR 0023).
WINSUPERVISOR = "winsupervisor.py"
CONFIRM_TIMEOUT = 120.0
#: What `python -m venv` + pip left at the prefix before runtime self-update.
LEGACY_VENV = ("include", "lib", "lib64", "share", "bin")
#: The same on Windows (where a venv has no bin/: the launcher's directory is new there).
LEGACY_VENV_WINDOWS = ("Include", "Lib", "Scripts", "share")
#: ``<prefix>/bin/agent-runtime``: runs the current version (runtime.json), so the path
#: stays right whatever version the supervisor makes current.
LAUNCHER = """#!{python}
# agent-runtime: the current runtime of this runtime home (written by install.py)
import json, os, sys
home = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
try:
    with open(os.path.join(home, "runtime.json"), encoding="utf-8") as f:
        current = str(json.load(f)["current"])
    exe = os.path.join(home, "versions", current, "bin", "agent-runtime")
    os.execv(exe, [exe] + sys.argv[1:])
except (OSError, ValueError, KeyError, TypeError) as e:
    sys.exit("agent-runtime: no current runtime in " + home + ": " + str(e))
"""
#: Windows: ``<prefix>\bin\agent-runtime.cmd`` runs ``agent-runtime.py`` beside it with
#: this Python; that runs the current version's ``agent-runtime.exe`` and exits with its
#: code (a child: Windows has no exec that keeps the console waiting).
LAUNCHER_CMD = (
    "@echo off\r\n"
    "rem agent-runtime: the current runtime of this runtime home (written by install.py)\r\n"
    '"{python}" "%~dp0agent-runtime.py" %*\r\n'
    "exit /b %ERRORLEVEL%\r\n"
)
LAUNCHER_WINDOWS = """\
# agent-runtime: the current runtime of this runtime home, run by agent-runtime.cmd beside
# this file (written by install.py)
import json, os, subprocess, sys
home = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
try:
    with open(os.path.join(home, "runtime.json"), encoding="utf-8") as f:
        current = str(json.load(f)["current"])
    exe = os.path.join(home, "versions", current, "Scripts", "agent-runtime.exe")
    child = subprocess.Popen([exe] + sys.argv[1:])
except (OSError, ValueError, KeyError, TypeError) as e:
    sys.exit("agent-runtime: no current runtime in " + home + ": " + str(e))
while True:
    try:
        sys.exit(child.wait())
    except KeyboardInterrupt:  # Ctrl+C reached the runtime too (one console): wait for it
        pass
"""


def launchers(home: Path, windows: bool) -> dict[Path, bytes]:
    """The launcher's files in the home, the command first: ``bin/agent-runtime``, or on
    Windows ``bin\\agent-runtime.cmd`` and the ``agent-runtime.py`` it runs; with this
    Python."""
    if not windows:
        return {home / "bin" / "agent-runtime": LAUNCHER.format(python=sys.executable).encode()}
    cmd = LAUNCHER_CMD.format(python=sys.executable.replace("%", "%%"))
    return {home / "bin" / "agent-runtime.cmd": cmd.encode(),
            home / "bin" / "agent-runtime.py": LAUNCHER_WINDOWS.encode()}  # fmt: skip


def version_exe(home: Path, version: str, windows: bool) -> Path:
    """``agent-runtime`` of runtime ``version`` in the home."""
    return venv_exe(home / VERSIONS / version, "agent-runtime", windows)


def runnable(home: Path, version: str, windows: bool) -> bool:
    """Whether ``version`` has a complete venv (as the supervisor decides it)."""
    marker = home / VERSIONS / f".{version}.installing"
    return version_exe(home, version, windows).exists() and not marker.exists()


def current_version(home: Path, windows: bool) -> str | None:
    """``runtime.json``'s current version when it names a complete venv, else None."""
    try:
        current = json.loads((home / STATE).read_text(encoding="utf-8")).get("current")
    except (OSError, ValueError, AttributeError):
        return None
    return current if isinstance(current, str) and runnable(home, current, windows) else None


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """``data`` to ``path``: a temporary file, fsynced, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pip_install(venv: Path, python: Path, bundle: Path, version: str) -> None:
    _run([sys.executable, "-m", "venv", str(venv)], "creating the venv")
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-index",
          "--disable-pip-version-check", "--find-links", str(bundle), f"{PACKAGE}=={version}"],
         "pip install from the bundle")  # fmt: skip


def build_version(home: Path, bundle: Path, version: str, windows: bool) -> None:
    """``versions/<version>``: a venv with the runtime from the bundle, marked
    ``.<version>.installing`` until complete (the supervisor never runs a half-built one)."""
    versions = home / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    marker, final = versions / f".{version}.installing", versions / version
    marker.touch()
    shutil.rmtree(final, ignore_errors=True)
    try:
        _pip_install(final, venv_exe(final, "python", windows), bundle, version)
    except InstallError:
        shutil.rmtree(final, ignore_errors=True)
        marker.unlink()
        raise
    marker.unlink()


def home_files(windows: bool) -> tuple[str, ...]:
    """The runtime's standard-library files copied into the home: the supervisor, and on
    Windows the SCM wrapper that runs it (``service install --manager windows --home``
    copies the same two; copied here first, the service is not restarted for them)."""
    return (SUPERVISOR, WINSUPERVISOR) if windows else (SUPERVISOR,)


def package_file(home: Path, version: str, name: str, windows: bool) -> bytes:
    """``agent_runtime/<name>`` as installed in ``version``'s venv (``Lib\\site-packages``
    on Windows, ``lib/pythonX.Y/site-packages`` elsewhere)."""
    site = "Lib/site-packages" if windows else "lib/python*/site-packages"
    pattern = f"{site}/agent_runtime/{name}"
    found = sorted((home / VERSIONS / version).glob(pattern))
    if len(found) != 1:
        raise InstallError(f"runtime {version} in {home / VERSIONS} has no {pattern}")
    return found[0].read_bytes()


def lay_out_home(home: Path, bundle: Path, version: str, report: Report, windows: bool) -> str:
    """The runtime home at ``home``: the bundle's version built unless a runnable one is
    current already (a runtime release may have replaced the bundle's since), runtime.json,
    the supervisor (and on Windows its SCM wrapper); the current version."""
    current = current_version(home, windows)
    if current is None:
        fresh = not home.exists()
        if not runnable(home, version, windows):
            try:
                build_version(home, bundle, version, windows)
            except InstallError:
                if fresh:
                    shutil.rmtree(home, ignore_errors=True)
                raise
            report.changed.append(f"runtime {version} installed in {home / VERSIONS / version}")
        state = json.dumps({"current": version, "trial": None}).encode()
        write_atomic(home / STATE, state, 0o644)
        report.changed.append(f"{home / STATE}: current runtime {version}")
        current = version
    elif current != version:
        report.notes.append(f"runtime {current} is current in {home} (the bundle is {version}): "
                            "kept; runtime releases update it")  # fmt: skip
    for name in home_files(windows):
        source = package_file(home, current, name, windows)
        path = home / name
        if not path.is_file() or path.read_bytes() != source:
            write_atomic(path, source, 0o644)
            report.changed.append(f"{path} copied from runtime {current}")
    return current


def supervisor_argv(home: Path, config: Path, confirm_timeout: float) -> list[str]:
    """The supervisor's command line, as ``supervised_argv`` of
    agent_runtime/services/supervised_service.py has it, run by this Python."""
    return [sys.executable, str(home / SUPERVISOR), "--home", str(home),
            "--confirm-timeout", f"{confirm_timeout:g}", "--",
            "converge", "--config", str(config)]  # fmt: skip


def service_python(manager: str) -> Path:
    """The interpreter the service runs the supervisor with: this Python; for the Windows
    service the ``pythonw.exe`` beside the base interpreter (no console; the SCM runs it:
    ADR 0023), the ``home`` that the venvs it built name in their ``pyvenv.cfg``."""
    if manager != "windows":
        return Path(sys.executable)
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Path(base).with_name("pythonw.exe")


def finish_home(paths: Paths, report: Report) -> None:
    """Remove a plain venv's files from the prefix (an install from before runtime
    self-update; ``pyvenv.cfg`` goes last, so an interrupted run is finished by the next)
    and write the launcher (``bin/agent-runtime``; Windows: ``bin\\agent-runtime.cmd`` and
    the ``agent-runtime.py`` it runs)."""
    home = paths.prefix
    legacy = (home / "pyvenv.cfg").is_file()
    keep = (paths.config_dir, paths.state_dir, paths.agent_root)
    files = launchers(home, paths.windows)
    launcher = next(iter(files))
    if legacy:
        for name in LEGACY_VENV_WINDOWS if paths.windows else LEGACY_VENV:
            path = home / name
            if any(k == path or k.is_relative_to(path) for k in keep):
                continue  # config, state or the agent under it: never removed
            entries = sorted(path.iterdir()) if name == "bin" and path.is_dir() else [path]
            for entry in entries:
                if entry in files and not entry.is_symlink():
                    continue  # replaced below, atomically: the command path never vanishes
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                elif entry.exists() or entry.is_symlink():
                    entry.unlink()
    written = False
    for path, data in files.items():
        same = path.is_file() and not path.is_symlink() and path.read_bytes() == data
        if not same or not (paths.windows or os.access(path, os.X_OK)):
            write_atomic(path, data, 0o755)
            written = True
    if written and not legacy:
        report.changed.append(f"{launcher} runs the current runtime")
    if legacy:
        (home / "pyvenv.cfg").unlink()
        report.changed.append(f"the old runtime venv's files removed from {home}: it is a "
                              f"runtime home; {launcher} runs the current runtime")  # fmt: skip


def install(args: argparse.Namespace, host: Host, paths: Paths, report: Report) -> None:
    """Every install step, each skipped when already done."""
    keys = list(args.pinned_key or PINNED_KEYS)
    if not paths.agent_root.is_dir():
        raise InstallError(f"no agent at {paths.agent_root} (pass --agent-root DIR)")
    home = paths.prefix
    with tempfile.TemporaryDirectory(prefix="agent-runtime-bundle-") as tmp:
        bundle = Path(args.bundle_dir) if args.bundle_dir else None
        if bundle is None:
            bundle = download_bundle(args.server, host, Path(tmp))
        doc = verify_bundle(bundle, host, keys)
        version = str(doc.get("runtime_version"))
        current = lay_out_home(home, bundle, version, report, paths.windows)
    runtime = version_exe(home, current, paths.windows)
    report.runtime = {
        "home": str(home), "version": current,
        "command": str(next(iter(launchers(home, paths.windows)))),
        "supervisor": supervisor_argv(home, paths.config, args.confirm_timeout),
    }  # fmt: skip
    text = device_config(args, host, paths, keys)
    if not paths.config.is_file() or paths.config.read_text(encoding="utf-8") != text:
        _write_private(paths.config, text)
        report.changed.append(f"device config written to {paths.config}")
    if not paths.token_file.is_file():
        if args.code:
            _write_private(paths.code_file, args.code.strip() + "\n")
        _run([str(runtime), "enroll", "--config", str(paths.config)], "enrollment")
        report.changed.append(f"enrolled {args.device} with {args.server}")
    adopted = _run([str(runtime), "adopt", "--json", "--config", str(paths.config)],
                   "adopting the agent")  # fmt: skip
    report.adoption = json.loads(adopted or "{}")
    install_service(args, host, paths, runtime, report)
    finish_home(paths, report)


def install_service(
    args: argparse.Namespace, host: Host, paths: Paths, runtime: Path, report: Report
) -> None:
    """Register the supervised service over the runtime home (it replaces the plain one of
    an old install and restarts only the runtime), or say what to run without one."""
    supervisor = supervisor_argv(paths.prefix, paths.config, args.confirm_timeout)
    if args.service == "none":
        why = f" ({host.why_none})" if host.why_none else ""
        run = subprocess.list2cmdline(supervisor) if paths.windows else shlex.join(supervisor)
        if (paths.prefix / "pyvenv.cfg").is_file():
            run += f" (stop the old runtime, {paths.bin('agent-runtime')} converge, first)"
        report.notes.append(f"no OS service installed{why}: run {run}")
        return
    argv = [str(runtime), "service", "install", "--manager", args.service,
            "--config", str(paths.config), "--home", str(paths.prefix),
            "--python", str(service_python(args.service)),
            "--confirm-timeout", f"{args.confirm_timeout:g}"]  # fmt: skip
    said = _run(argv, "installing the service")
    if "unchanged" not in said:
        report.changed.append(said.strip())


def uninstall(args: argparse.Namespace, paths: Paths, report: Report) -> None:
    """Remove the service, the runtime home (or venv), the config and the state; never the
    agent's files."""
    runtime = paths.bin("agent-runtime")  # POSIX: the launcher; else an old plain venv's
    current = current_version(paths.prefix, paths.windows)
    home: list[str] = []
    if paths.windows and current is not None:
        # The supervised service's uninstall waits until the supervisor has stopped its
        # runtime: Windows removes no file in use, and the home is removed next.
        runtime, home = version_exe(paths.prefix, current, True), ["--home", str(paths.prefix)]
    elif not runtime.exists() and current is not None:  # stopped before the launcher
        runtime = version_exe(paths.prefix, current, paths.windows)
    if args.service != "none" and runtime.exists() and paths.config.is_file():
        said = _run([str(runtime), "service", "uninstall", "--manager", args.service,
                     "--config", str(paths.config), *home], "removing the service")  # fmt: skip
        if "was not installed" not in said:
            report.changed.append(said.strip())
    for path in (paths.prefix, paths.config_dir, paths.state_dir):
        if path.exists():
            if path == paths.agent_root or paths.agent_root.is_relative_to(path):
                raise InstallError(f"refusing to remove {path}: the agent lives under it")
            shutil.rmtree(path)
            report.changed.append(f"removed {path}")


# -- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None, host: Host) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="install.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", required=True, help="this device's id in the inventory")
    code = p.add_mutually_exclusive_group()
    code.add_argument("--code", help="the invite code from `engine devices invite DEVICE`")
    code.add_argument(
        "--code-file",
        help="a file holding the invite code (read, then deleted: keeps it out of `ps`)",
    )
    p.add_argument("--server", default=SERVER_URL, help=f"engine server URL (default {SERVER_URL})")
    p.add_argument("--agent-root", help="where the agent's files are (default: the field's)")
    p.add_argument(
        "--service",
        choices=["systemd", "launchd", "windows", "none"],
        default=host.service,
        help=f"OS service for agent-runtime (detected here: {host.service})",
    )
    p.add_argument(
        "--agent-service",
        choices=["systemd", "launchd", "windows", "process"],
        help="how the runtime restarts the agent (default: the OS's; process without one)",
    )
    p.add_argument("--prefix", help="the runtime home (config and state go under it too)")
    p.add_argument("--config-dir", help="where config.yaml, the token and the code go")
    p.add_argument("--state-dir", help="the runtime's state directory")
    p.add_argument("--bundle-dir", help="install from this bundle directory (offline)")
    p.add_argument(
        "--confirm-timeout",
        type=float,
        default=CONFIRM_TIMEOUT,
        metavar="SECONDS",
        help="how long a new runtime gets to check in before the supervisor restores the old "
        f"one (default {CONFIRM_TIMEOUT:g})",
    )
    p.add_argument("--pinned-key", action="append", help="trust this key (default: the server's)")
    p.add_argument("--uninstall", action="store_true", help="remove the runtime, keep the agent")
    p.add_argument("--json", action="store_true", help="print one JSON result document")
    args = p.parse_args(argv)
    if args.code_file:
        try:
            with open(args.code_file, encoding="utf-8") as f:
                args.code = f.read().strip()
            os.unlink(args.code_file)
        except OSError as e:
            p.error(f"--code-file {args.code_file}: {e.strerror or e}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the installer; 0 when the device is set up (or removed), 1 otherwise."""
    host = detect()
    args = parse_args(argv, host)
    report = Report(args.device)
    try:
        if PLATFORM and host.platform != PLATFORM:
            raise InstallError(f"this is the {PLATFORM} installer; this host is {host.platform}")
        if not args.confirm_timeout > 0:
            raise InstallError(f"--confirm-timeout must be positive, not {args.confirm_timeout:g}")
        if args.service != "none" and host.service == "none" and not args.uninstall:
            raise InstallError(f"no OS service manager here ({host.why_none}); pass --service none")
        paths = default_paths(host.platform, args)
        if args.uninstall:
            uninstall(args, paths, report)
        else:
            if not args.server:
                raise InstallError("no server URL: pass --server URL")
            install(args, host, paths, report)
    except (InstallError, OSError) as e:
        report.ok, report.error = False, str(e)
    if args.json:
        print(json.dumps(report.__dict__, indent=2))
    elif report.ok:
        for line in report.changed + report.notes:
            print(line)
        adopted = report.adoption or {}
        what = f"; agent: {adopted.get('status')} {adopted.get('version') or ''}".rstrip()
        done = "nothing to change" if not report.changed else f"{len(report.changed)} changes"
        verb = "removed" if args.uninstall else "ready"
        home = report.runtime or {}
        where = f"; runtime {home['version']} in {home['home']}" if home else ""
        print(f"agent-runtime {verb} on {args.device}: {done}{what if adopted else ''}{where}")
    else:
        print(f"install.py: FAILED: {report.error}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
