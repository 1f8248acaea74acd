"""SSH push reports the facts the remote runtime's `status --json` gives (requires:)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from agent_runtime.facts import facts
from engine.ssh.push import _report
from engine.ssh.targets import SshTarget
from fleetbase.platform import Platform

TARGET = cast(SshTarget, SimpleNamespace(platform=Platform.LINUX))


def _status(**extra: Any) -> dict[str, Any]:
    return {"installed": "3.0.0", "known_good": "3.0.0", "agent_running": True, **extra}


def test_facts_of_the_remote_runtime_are_reported() -> None:
    """This machine's facts, as a remote runtime's status document carries them."""
    found = facts(Platform.LINUX)
    doc = {
        "python_version": found.python_version,
        "os_version": found.os_version,
        "components": found.components,
    }
    report = _report(TARGET, _status(facts=doc))
    assert report.python_version == found.python_version
    assert report.os_version == found.os_version
    assert report.components == found.components
    assert str(report.agent_version) == "3.0.0" and report.runtime_version is None


def test_missing_or_unusable_facts_stay_unknown() -> None:
    """An older runtime (no facts) or facts out of bounds: reported as unknown, the round
    goes on (the plan then says which fact is missing)."""
    for status in (_status(), _status(facts="nonsense"), _status(facts={"os_version": "x" * 500})):
        report = _report(TARGET, status)
        assert (report.python_version, report.os_version, report.components) == (None, None, None)
        assert str(report.agent_version) == "3.0.0"
