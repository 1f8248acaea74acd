"""Fixtures: a device sandbox with the example agent 3.0.0 running, configured for pull mode."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.sandbox import DEVICE, Sandbox
from tests.pull.stub import StubServer

PullDevice = Callable[..., Sandbox]


def pull_config(sb: Sandbox, url: str, **server: Any) -> None:
    """Rewrite the sandbox's config for pull mode against ``url`` (short timings)."""
    settings: dict[str, Any] = {
        "url": url,
        "token_file": str(sb.base / "token"),
        "enrollment_secret": "enroll-me",
        "timeout": "2s",
        "heartbeat_interval": "0.2s",
        "backoff_base": "0.05s",
        "backoff_cap": "0.4s",
    }
    settings.update(server)
    sb.write_config(
        server=settings,
        converge={"interval": "0.2s", "jitter": "0.05s", "poll_interval_min": "0.05s"},
    )


def offer(stub: StubServer, sb: Sandbox, version: str, current: str | None) -> dict[str, Any]:
    """Serve ``version``'s signed manifest and artifacts from the stub; the check-in answer."""
    manifest = (sb.repo / "releases" / f"{version}.yaml").read_bytes()
    stub.files[f"/v1/releases/{version}/manifest"] = manifest
    stub.files[f"/v1/releases/{version}/signature"] = (
        sb.repo / "releases" / f"{version}.yaml.sig"
    ).read_bytes()
    for data in sb.published[version].files.values():
        stub.files[f"/v1/artifacts/{hashlib.sha256(data).hexdigest()}"] = data
    return {
        "plan": {"device": DEVICE, "group": "g", "platform": "linux", "current": current,
                 "desired": version, "action": "update", "wave": 0},
        "release": {"version": version, "serial": sb.published[version].doc["serial"],
                    "manifest": f"/v1/releases/{version}/manifest",
                    "signature": f"/v1/releases/{version}/signature",
                    "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
                    "artifacts": "/v1/artifacts/", "artifacts_by_hash": True},
        "poll_interval": stub.poll_interval,
    }  # fmt: skip


@pytest.fixture
def running_device(tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox whose agent 3.0.0 was installed (from a plan file) and runs."""
    sb = Sandbox(base=tmp_path / "device")
    for v in ("3.0.0", "3.0.1"):
        sb.publish(v)
    assert sb.converge_inproc("3.0.0") == "committed"
    sb.wait_heartbeat("3.0.0")
    try:
        yield sb
    finally:
        sb.stop_agent()
