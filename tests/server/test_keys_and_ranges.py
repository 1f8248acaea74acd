"""On one real `engine serve`: the keys document the repo holds is served byte for byte and
re-read when `engine keys` changes it; HTTP Range answers are exact for any header
(hypothesis, fixed seed, bounded examples)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.signing import generate_key, private_key_pem, public_key_text
from tests.server.conftest import ServerHandle, copy_fleet, running_server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """One server for the module on a copy of the example fleet."""
    repo = copy_fleet(tmp_path_factory.mktemp("keys") / "fleet")
    with running_server(repo) as handle:
        yield handle


def _engine(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args, "-C", str(repo)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_keys_document_served_and_reread_after_rotate(served: ServerHandle, tmp_path: Path) -> None:
    """404 before `engine keys init`; then the exact bytes and signature; a rotate is served
    at once, without a restart."""
    root, release, other = (tmp_path / n for n in ("root.key", "r.pub", "o.pub"))
    root.write_bytes(private_key_pem(generate_key()))
    release.write_text(public_key_text(generate_key().public_key()))
    other.write_text(public_key_text(generate_key().public_key()))
    with served.client() as c:
        assert c.get("/v1/keys").status_code == 404
        assert c.get("/v1/keys/signature").status_code == 404
        done = _engine(served.repo, "keys", "init", "--key", str(release), "--root-key", str(root))
        assert done.returncode == 0, done.stderr
        first = c.get("/v1/keys")
        assert first.status_code == 200
        assert first.content == (served.repo / "keys" / "keys.json").read_bytes()
        assert (
            c.get("/v1/keys/signature").content
            == (served.repo / "keys" / "keys.json.sig").read_bytes()
        )
        rotated = _engine(
            served.repo, "keys", "rotate", "--add", str(other), "--root-key", str(root)
        )
        assert rotated.returncode == 0, rotated.stderr
        second = c.get("/v1/keys")
    assert second.json()["version"] == 2 and len(second.json()["keys"]) == 2
    assert second.headers["etag"] != first.headers["etag"]


def _artifact(repo: Path) -> tuple[str, bytes]:
    manifest = yaml.safe_load((repo / "releases" / "3.0.1.yaml").read_text())
    entry = max(manifest["platforms"]["linux"]["files"], key=lambda e: e["size"])
    return entry["sha256"], (repo / "artifacts" / entry["source"]).read_bytes()


_SPAN = st.integers(min_value=0, max_value=5000)
RANGES = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{b}", _SPAN, _SPAN),
    st.builds(lambda a: f"bytes={a}-", _SPAN),
    st.builds(lambda n: f"bytes=-{n}", _SPAN),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=RANGES)
@example(header="bytes=0-0")
@example(header="bytes=-0")
@example(header="bytes=99999999999999999999999-")
@example(header="bytes=0-1,5-6")
def test_any_range_header_gets_an_exact_answer(served: ServerHandle, header: str) -> None:
    """206 carries exactly the bytes its Content-Range names (the ones asked for); otherwise
    the whole file, 400 or 416 with bytes */size; never a server error."""
    sha, data = _artifact(served.repo)
    size = len(data)
    with httpx.Client(base_url=served.url, timeout=10) as c:
        r = c.get(f"/v1/artifacts/{sha}", headers={"Range": header})
    assert r.status_code in (200, 206, 400, 416), (header, r.status_code)
    if r.status_code == 200:
        assert r.content == data
    elif r.status_code == 416:
        assert r.headers["content-range"] == f"bytes */{size}"
    elif r.status_code == 206 and "multipart" not in r.headers["content-type"]:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", r.headers["content-range"])
        assert m is not None
        start, end, total = map(int, m.groups())
        assert total == size and r.content == data[start : end + 1]
        single = re.fullmatch(r"bytes=(\d*)-(\d*)", header)
        assert single is not None
        a, b = single.groups()
        if a and b:
            assert (start, end) == (int(a), min(int(b), size - 1))
        elif a:
            assert (start, end) == (int(a), size - 1)
        else:
            assert (start, end) == (max(size - int(b), 0), size - 1)
