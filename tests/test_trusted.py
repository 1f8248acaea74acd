"""fleetbase.trusted: models built from trusted values are what model_construct builds."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from fleetbase.platform import Platform
from fleetbase.trusted import trusted_builder
from fleetbase.version import Version
from states.plan import Action, DevicePlan


def _values(device: str) -> dict[str, Any]:
    return {
        "device": device,
        "group": "fleet",
        "platform": Platform.LINUX,
        "current": Version("3.0.0"),
        "desired": Version("3.0.1"),
        "action": Action.UPDATE,
        "reason": "3.0.0 -> 3.0.1 (group fleet)",
        "wave": 1,
        "rollout": "fleet@3.0.1",
        "steps": [],
        "channel": None,
        "awaits_runtime": None,
        "component": "agent",
        "config_digest": None,
        "config_diff": None,
    }


def test_built_like_model_construct() -> None:
    build = trusted_builder(DevicePlan)
    fast, slow = build(_values("a")), DevicePlan.model_construct(**_values("a"))
    assert fast == slow
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.__pydantic_extra__ == slow.__pydantic_extra__
    assert fast.__pydantic_private__ == slow.__pydantic_private__
    assert fast.model_dump_json() == slow.model_dump_json()
    assert DevicePlan.model_validate_json(fast.model_dump_json()) == fast


def test_instances_share_a_fields_set_that_copies_do_not_change() -> None:
    build = trusted_builder(DevicePlan)
    a, b = build(_values("a")), build(_values("b"))
    assert a.model_fields_set is b.model_fields_set
    before = set(a.model_fields_set)
    copied = a.model_copy(update={"wave": 2})
    assert (copied.wave, a.wave, b.device) == (2, 1, "b")
    assert copied.model_fields_set is not a.model_fields_set
    assert a.model_fields_set == before == set(DevicePlan.model_fields)
    with pytest.raises(ValueError, match="frozen"):
        a.wave = 3  # type: ignore[misc]
    assert a.model_fields_set == before


class _Mutable(BaseModel):
    name: str


class _Open(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    name: str


@pytest.mark.parametrize("model", [_Mutable, _Open])
def test_refuses_models_whose_fields_set_could_grow(model: type[BaseModel]) -> None:
    with pytest.raises(TypeError, match="not a frozen model"):
        trusted_builder(model)
