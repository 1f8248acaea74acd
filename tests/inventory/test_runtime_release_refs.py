"""A group's ``runtime.release`` must name a runtime release under runtime-releases/."""

from __future__ import annotations

import pytest

from fleetbase.version import Version
from inventory.errors import InventoryError
from inventory.loader import load_operator_repo
from tests.inventory.conftest import GROUPS, RepoMaker

WITH_RUNTIME = GROUPS.replace(
    "    agent: {release: '3.0.1'}\n",
    "    agent: {release: '3.0.1'}\n    runtime: {release: '0.2.0'}\n",
)


def test_a_missing_runtime_release_is_an_error_with_file_and_line(make_repo: RepoMaker) -> None:
    root = make_repo({"inventory/groups.yaml": WITH_RUNTIME})
    (root / "runtime-releases" / "0.1.0" / "linux-x86_64-py3.11").mkdir(parents=True)
    (root / "runtime-releases" / "0.1.0" / "linux-x86_64-py3.11" / "bundle.json").write_text("{}")
    with pytest.raises(InventoryError) as info:
        load_operator_repo(root)
    (problem,) = info.value.problems
    assert problem.file.as_posix() == "inventory/groups.yaml" and (
        problem.line,
        problem.column,
    ) == (10, 24)
    assert problem.key_path == "groups.linux-prod.runtime.release"
    assert problem.message == (
        "runtime release 0.2.0 is not in runtime-releases/ (known: 0.1.0); make it with "
        "`engine runtime release`"
    )


def test_a_runtime_release_with_a_bundle_loads(make_repo: RepoMaker) -> None:
    root = make_repo({"inventory/groups.yaml": WITH_RUNTIME})
    bundle = root / "runtime-releases" / "0.2.0" / "linux-x86_64-py3.11"
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text("{}")
    repo = load_operator_repo(root)
    runtime = repo.inventory.groups["linux-prod"].runtime
    assert runtime is not None and runtime.release == Version("0.2.0")
