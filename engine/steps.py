"""The steps of a device's transaction as plans show them: one description for every plan.

``engine plan`` (from the operator repo) and the server's offers (from the
store) both describe a move from ``current`` to ``desired`` with
:func:`describe_steps`; they differ only in what they know about the release
(the manifest's path and health check, or just its version).
"""

from __future__ import annotations

from fleetbase.version import Version
from states.plan import Step, StepName

__all__ = ["describe_steps", "format_size"]


def format_size(size: int) -> str:
    """A byte count for humans: 512 B, 12.4 KB, 3.1 MB (powers of 1024)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def describe_steps(
    desired: Version,
    current: Version | None,
    *,
    files: int,
    size: int,
    signature_of: str,
    confirm: str,
) -> list[Step]:
    """One step per ``StepName``, in order, for moving from ``current`` to ``desired``.

    ``files`` and ``size`` are the platform's file count and bytes,
    ``signature_of`` names what the signature covers (a manifest path or the
    version), ``confirm`` says how the new agent is confirmed healthy. When
    ``current`` is ``desired`` (adopt: the files are in place, no runtime
    managed them yet) only verify and commit remain.
    """
    count = f"{files} file{'s' if files != 1 else ''}"
    if current is not None and current == desired:
        return [
            Step.model_construct(
                name=StepName.VERIFY,
                detail=f"signature of {signature_of}, then sha256 and size of the {count} in place",
            ),
            Step.model_construct(
                name=StepName.COMMIT,
                detail=f"start the agent if it is not running, record {desired} as "
                "known-good and report",
            ),
        ]
    details = {
        StepName.DOWNLOAD: f"{count}, {format_size(size)}",
        StepName.VERIFY: f"signature of {signature_of}, then sha256 and size of {count}",
        StepName.BACKUP: f"keep {current} restorable"
        if current is not None
        else "nothing installed to back up",
        StepName.SWAP: f"{current} -> {desired}" if current is not None else f"install {desired}",
        StepName.RESTART: "restart the agent through its service manager",
        StepName.CONFIRM_HEARTBEAT: confirm,
        StepName.COMMIT: f"record {desired} as known-good and report",
    }
    return [Step.model_construct(name=name, detail=details[name]) for name in StepName]
