"""The app in-process (real store, real repo files): the field release from the store, the
check-in answer carrying an offer, artifacts that changed on disk, the operator API."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, insert, update

from engine.rollouts.offers import Offer, server_release_ref
from engine.rollouts.releases import record_release
from engine.server import OfferFunction, ServerSettings, create_app
from engine.server.registry import enroll_device
from engine.store import Store
from engine.store.schema import releases, reports, rollouts
from fleetbase.platform import Platform
from inventory.catalog import load_release
from states.plan import Action, DevicePlan
from states.report import Report
from tests.server.conftest import copy_fleet
from tests.server.helpers import CHECKIN, bearer, snapshot

ADMIN = "admin-token-for-tests"
SECRET = "enrollment-secret-for-tests"
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
DEVICE = "berlin-pos-0001"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The example operator repo without a field_release setting."""
    return copy_fleet(tmp_path / "fleet")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A migrated SQLite store."""
    with Store.open(f"sqlite:///{tmp_path / 'state.db'}") as opened:
        yield opened


def _client(repo: Path, store: Store, offer: OfferFunction | None = None) -> TestClient:
    settings = ServerSettings(
        store=store,
        repo_root=repo,
        admin_token=ADMIN,
        enrollment_secret=SECRET,
        clock=lambda: NOW,
        offer=offer,
        report_flush_seconds=0,  # reports read back at once (write-behind: test_checkin_db)
    )
    return TestClient(create_app(settings))


def _record(store: Store, repo: Path, *versions: str) -> None:
    with store.write() as conn:
        for version in versions:
            record_release(conn, load_release(repo / "releases" / f"{version}.yaml", repo), NOW)


def _rollout(conn: Connection, release: str, state: str, name: str | None = None) -> int:
    result = conn.execute(
        insert(rollouts).values(
            name=name or f"linux-prod@{release}",
            group_name="linux-prod",
            release=release,
            priority=0,
            policy=json.dumps({"waves": [100]}),
            state=state,
            current_wave=0,
            created_at=NOW,
            updated_at=NOW,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _token(store: Store, device: str = DEVICE) -> str:
    with store.write() as conn:
        return enroll_device(conn, device, Platform.WINDOWS, NOW).token


def test_no_field_release_is_404(repo: Path, store: Store) -> None:
    """Without field_release and nothing applied, the field endpoints answer a clear 404."""
    with _client(repo, store) as c:
        version = c.get("/diags/persistentagentversion")
        file = c.get("/installerFiles/Linux/Agent/nats_agent.py")
    assert version.status_code == 404 and "field_release" in version.json()["detail"]
    assert file.status_code == 404


def test_field_release_is_never_just_the_newest_applied(repo: Path, store: Store) -> None:
    """Releases recorded by apply, none completed, no reports: 404 rather than the newest."""
    _record(store, repo, "3.0.0", "3.0.2", "3.0.1")
    with store.write() as conn:
        _rollout(conn, "3.0.2", "active")
    with _client(repo, store) as c:
        answer = c.get("/diags/persistentagentversion")
        file = c.get("/installerFiles/Linux/Agent/nats_agent.py")
    assert answer.status_code == 404 and "no release has completed" in answer.json()["detail"]
    assert file.status_code == 404 and "detail" in file.json()


def test_field_release_before_completion_is_what_the_fleet_runs(repo: Path, store: Store) -> None:
    """No release completed: the known version most devices report, not the active one."""
    _record(store, repo, "3.0.0", "3.0.1")
    with store.write() as conn:
        _rollout(conn, "3.0.1", "active")
    seen = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    store.upsert_reports(
        [Report(device=f"d{i}", agent_version=v, last_seen=seen)  # type: ignore[arg-type]
         for i, v in enumerate(["3.0.0", "3.0.0", "3.0.1", "9.9.9", "9.9.9", "9.9.9"])]
    )  # fmt: skip
    with _client(repo, store) as c:
        body = c.get("/diags/persistentagentversion").json()
    assert body["persistent_agent_version"] == "3.0.0"  # 9.9.9 is no known release


@pytest.mark.parametrize(
    ("completed_first", "expected"),
    [(True, "3.0.1"), (False, "3.0.0")],
)
def test_superseded_release_counts_only_if_it_completed_first(
    repo: Path, store: Store, completed_first: bool, expected: str
) -> None:
    """A superseded rollout leaves its release the field release only if it had completed."""
    _record(store, repo, "3.0.0", "3.0.1", "3.0.2")
    with store.write() as conn:
        _rollout(conn, "3.0.0", "completed", name="a@3.0.0")
        rid = _rollout(conn, "3.0.1", "superseded")
        if completed_first:
            conn.execute(update(rollouts).where(rollouts.c.id == rid).values(completed_at=NOW))
        _rollout(conn, "3.0.2", "active")
    with _client(repo, store) as c:
        body = c.get("/diags/persistentagentversion").json()
    assert body["persistent_agent_version"] == expected


def test_release_with_one_unfinished_rollout_is_not_the_field_release(
    repo: Path, store: Store
) -> None:
    """One group's rollout completed, another group's halted: the release is not served."""
    _record(store, repo, "3.0.0", "3.0.1")
    with store.write() as conn:
        _rollout(conn, "3.0.0", "completed", name="a@3.0.0")
        _rollout(conn, "3.0.1", "completed", name="a@3.0.1")
        _rollout(conn, "3.0.1", "halted", name="b@3.0.1")
    with _client(repo, store) as c:
        body = c.get("/diags/persistentagentversion").json()
    assert body["persistent_agent_version"] == "3.0.0"


def test_field_release_prefers_a_completed_rollout(repo: Path, store: Store) -> None:
    """A release whose rollout completed beats a newer one still rolling out."""
    _record(store, repo, "3.0.1", "3.0.2")
    with store.write() as conn:
        _rollout(conn, "3.0.1", "completed")
        _rollout(conn, "3.0.2", "active")
    with _client(repo, store) as c:
        body = c.get("/diags/persistentagentversion").json()
    assert body["persistent_agent_version"] == "3.0.1"


def test_manifest_comes_from_the_store(repo: Path, store: Store) -> None:
    """The store's recorded bytes are served (replicas agree), even when the repo file differs."""
    _record(store, repo, "3.0.1")
    recorded = (repo / "releases" / "3.0.1.yaml").read_bytes() + b"# recorded\n"
    with store.write() as conn:
        conn.execute(
            update(releases).where(releases.c.version == "3.0.1").values(manifest=recorded)
        )
    with _client(repo, store) as c:
        r = c.get("/v1/releases/3.0.1/manifest")
    assert r.content == recorded


def test_checkin_answers_the_offer(repo: Path, store: Store) -> None:
    """The check-in stores the report, passes it to the offer, and answers plan and release."""
    seen: list[tuple[Report, dict[str, Any] | None]] = []

    def offer(conn: Connection, device: str, report: Report, now: datetime) -> Offer | None:
        row = conn.execute(reports.select().where(reports.c.device == device)).first()
        seen.append((report, None if row is None else dict(row._mapping)))
        plan = DevicePlan(
            device=device,
            group="windows-prod",
            platform=Platform.WINDOWS,
            current=report.agent_version,
            desired="3.0.1",  # type: ignore[arg-type]
            action=Action.UPDATE,
            wave=0,
            rollout="windows-prod@3.0.1",
        )
        return Offer(plan, server_release_ref("3.0.1", 2, "ab" * 32))

    token = _token(store)
    with _client(repo, store, offer) as c:
        r = c.post(f"/v1/devices/{DEVICE}/checkin", json=CHECKIN, headers=bearer(token))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["plan"]["device"] == DEVICE and body["plan"]["action"] == "update"
    assert body["plan"]["desired"] == "3.0.1"
    assert body["release"]["manifest"] == "/v1/releases/3.0.1/manifest"
    assert body["release"]["artifacts_by_hash"] is True
    ((report, row),) = seen
    assert report.last_seen == NOW and str(report.agent_version) == "3.0.0"
    assert report.last_result == "committed"
    assert row is not None and row["tx_target"] == "3.0.1" and row["tx_attempts"] == 2


def _sha_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha(path: Path) -> str:
    return _sha_bytes(path.read_bytes())


def test_changed_artifact_is_not_served(repo: Path, store: Store) -> None:
    """A changed copy is skipped for an intact one; with none left: 500, never wrong bytes."""
    _record(store, repo, "3.0.1")
    manifest = load_release(repo / "releases" / "3.0.1.yaml", repo).manifest
    sha = manifest.platforms[Platform.LINUX].files[0].sha256
    copies = sorted(p for p in (repo / "artifacts").rglob("*") if p.is_file() and _sha(p) == sha)
    assert len(copies) > 1  # the same file in several releases and platforms
    with _client(repo, store) as c:
        assert c.get(f"/v1/artifacts/{sha}").status_code == 200
        copies[0].write_bytes(b"tampered")
        another = c.get(f"/v1/artifacts/{sha}")
        for path in copies:
            path.write_bytes(b"tampered")
        r = c.get(f"/v1/artifacts/{sha}")
    assert another.status_code == 200 and _sha_bytes(another.content) == sha
    assert r.status_code == 500
    assert b"tampered" not in r.content


_ADMIN_CALLS = [
    ("GET", "/v1/admin/devices"),
    ("GET", "/v1/admin/status"),
    ("GET", "/v1/admin/rollouts"),
    ("GET", "/v1/admin/rollouts/1"),
    ("POST", "/v1/admin/rollouts/1/pause"),
    ("POST", f"/v1/admin/devices/{DEVICE}/revoke"),
]


@pytest.mark.parametrize(("method", "path"), _ADMIN_CALLS)
def test_admin_api_refuses_missing_and_wrong_tokens(
    repo: Path, store: Store, method: str, path: str
) -> None:
    """Operator endpoints: 401 without a token, 403 with a wrong or a device token; no change."""
    device_token = _token(store)
    with store.write() as conn:
        _rollout(conn, "3.0.1", "active")
    before = snapshot(store.url)
    with _client(repo, store) as c:
        missing = c.request(method, path)
        wrong = c.request(method, path, headers=bearer("not-the-admin-token"))
        device = c.request(method, path, headers=bearer(device_token))
    assert missing.status_code == 401
    assert wrong.status_code == 403 and device.status_code == 403
    assert snapshot(store.url) == before
    with store.read() as conn:
        assert conn.execute(rollouts.select()).one().state == "active"


def test_admin_devices_and_status(repo: Path, store: Store) -> None:
    """The operator sees each device's version, last check-in and online state, and counts."""
    token = _token(store)
    _token(store, "hamburg-srv-0002")
    with _client(repo, store) as c:
        c.post(f"/v1/devices/{DEVICE}/checkin", json=CHECKIN, headers=bearer(token))
        devices = c.get("/v1/admin/devices", headers=bearer(ADMIN)).json()
        status = c.get("/v1/admin/status", headers=bearer(ADMIN)).json()
    by_id = {d["device"]: d for d in devices}
    assert by_id[DEVICE]["agent_version"] == "3.0.0"
    assert by_id[DEVICE]["last_checkin"] == NOW.isoformat()
    assert by_id[DEVICE]["online"] is True
    assert by_id["hamburg-srv-0002"]["online"] is False
    assert status["devices"] == 2 and status["online"] == 1 and status["offline"] == 1
    assert status["versions"] == {"3.0.0": 1}


def test_admin_rollout_pause_resume_abort(repo: Path, store: Store) -> None:
    """Pause, resume and abort move the rollout; a refused move is 409, an unknown one 404."""
    with store.write() as conn:
        rollout_id = _rollout(conn, "3.0.1", "active")
    admin = bearer(ADMIN)
    with _client(repo, store) as c:
        paused = c.post(f"/v1/admin/rollouts/{rollout_id}/pause", headers=admin)
        listed = c.get("/v1/admin/rollouts", headers=admin).json()
        resumed = c.post("/v1/admin/rollouts/linux-prod@3.0.1/resume", headers=admin)
        aborted = c.post(f"/v1/admin/rollouts/{rollout_id}/abort", headers=admin)
        again = c.post(f"/v1/admin/rollouts/{rollout_id}/resume", headers=admin)
        unknown = c.post("/v1/admin/rollouts/99/pause", headers=admin)
        bad_action = c.post(f"/v1/admin/rollouts/{rollout_id}/explode", headers=admin)
        detail = c.get(f"/v1/admin/rollouts/{rollout_id}", headers=admin).json()
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert [r["state"] for r in listed] == ["paused"]
    assert resumed.status_code == 200 and resumed.json()["state"] == "active"
    assert aborted.status_code == 200 and aborted.json()["state"] == "aborted"
    assert again.status_code == 409 and "aborted" in again.json()["detail"]
    assert unknown.status_code == 404 and bad_action.status_code == 422
    assert "pause" in bad_action.text and "abort" in bad_action.text
    assert detail["state"] == "aborted" and detail["devices"] == []


def test_online_window_follows_the_clock(repo: Path, store: Store) -> None:
    """A device last seen more than three poll intervals ago is offline."""
    token = _token(store)
    with _client(repo, store) as c:
        c.post(f"/v1/devices/{DEVICE}/checkin", json=CHECKIN, headers=bearer(token))
    later = ServerSettings(
        store=store,
        repo_root=repo,
        admin_token=ADMIN,
        enrollment_secret=SECRET,
        clock=lambda: NOW + timedelta(minutes=4),
    )
    with TestClient(create_app(later)) as c:
        (device,) = c.get("/v1/admin/devices", headers=bearer(ADMIN)).json()
    assert device["online"] is False


def test_checkin_thread_survives_any_failure(repo: Path, store: Store) -> None:
    """A check-in whose database work fails with a foreign error is answered 503 with
    Retry-After; the check-in thread lives on and answers the next one."""
    token = _token(store)
    calls: list[str] = []

    def offer(conn: Connection, device: str, report: Report, now: datetime) -> Offer | None:
        calls.append(device)
        if len(calls) == 1:
            raise KeyError("not a store error")
        return None

    with _client(repo, store, offer) as c:
        first = c.post(f"/v1/devices/{DEVICE}/checkin", json=CHECKIN, headers=bearer(token))
        second = c.post(f"/v1/devices/{DEVICE}/checkin", json=CHECKIN, headers=bearer(token))
    assert first.status_code == 503 and first.headers["retry-after"] == "5", first.text
    assert second.status_code == 200 and second.json()["plan"] is None
    assert calls == [DEVICE, DEVICE]


def _with_config(repo: Path) -> None:
    """Release 3.0.1 of the repo declares agent.json with a secret (unsigned: never served)."""
    manifest = repo / "releases" / "3.0.1.yaml"
    manifest.write_text(
        manifest.read_text()
        + "config:\n  - {path: agent.json, template: templates/agent.json.j2, secrets: [key]}\n"
        + "flags:\n  verbose: {type: bool, default: false}\n"
    )
    (repo / "templates").mkdir()
    (repo / "templates" / "agent.json.j2").write_text('{"key": {{ secrets.key | tojson }}}\n')
    secrets = repo / "secrets.yaml"
    secrets.write_text("digest_key: 0123456789abcdef0123456789abcdef\nkey: the-secret-value\n")
    secrets.chmod(0o600)
    with (repo / "engine.yaml").open("a") as f:
        f.write("secrets_file: secrets.yaml\n")


def test_checkin_carries_the_rendered_config_only_to_runtimes_that_install_it(
    repo: Path, store: Store
) -> None:
    """An offer with a config digest gets the files rendered with the real secret, when the
    runtime says it installs config and the rendering has that digest; otherwise no plan."""
    from engine.config_render import ConfigRenderer
    from engine.secrets_file import load_secrets
    from fleetbase.version import Version
    from inventory.loader import load_operator_repo
    from states.protocol import FEATURE_CONFIG

    _with_config(repo)
    loaded = load_operator_repo(repo)
    secrets = load_secrets(repo, "secrets.yaml")
    rendered = ConfigRenderer(loaded, secrets).render(DEVICE, Version("3.0.1"))
    assert rendered is not None
    wanted = {"digest": rendered.digest}

    def offer(conn: Connection, device: str, report: Report, now: datetime) -> Offer | None:
        plan = DevicePlan(
            device=device,
            group="windows-prod",
            platform=Platform.WINDOWS,
            current=report.agent_version,
            desired="3.0.1",  # type: ignore[arg-type]
            action=Action.UPDATE,
            rollout="windows-prod@3.0.1+cfg00000000",
            config_digest=wanted["digest"],
        )
        return Offer(plan, server_release_ref("3.0.1", 2, "ab" * 32))

    token = _token(store)
    capable = {**CHECKIN, "features": [FEATURE_CONFIG]}
    with _client(repo, store, offer) as c:
        old = c.post(f"/v1/devices/{DEVICE}/checkin", json=CHECKIN, headers=bearer(token))
        new = c.post(f"/v1/devices/{DEVICE}/checkin", json=capable, headers=bearer(token))
        wanted["digest"] = "sha256:" + "0" * 64
        stale = c.post(f"/v1/devices/{DEVICE}/checkin", json=capable, headers=bearer(token))
    assert old.status_code == 200 and old.json()["plan"] is None
    body = new.json()
    assert body["plan"]["config_digest"] == rendered.digest
    assert body["config"]["digest"] == rendered.digest
    assert body["config"]["files"][0]["content"] == '{"key": "the-secret-value"}\n'
    assert body["config"]["flags"] == {"verbose": False}
    assert stale.status_code == 200 and stale.json()["plan"] is None
    assert b"the-secret-value" not in (repo.parent / "state.db").read_bytes()
