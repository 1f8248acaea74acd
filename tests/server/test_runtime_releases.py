"""`engine runtime release` makes runtime releases from bundles; `engine serve` serves them."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.cli import main as engine_main
from engine.signing import generate_key, public_key_text
from states.bundle import verify_bundle
from states.signing import raw_trusted_keys
from tests.bundles import RuntimeBundle
from tests.server.conftest import ServerHandle, copy_fleet, running_server


def _release(repo: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = engine_main(["runtime", "release", "-C", str(repo), *args])
    return code, out.getvalue(), err.getvalue()


def _repo(base: Path, keys: list[str]) -> Path:
    """A copy of the example fleet whose engine.yaml trusts ``keys`` (as key files)."""
    repo = copy_fleet(base)
    names = []
    for i, key in enumerate(keys):
        (repo / "keys").mkdir(exist_ok=True)
        (repo / "keys" / f"bundle-{i}.pub").write_text(key + "\n")
        names.append(f"keys/bundle-{i}.pub")
    engine_yaml = repo / "engine.yaml"
    engine_yaml.write_text(engine_yaml.read_text() + "\ntrusted_keys: " + json.dumps(names) + "\n")
    return repo


def test_a_release_is_made_once_from_signed_bundles(
    runtime_bundle: RuntimeBundle, tmp_path: Path
) -> None:
    repo = _repo(tmp_path / "fleet", [runtime_bundle.public_key])
    version = json.loads((runtime_bundle.directory / "bundle.json").read_text())["runtime_version"]
    code, out, err = _release(repo, "--from", str(runtime_bundle.root), "--json")
    assert code == 0, err
    made = json.loads(out)
    assert made["version"] == version and made["targets"] == [runtime_bundle.target]
    copy = repo / "runtime-releases" / version / runtime_bundle.target
    keys = raw_trusted_keys([runtime_bundle.public_key])
    assert verify_bundle(copy, keys).runtime_version == version
    # a release never changes once made
    code, _, err = _release(repo, "--from", str(runtime_bundle.root))
    assert code == 1 and f"runtime release {version} exists already" in err


def test_bundles_of_another_key_or_version_are_refused(
    runtime_bundle: RuntimeBundle, tmp_path: Path
) -> None:
    other = public_key_text(generate_key().public_key())
    repo = _repo(tmp_path / "fleet", [other])
    code, _, err = _release(repo, "--from", str(runtime_bundle.root))
    assert code == 1 and "runtime bundle refused" in err
    repo2 = _repo(tmp_path / "fleet2", [runtime_bundle.public_key])
    code, _, err = _release(repo2, "--from", str(runtime_bundle.root), "--version", "9.9.9")
    assert code == 1 and "not 9.9.9" in err
    bundles = tmp_path / "tampered"
    runtime_bundle.copy_to(bundles)
    wheel = next((bundles / runtime_bundle.target).glob("pydantic-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[100] ^= 1  # one flipped bit
    wheel.write_bytes(bytes(data))
    code, _, err = _release(repo2, "--from", str(bundles))
    assert code == 1 and "sha256" in err
    assert not (repo2 / "runtime-releases").exists() or not any(
        p for p in (repo2 / "runtime-releases").iterdir() if not p.name.startswith(".")
    )


@dataclass
class Served:
    """The server, the runtime release it serves and the session's bundle."""

    server: ServerHandle
    version: str
    bundle: RuntimeBundle


@pytest.fixture(scope="module")
def served(
    runtime_bundle: RuntimeBundle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("runtime-releases-served")
    repo = _repo(base / "fleet", [runtime_bundle.public_key])
    code, out, err = _release(repo, "--from", str(runtime_bundle.root), "--json")
    assert code == 0, err
    version = json.loads(out)["version"]
    with running_server(repo) as handle:
        yield Served(handle, version, runtime_bundle)


def test_the_release_files_download_and_verify(served: Served, tmp_path: Path) -> None:
    target = served.bundle.target
    listed = json.loads((served.bundle.directory / "bundle.json").read_text())["files"]
    names = ["bundle.json", "bundle.json.sig", *(f["name"] for f in listed)]
    dest = tmp_path / target
    dest.mkdir()
    with served.server.client() as c:
        for name in names:
            r = c.get(f"/runtime/releases/{served.version}/{target}/{name}")
            assert r.status_code == 200, (name, r.text)
            (dest / name).write_bytes(r.content)
    verify_bundle(dest, raw_trusted_keys([served.bundle.public_key]))


@pytest.mark.parametrize(
    "path",
    [
        "/runtime/releases/9.9.9/{target}/bundle.json",  # no such release
        "/runtime/releases/{version}/linux-x86_64-py3.99/bundle.json",  # no such target
        "/runtime/releases/{version}/{target}/stray-1.0-py3-none-any.whl",  # not listed
        "/runtime/releases/not..a..version/{target}/bundle.json",
        "/runtime/releases/{version}/{target}/%2e%2e%2fbundle.json",
    ],
)
def test_anything_else_is_404(served: Served, path: str) -> None:
    url = path.format(version=served.version, target=served.bundle.target)
    with served.server.client() as c:
        r = c.get(url)
    assert r.status_code == 404
    assert "detail" in r.json()
