"""Fixtures: device sandboxes whose agents are stopped at the end of each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.sandbox import Sandbox

MakeSandbox = Callable[..., Sandbox]


@pytest.fixture
def make_sandbox(tmp_path: Path) -> Iterator[MakeSandbox]:
    """Build sandboxes under tmp_path; every agent they started is stopped afterwards."""
    made: list[Sandbox] = []

    def factory(**kw: Any) -> Sandbox:
        sb = Sandbox(base=tmp_path / f"sb{len(made)}", **kw)
        made.append(sb)
        return sb

    yield factory
    for sb in made:
        sb.stop_agent()
