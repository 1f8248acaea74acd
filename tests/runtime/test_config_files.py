"""Managed config files in the on-device transaction: swapped together, restored byte for byte.

Each case runs a real ``agent-runtime`` converge (a subprocess with a fault
point) that reconfigures the installed release from config A to config B, then
a second run that recovers: a kill or a failure after the swap began brings
config A back exactly (bytes and mode), before the retry installs B.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_runtime.converge import FilePlanSource
from agent_runtime.plan_source import DesiredRelease
from states.config_bundle import ConfigBundle, FlagValue, RenderedFile, config_digest
from tests.harness.procs import child_env
from tests.harness.sandbox import DEVICE, Sandbox

pytestmark = pytest.mark.slow

#: Runs one converge of the sandbox's plan with the bundle in argv[3] (JSON file).
_CONVERGE = """
import sys
from dataclasses import replace
from pathlib import Path
from agent_runtime.config import load_config
from agent_runtime.converge import FilePlanSource, Runtime
from states.config_bundle import ConfigBundle

class Source(FilePlanSource):
    def fetch(self):
        bundle = ConfigBundle.model_validate_json(Path(sys.argv[3]).read_bytes())
        return replace(super().fetch(), config=bundle)

runtime = Runtime(load_config(Path(sys.argv[1])))
result = runtime.converge_once(Source(Path(sys.argv[2]), sys.argv[4]))
print("result:", result.result.value, result.detail)
"""


def bundle(text: str, flags: dict[str, FlagValue], *, extra: str | None = None) -> ConfigBundle:
    """A bundle of agent.json holding ``text`` (and optionally extra.conf), and ``flags``."""
    files = [("agent.json", text, 0o640)] + ([("extra.conf", extra, 0o600)] if extra else [])
    rendered = [
        RenderedFile(path=p, mode=m, sha256=hashlib.sha256(c.encode()).hexdigest(), content=c)
        for p, c, m in files
    ]
    digest = config_digest(((f.path, f.mode, f.sha256) for f in rendered), flags)
    return ConfigBundle(digest=digest, files=rendered, flags=flags)


A = bundle('{"site": "a", "heartbeat": true}\n', {"verbose": False}, extra="keep = 1\n")
B = bundle('{"site": "b", "heartbeat": true}\n', {"verbose": True})


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Sandbox]:
    """3.0.1 installed and running with config A."""
    sb = Sandbox(base=tmp_path)
    sb.publish("3.0.1")
    sb.write_plan("3.0.1")
    runtime = sb.runtime()
    first = runtime.converge_once(FilePlanSource(sb.plan_path, DEVICE))
    assert first.result.value == "committed", first.detail
    source = FilePlanSource(sb.plan_path, DEVICE)
    desired = source.fetch()
    with_a = DesiredRelease(desired.device, desired.release, desired.base, desired.keys, A)
    configured = runtime.converge_once(_Fixed(with_a))
    assert configured.result.value == "committed", configured.detail
    yield sb
    sb.stop_agent()


class _Fixed:
    def __init__(self, desired: DesiredRelease) -> None:
        self.desired = desired

    def fetch(self) -> DesiredRelease:
        return self.desired


def _config_dir(sb: Sandbox) -> Path:
    return sb.state / "agent-config"


def _snapshot(sb: Sandbox) -> dict[str, tuple[bytes, int]]:
    base = _config_dir(sb)
    return {
        p.relative_to(base).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777)
        for p in sorted(base.rglob("*"))
        if p.is_file()
    }


def _converge(
    sb: Sandbox, target: ConfigBundle, fault: str | None
) -> subprocess.CompletedProcess[str]:
    path = sb.base / "bundle.json"
    path.write_text(target.model_dump_json())
    env = child_env({"AGENT_RUNTIME_FAULT": fault} if fault else None)
    argv = [sys.executable, "-c", _CONVERGE, str(sb.config_path), str(sb.plan_path), str(path)]
    return subprocess.run(
        [*argv, DEVICE], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_reconfigure_swaps_every_file_and_restarts_the_agent(device: Sandbox) -> None:
    """B replaces A: agent.json and flags.json rewritten, extra.conf removed, agent restarted."""
    before = device.agent_pid()
    run = _converge(device, B, None)
    assert "result: committed" in run.stdout, run.stdout + run.stderr
    files = _snapshot(device)
    assert sorted(files) == ["agent.json", "flags.json"]
    assert files["agent.json"] == (B.files[0].data, 0o640)
    assert json.loads(files["flags.json"][0]) == {"verbose": True}
    assert device.state_json()["config_digest"] == B.digest
    assert device.state_json()["installed"] == "3.0.1"
    assert device.agent_pid() != before
    device.wait_heartbeat("3.0.1")
    status = device.cli("status", "--json")
    assert json.loads(status.stdout)["config_digest"] == B.digest
    assert f"config:      {B.digest}" in device.cli("status").stdout


@pytest.mark.parametrize(
    ("fault", "mode"),
    [
        ("after:SWAP=kill", "kill"),
        ("before:RESTART=kill", "kill"),
        ("after:RESTART=kill", "kill"),
        ("before:CONFIRM=fail", "fail"),
        ("before:CONFIRM=fail,before:ROLLBACK_RESTART=kill", "kill"),
        ("before:CONFIRM=fail,after:ROLLBACK_SWAP=kill", "kill"),
    ],
)
def test_failure_after_the_swap_restores_the_previous_config_byte_for_byte(
    device: Sandbox, fault: str, mode: str
) -> None:
    """Killed or failing once B is swapped in: the next run restores A exactly (a failing
    download keeps the retry from installing B again), and the agent runs A's release."""
    before = _snapshot(device)
    run = _converge(device, B, fault)
    out = run.stdout + run.stderr
    if mode == "kill":
        assert run.returncode == -signal.SIGKILL, out
        if "ROLLBACK" not in fault:
            assert _snapshot(device) != before  # B in place
        recovered = _converge(device, B, "before:DOWNLOAD=fail")
        out += recovered.stdout + recovered.stderr
        assert "config files restored" in out, out
    else:
        assert "result: rolled_back" in run.stdout, out
    assert _snapshot(device) == before, out
    assert device.state_json()["config_digest"] == A.digest
    assert device.journal_json()["phase"] in ("ROLLED_BACK", "FAILED")  # type: ignore[index]
    device.wait_heartbeat("3.0.1")
    assert device.staging_entries() == []


def test_a_bundle_whose_digest_lies_is_refused_before_anything_changes(device: Sandbox) -> None:
    """A file whose content does not hash to its sha256 fails verify: nothing is swapped."""
    before = _snapshot(device)
    forged = B.model_copy(
        update={"files": [B.files[0].model_copy(update={"content": '{"site": "x"}\n'})]}
    )
    run = _converge(device, forged, None)
    assert "result: failed" in run.stdout, run.stdout + run.stderr
    assert "does not match" in run.stdout
    assert _snapshot(device) == before


def test_a_file_with_secrets_enters_the_digest_by_its_mac(device: Sandbox) -> None:
    """A file that holds secrets carries the server's keyed digest (``mac``), which the
    config digest covers instead of its sha256: the runtime, which has no key, installs it
    and reports that digest; a digest that does not cover the macs it got is refused."""
    keyed = bundle('{"token": "4821"}\n', {"verbose": False})
    mac = "hmac-sha256:" + "5" * 64
    files = [keyed.files[0].model_copy(update={"mac": mac})]
    digest = config_digest([(f.path, f.mode, mac) for f in files], keyed.flags)
    plain = config_digest([(f.path, f.mode, f.sha256) for f in files], keyed.flags)
    assert digest != plain
    before = _snapshot(device)
    lying = ConfigBundle(digest=plain, files=files, flags=keyed.flags)
    run = _converge(device, lying, None)
    assert "result: failed" in run.stdout and "does not match" in run.stdout, run.stdout
    assert _snapshot(device) == before
    run = _converge(device, ConfigBundle(digest=digest, files=files, flags=keyed.flags), None)
    assert "result: committed" in run.stdout, run.stdout + run.stderr
    assert _snapshot(device)["agent.json"] == (b'{"token": "4821"}\n', 0o640)
    assert device.state_json()["config_digest"] == digest


def test_an_update_installs_its_config_in_the_same_transaction(tmp_path: Path) -> None:
    """3.0.0 without config -> 3.0.1 with config A: one transaction, files and config together;
    a failing confirm takes both back (3.0.0 runs again, no config file left)."""
    sb = Sandbox(base=tmp_path)
    try:
        sb.publish("3.0.0")
        sb.publish("3.0.1")
        sb.write_plan("3.0.0")
        assert sb.runtime().converge_once(FilePlanSource(sb.plan_path, DEVICE)).result.value == (
            "committed"
        )
        sb.write_plan("3.0.1", "3.0.0")
        failed = _converge(sb, A, "before:CONFIRM=fail")
        assert "result: rolled_back" in failed.stdout, failed.stdout + failed.stderr
        assert _snapshot(sb) == {} and sb.state_json()["installed"] == "3.0.0"
        assert sb.state_json()["config_digest"] is None
        run = _converge(sb, A, None)
        assert "result: committed" in run.stdout, run.stdout + run.stderr
        assert sb.state_json()["installed"] == "3.0.1"
        assert sb.state_json()["config_digest"] == A.digest
        assert sorted(_snapshot(sb)) == ["agent.json", "extra.conf", "flags.json"]
        sb.wait_heartbeat("3.0.1")
    finally:
        sb.stop_agent()
