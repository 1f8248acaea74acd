"""Layouts of the agent root: ``versioned`` (release dirs + pointer) and ``in_place`` (legacy)."""

from __future__ import annotations

from agent_runtime.config import DeviceConfig
from agent_runtime.layouts.base import Layout, RecordTouch, SwapPlan
from agent_runtime.layouts.in_place import InPlaceLayout
from agent_runtime.layouts.versioned import VersionedLayout

__all__ = ["InPlaceLayout", "Layout", "RecordTouch", "SwapPlan", "VersionedLayout", "make_layout"]


def make_layout(config: DeviceConfig) -> Layout:
    """The layout the device config names."""
    if config.layout == "versioned":
        return VersionedLayout(config.agent_root, pointer=config.pointer)
    return InPlaceLayout(config.agent_root, rename_aside=config.rename_aside)
