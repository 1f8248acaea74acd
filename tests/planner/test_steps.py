"""The one description of a transaction's steps, shared by plans and server offers."""

from __future__ import annotations

from engine.steps import describe_steps, format_size
from fleetbase.version import Version
from states.plan import StepName


def _details(current: str | None, desired: str = "3.0.1") -> dict[StepName, str]:
    steps = describe_steps(
        Version(desired),
        None if current is None else Version(current),
        files=1,
        size=3 * 1024 * 1024,
        signature_of="releases/3.0.1.yaml",
        confirm="3.0.1 runs and heartbeats",
    )
    return {s.name: s.detail for s in steps}


def test_update_lists_every_step_in_order() -> None:
    """An update names every StepName in order, with what it moves from and to."""
    details = _details("3.0.0")
    assert list(details) == list(StepName)
    assert details[StepName.DOWNLOAD] == "1 file, 3.0 MB"
    assert (
        details[StepName.VERIFY]
        == "signature of releases/3.0.1.yaml, then sha256 and size of 1 file"
    )
    assert details[StepName.SWAP] == "3.0.0 -> 3.0.1"
    assert details[StepName.CONFIRM_HEARTBEAT] == "3.0.1 runs and heartbeats"


def test_install_has_nothing_to_back_up() -> None:
    """A device without an agent gets an install: nothing to back up, swap installs."""
    details = _details(None)
    assert details[StepName.BACKUP] == "nothing installed to back up"
    assert details[StepName.SWAP] == "install 3.0.1"


def test_adopt_only_verifies_and_commits_the_files_in_place() -> None:
    """Files of the desired release already in place: verify them and commit, nothing else."""
    details = _details("3.0.1")
    assert list(details) == [StepName.VERIFY, StepName.COMMIT]
    assert details[StepName.VERIFY].endswith("the 1 file in place")


def test_format_size() -> None:
    """Byte counts for humans in powers of 1024."""
    assert [format_size(n) for n in (512, 12_700, 3 * 1024**2, 5 * 1024**4)] == [
        "512 B",
        "12.4 KB",
        "3.0 MB",
        "5120.0 GB",
    ]
