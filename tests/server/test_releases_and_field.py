"""Manifests, artifacts with HTTP Range, the field-compatible endpoints, OpenAPI and dashboard,
on one real `engine serve` (these requests change nothing)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.server.conftest import ServerHandle, copy_fleet, running_server

FIELD = "3.0.1"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """One server for the module, on the example fleet with field release 3.0.1."""
    repo = copy_fleet(
        tmp_path_factory.mktemp("served") / "fleet", settings=f'field_release: "{FIELD}"'
    )
    with running_server(repo) as handle:
        yield handle


def _manifest(repo: Path, version: str) -> dict[str, object]:
    data: dict[str, object] = yaml.safe_load((repo / "releases" / f"{version}.yaml").read_text())
    return data


def _file(repo: Path, version: str, platform: str, path: str) -> tuple[str, bytes]:
    manifest = _manifest(repo, version)
    for entry in manifest["platforms"][platform]["files"]:  # type: ignore[index]
        if entry["path"] == path:
            return entry["sha256"], (repo / "artifacts" / entry["source"]).read_bytes()
    raise AssertionError(f"{path} not in {version}/{platform}")


def test_manifest_is_served_byte_for_byte(served: ServerHandle) -> None:
    """GET /v1/releases/V/manifest returns the exact bytes of releases/V.yaml, ETag its sha256."""
    data = (served.repo / "releases" / "3.0.2.yaml").read_bytes()
    with served.client() as c:
        r = c.get("/v1/releases/3.0.2/manifest")
        missing = c.get("/v1/releases/9.9.9/manifest")
        unsigned = c.get("/v1/releases/3.0.2/signature")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert missing.status_code == 404
    assert unsigned.status_code == 404 and "signature" in unsigned.json()["detail"]


def test_artifact_whole_file_and_etag(served: ServerHandle) -> None:
    """An artifact by sha256 is the exact file, ETag the sha256, Accept-Ranges bytes."""
    sha, data = _file(served.repo, "3.0.1", "linux", "core/agent.py")
    with served.client() as c:
        r = c.get(f"/v1/artifacts/{sha}")
    assert r.status_code == 200
    assert r.content == data and hashlib.sha256(r.content).hexdigest() == sha
    assert r.headers["etag"] == f'"{sha}"'
    assert r.headers["accept-ranges"] == "bytes"


def test_artifact_range_requests_resume_a_download(served: ServerHandle) -> None:
    """Range gives 206 with Content-Range and the exact bytes; two halves make the file."""
    sha, data = _file(served.repo, "3.0.1", "linux", "core/agent.py")
    half = len(data) // 2
    with served.client() as c:
        first = c.get(f"/v1/artifacts/{sha}", headers={"Range": f"bytes=0-{half - 1}"})
        rest = c.get(f"/v1/artifacts/{sha}", headers={"Range": f"bytes={half}-"})
        tail = c.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=-10"})
        if_range = c.get(
            f"/v1/artifacts/{sha}", headers={"Range": f"bytes={half}-", "If-Range": f'"{sha}"'}
        )
        stale = c.get(
            f"/v1/artifacts/{sha}", headers={"Range": f"bytes={half}-", "If-Range": '"x"'}
        )
    assert first.status_code == 206 and rest.status_code == 206
    assert first.headers["content-range"] == f"bytes 0-{half - 1}/{len(data)}"
    assert rest.headers["content-range"] == f"bytes {half}-{len(data) - 1}/{len(data)}"
    assert first.content + rest.content == data
    assert tail.status_code == 206 and tail.content == data[-10:]
    assert if_range.status_code == 206 and if_range.content == data[half:]
    assert stale.status_code == 200 and stale.content == data


def test_artifact_unsatisfiable_range_is_416(served: ServerHandle) -> None:
    """A range starting past the end gets 416 with Content-Range bytes */size."""
    sha, data = _file(served.repo, "3.0.1", "linux", "core/agent.py")
    with served.client() as c:
        r = c.get(f"/v1/artifacts/{sha}", headers={"Range": f"bytes={len(data) + 5}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(data)}"


@pytest.mark.parametrize("name", ["0" * 64, "abc", "../../etc/passwd", "A" * 64])
def test_unknown_or_malformed_artifact_is_404(served: ServerHandle, name: str) -> None:
    """Hashes no release declares, and anything that is not a sha256, get 404."""
    with served.client() as c:
        r = c.get(f"/v1/artifacts/{name}")
    assert r.status_code == 404


def test_field_version_shape_and_hashes(served: ServerHandle) -> None:
    """/diags/persistentagentversion gives the field release and nats_agent.py's sha256 per OS."""
    with served.client() as c:
        r = c.get("/diags/persistentagentversion")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {
        "persistent_agent_version",
        "persistent_agent_hash_py",
        "persistent_agent_hash_linux",
        "persistent_agent_hash_macos",
    }
    assert body["persistent_agent_version"] == FIELD
    for key, platform in (("py", "windows"), ("linux", "linux"), ("macos", "macos")):
        sha, data = _file(served.repo, FIELD, platform, "nats_agent.py")
        assert body[f"persistent_agent_hash_{key}"] == sha == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("platform", "key"), [("Windows", "windows"), ("Linux", "linux"), ("MacOS", "macos")]
)
def test_installer_files_serve_the_field_release(
    served: ServerHandle, platform: str, key: str
) -> None:
    """/installerFiles/<Platform>/Agent/<path> returns that platform's file of the field release."""
    for path in ("nats_agent.py", "core/agent.py"):
        sha, data = _file(served.repo, FIELD, key, path)
        with served.client() as c:
            r = c.get(f"/installerFiles/{platform}/Agent/{path}")
        assert r.status_code == 200, r.text
        assert r.content == data
        assert r.headers["etag"] == f'"{sha}"'


@pytest.mark.parametrize(
    "path",
    [
        "/installerFiles/Solaris/Agent/nats_agent.py",
        "/installerFiles/Linux/Agent/missing.py",
        "/installerFiles/Linux/Agent/../../engine.yaml",
        "/installerFiles/Linux/Agent/core/../../../engine.yaml",
        "/installerFiles/Linux/Agent/%2e%2e/%2e%2e/engine.yaml",
        "/installerFiles/Linux/Agent//etc/passwd",
    ],
)
def test_installer_files_refuse_other_paths(served: ServerHandle, path: str) -> None:
    """Unknown platforms, files not in the release and traversal attempts get a JSON 404."""
    with served.client() as c:
        r = c.get(path)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert "detail" in r.json()
    assert b"stale_after" not in r.content


def test_openapi_lists_every_endpoint(served: ServerHandle) -> None:
    """/openapi.json documents the device, operator and field paths with the wire models."""
    with served.client() as c:
        spec = c.get("/openapi.json").json()
        docs = c.get("/docs")
    assert docs.status_code == 200
    paths = set(spec["paths"])
    assert {
        "/v1/enroll",
        "/v1/devices/{device}/checkin",
        "/v1/devices/{device}/events",
        "/v1/devices/{device}/heartbeat",
        "/v1/releases/{version}/manifest",
        "/v1/releases/{version}/signature",
        "/v1/artifacts/{sha256}",
        "/v1/admin/devices",
        "/v1/admin/rollouts",
        "/v1/admin/status",
        "/diags/persistentagentversion",
        "/installerFiles/{platform}/Agent/{path}",
    } <= paths
    schemas = spec["components"]["schemas"]
    assert {"CheckinRequest", "CheckinResponse", "EnrollRequest", "EventBatch", "Heartbeat"} <= set(
        schemas
    )
    checkin = spec["paths"]["/v1/devices/{device}/checkin"]["post"]
    ref = checkin["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/CheckinRequest"


def test_dashboard_is_self_contained(served: ServerHandle) -> None:
    """The dashboard at / asks for a login on a page that loads nothing from elsewhere."""
    with served.client() as c:
        first = c.get("/")
        r = c.get("/login")
    assert first.status_code == 303 and first.headers["location"].startswith("/login")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text)


def test_health_check_reads_the_store(served: ServerHandle) -> None:
    """/healthz answers 200 while the store is readable (for load balancers)."""
    with served.client() as c:
        r = c.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
