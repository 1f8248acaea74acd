"""`engine serve` hands out runtime bundles: the list, their files with Range, nothing else."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from states.bundle import verify_bundle
from states.signing import raw_trusted_keys
from tests.bundles import RuntimeBundle
from tests.server.conftest import ServerHandle, copy_fleet, running_server

#: A valid manifest whose one wheel is a symlink leading out of the bundle directory.
LINKED = "macos-arm64-py3.13"
#: A directory whose bundle.json is not a manifest.
BROKEN = "windows-amd64-py3.12"


@dataclass
class Served:
    """The server, the bundles root it serves and the session's bundle."""

    server: ServerHandle
    root: Path
    bundle: RuntimeBundle


@pytest.fixture(scope="module")
def served(
    runtime_bundle: RuntimeBundle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One server whose engine.yaml points runtime_bundles at a copy of the session's bundle,
    plus a stray file, a bundle with a symlink out, and a broken bundle."""
    base = tmp_path_factory.mktemp("bundles-served")
    root = base / "bundles"
    shutil.copytree(runtime_bundle.root, root)
    (root / runtime_bundle.target / "stray-1.0-py3-none-any.whl").write_bytes(b"not listed")
    secret = base / "secret-1.0-py3-none-any.whl"
    secret.write_bytes(b"outside the bundles")
    linked = root / LINKED
    linked.mkdir()
    doc = json.loads((root / runtime_bundle.target / "bundle.json").read_text())
    doc.update(target=LINKED, platform="macos", arch="arm64", python="3.13")
    doc["files"] = [{"name": secret.name, "sha256": hashlib.sha256(b"x").hexdigest(), "size": 1}]
    (linked / "bundle.json").write_text(json.dumps(doc))
    (linked / secret.name).symlink_to(secret)
    (root / BROKEN).mkdir()
    (root / BROKEN / "bundle.json").write_text("{not json")
    repo = copy_fleet(base / "fleet", settings=f"runtime_bundles: {root}")
    with running_server(repo) as handle:
        yield Served(handle, root, runtime_bundle)


def test_list_names_each_valid_bundle(served: Served) -> None:
    """GET /runtime/bundles lists each target with a valid manifest, its fields and sha256."""
    target = served.bundle.target
    manifest = (served.root / target / "bundle.json").read_bytes()
    doc = json.loads(manifest)
    with served.server.client() as c:
        r = c.get("/runtime/bundles")
    assert r.status_code == 200
    listed = {b["target"]: b for b in r.json()}
    assert set(listed) == {target, LINKED}
    entry = listed[target]
    for key in ("platform", "arch", "python", "runtime_version"):
        assert entry[key] == doc[key]
    assert entry["bundle_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert entry["signed"] is True
    assert listed[LINKED]["signed"] is False


def test_downloaded_bundle_verifies(served: Served, tmp_path: Path) -> None:
    """bundle.json, its signature and every listed wheel download byte for byte, and the
    downloaded directory verifies against the signing key."""
    target = served.bundle.target
    source = served.root / target
    names = ["bundle.json", "bundle.json.sig"]
    names += [f["name"] for f in json.loads((source / "bundle.json").read_text())["files"]]
    dest = tmp_path / target
    dest.mkdir()
    with served.server.client() as c:
        for name in names:
            r = c.get(f"/runtime/bundles/{target}/{name}")
            assert r.status_code == 200, (name, r.text)
            assert r.content == (source / name).read_bytes()
            if name.endswith(".whl"):
                assert r.headers["etag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
            (dest / name).write_bytes(r.content)
    manifest = verify_bundle(dest, raw_trusted_keys([served.bundle.public_key]))
    assert manifest.target == target


def test_wheel_in_ranges(served: Served) -> None:
    """A Range request on a wheel gives 206 with the exact bytes; two halves make the file."""
    target = served.bundle.target
    (wheel,) = (served.root / target).glob("pydantic_core-*.whl")
    data = wheel.read_bytes()
    half = len(data) // 2
    url = f"/runtime/bundles/{target}/{wheel.name}"
    with served.server.client() as c:
        first = c.get(url, headers={"Range": f"bytes=0-{half - 1}"})
        rest = c.get(url, headers={"Range": f"bytes={half}-"})
    assert first.status_code == 206 and rest.status_code == 206
    assert first.headers["content-range"] == f"bytes 0-{half - 1}/{len(data)}"
    assert first.content + rest.content == data


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("linux-x86_64-py3.99/bundle.json", "no runtime bundle for target"),
        (f"{BROKEN}/bundle.json", "no runtime bundle for target"),
        ("..%2F..%2Ffleet/bundle.json", "no runtime bundle for target"),
        ("{target}/stray-1.0-py3-none-any.whl", "has no file"),
        ("{target}/..%2F..%2Ffleet%2Fengine.yaml", "has no file"),
        ("{target}/%2e%2e/{target}/bundle.json", "has no file"),
        (f"{LINKED}/secret-1.0-py3-none-any.whl", "has no file"),
    ],
)
def test_unknown_target_or_file_is_404(served: Served, path: str, detail: str) -> None:
    """Unknown targets, unlisted files, paths out of the bundle and symlinks leading out of
    it answer 404 with a JSON reason, never the file."""
    url = "/runtime/bundles/" + path.format(target=served.bundle.target)
    with served.server.client() as c:
        r = c.get(url)
    assert r.status_code == 404, r.text
    assert detail in r.json()["detail"]


def test_no_bundles_is_an_empty_list(server: ServerHandle) -> None:
    """A server with no runtime bundles (default directory absent) lists none."""
    assert not (server.repo / ".engine" / "runtime-bundles").exists()
    with server.client() as c:
        r = c.get("/runtime/bundles")
        missing = c.get("/runtime/bundles/linux-x86_64-py3.11/bundle.json")
    assert r.status_code == 200 and r.json() == []
    assert missing.status_code == 404 and "no runtime bundle" in missing.json()["detail"]
