"""What a device's runtime can take, by the features it reported (``Report.features``).

The planner blocks a device whose runtime said what it can do and cannot take
what its rollout would offer: a runtime release (``runtime_update``: only a
runtime under the supervisor can install one) or managed config files and
flags (``config``). A report without features (never said: an imported report,
or one stored before the server kept them) is not blocked here; the device's
runtime still refuses what it cannot take when it is offered (ADR 0024).
"""

from __future__ import annotations

import json

from states.protocol import FEATURE_CONFIG, FEATURE_RUNTIME_UPDATE
from states.report import Report

__all__ = [
    "NOT_SUPERVISED_REASON",
    "can_update_runtime",
    "lacks_feature",
    "no_config_reason",
    "runtime_label",
    "stored_can_update",
]

#: The plan's reason for a device in a runtime rollout whose runtime cannot update itself.
NOT_SUPERVISED_REASON = (
    "runtime is not supervised, so it cannot update itself: reinstall it with the field "
    "installer (docs/install.md), which runs it under the supervisor on every OS"
)


def lacks_feature(report: Report | None, feature: str) -> bool:
    """True when the device's runtime reported its features and ``feature`` is not among them."""
    return report is not None and report.features is not None and feature not in report.features


def can_update_runtime(report: Report | None) -> bool | None:
    """Whether the device's runtime can take a runtime release; None when it never said."""
    if report is None or report.features is None:
        return None
    return FEATURE_RUNTIME_UPDATE in report.features


def no_config_reason(report: Report) -> str:
    """The plan's reason for a device offered config files or flags its runtime cannot install."""
    runtime = f"runtime {report.runtime_version}" if report.runtime_version else "its runtime"
    return (
        f"{runtime} cannot install managed config files and flags (it does not report "
        f"{FEATURE_CONFIG!r}): reinstall a newer runtime with the field installer "
        "(docs/install.md) first"
    )


def stored_can_update(features: str | None) -> bool | None:
    """``can_update_runtime`` of a ``reports.features`` column value (a JSON list, or NULL)."""
    if features is None:
        return None
    try:
        found = json.loads(features)
    except ValueError:
        return None
    return isinstance(found, list) and FEATURE_RUNTIME_UPDATE in found


def runtime_label(version: str | None, can_update: bool | None) -> str:
    """A device's runtime as lists show it: ``0.2.0 self-update``, ``0.1.0 no self-update``,
    or the version alone when its runtime never said (``-`` without a version)."""
    shown = version or "-"
    if can_update is None:
        return shown
    return f"{shown} self-update" if can_update else f"{shown} no self-update"
