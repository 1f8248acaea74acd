"""`GET /install/<platform>` on a real `engine serve`: the installer with the server's URL,
pinned keys and platform filled in; 404 for another platform; 409 when engine.yaml pins no
key (an installer that trusts nothing is never handed out)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from engine.cli import main as engine_main
from tests.server.conftest import copy_fleet, running_server


def test_installer_carries_url_keys_and_platform(tmp_path: Path) -> None:
    """The served script parses as Python, names this server and the repo's public key,
    and holds no credential of the server."""
    repo = copy_fleet(tmp_path / "fleet")
    assert engine_main(["keygen", "--out", str(repo / "keys")]) == 0
    engine_yaml = repo / "engine.yaml"
    engine_yaml.write_text(engine_yaml.read_text() + "\ntrusted_keys: [keys/release-signing.pub]\n")
    pub = (repo / "keys" / "release-signing.pub").read_text().strip()
    with running_server(repo) as server, server.client() as c:
        r = c.get("/install/macos")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/x-python")
        tree = ast.parse(r.text)
        values = {
            t.id: ast.literal_eval(node.value)
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
            for t in ([node.target] if isinstance(node, ast.AnnAssign) else node.targets)
            if isinstance(t, ast.Name) and t.id in ("SERVER_URL", "PINNED_KEYS", "PLATFORM")
        }
        assert values == {"SERVER_URL": "http://127.0.0.1:8080", "PINNED_KEYS": [pub],
                          "PLATFORM": "macos"}  # fmt: skip
        assert server.enrollment_secret not in r.text and server.admin_token not in r.text
        assert c.get("/install/solaris").status_code == 404


@pytest.mark.parametrize("platform", ["linux"])
def test_no_pinned_key_means_no_installer(tmp_path: Path, platform: str) -> None:
    """Without trusted_keys in engine.yaml the route answers 409 saying what to add."""
    repo = copy_fleet(tmp_path / "fleet")
    with running_server(repo) as server, server.client() as c:
        r = c.get(f"/install/{platform}")
    assert r.status_code == 409 and "trusted_keys" in r.json()["detail"]
