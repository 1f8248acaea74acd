"""`GET /metrics` of a real `engine serve`: who may scrape, what is counted, performance samples
kept per device and release, and the Grafana example's queries naming real metrics."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from engine.store import Store
from engine.store.schema import performance
from tests.harness import wait_until
from tests.server.conftest import REPO_ROOT, ServerHandle
from tests.server.helpers import CHECKIN, bearer, sqlite_url, stored_reports

A = "berlin-pos-0001"
DASHBOARD = REPO_ROOT / "examples" / "grafana" / "engine-dashboard.json"


def scrape(server: ServerHandle, token: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Metric family name -> labels -> value, as prometheus_client's parser reads /metrics."""
    with server.client() as c:
        r = c.get("/metrics", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(r.text):
        out.setdefault(family.name, {})  # listed even before its first sample
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_scrape_needs_the_metrics_or_the_admin_token(server: ServerHandle) -> None:
    """No token 401, a device's or a wrong token 403; the metrics token and the admin token
    both scrape; the metrics token opens nothing else."""
    token = server.enroll(A)
    metrics_token = (server.repo / ".engine" / "metrics.token").read_text().strip()
    assert str(server.repo / ".engine" / "metrics.token") in server.log()
    with server.client() as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=bearer(token)).status_code == 403
        assert c.get("/metrics", headers=bearer("x" * 43)).status_code == 403
        assert c.get("/v1/admin/devices", headers=bearer(metrics_token)).status_code == 403
        spec = c.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert "text/plain" in spec["responses"]["200"]["content"]
    assert scrape(server, metrics_token) and scrape(server, server.admin_token)


def test_refusals_and_enrollments_are_counted_by_status(server: ServerHandle) -> None:
    """A refused check-in counts under its HTTP status, an answered one under 200; enrollments
    under enrolled or the refusal's status."""
    token = server.enroll(A)
    with server.client() as c:
        assert c.post(f"/v1/devices/{A}/checkin", json=CHECKIN, headers=bearer("bad")).status_code
        ok = c.post(f"/v1/devices/{A}/checkin", json=CHECKIN, headers=bearer(token))
        assert ok.status_code == 200
        bad = {"device": A, "platform": "linux", "enrollment_secret": "wrong"}
        assert c.post("/v1/enroll", json=bad).status_code == 401
    stored_reports(sqlite_url(server.repo))  # reports are written behind (ADR 0016)
    m = scrape(server, server.admin_token)
    assert m["engine_checkins_total"] == {(("status", "200"),): 1.0, (("status", "401"),): 1.0}
    assert m["engine_enrollments_total"] == {
        (("result", "enrolled"),): 1.0,
        (("result", "401"),): 1.0,
    }
    assert m["engine_devices"] == {
        (("online", "true"), ("version", "3.0.0")): 1.0,
        (("online", "false"), ("version", "3.0.0")): 0.0,
    }


def test_performance_samples_are_kept_per_device_and_release(server: ServerHandle) -> None:
    """Samples sent with check-ins add up per (device, release): counts, CPU and RSS sums,
    latest and largest RSS; a check-in without one (an older runtime) changes nothing; the
    operator API shows the release's figures."""
    token = server.enroll(A)
    samples = [(None, 10_000_000), (4.0, 14_000_000), (6.0, 12_000_000)]
    with server.client() as c:
        for cpu, rss in samples:
            body = CHECKIN | {
                "performance": {"version": "3.0.0", "pid": 7, "cpu_percent": cpu,
                                "rss_bytes": rss, "at": "2026-11-27T10:00:00Z"},
            }  # fmt: skip
            assert c.post(f"/v1/devices/{A}/checkin", json=body, headers=bearer(token)).is_success
        assert c.post(f"/v1/devices/{A}/checkin", json=CHECKIN, headers=bearer(token)).is_success
    rows: list[Any] = []

    def stored() -> bool:  # samples are written behind, with the reports (ADR 0016)
        with Store.open(sqlite_url(server.repo), migrate=False) as store, store.read() as conn:
            rows[:] = conn.execute(select(performance)).all()
        return bool(rows) and rows[0].samples == 3

    wait_until("the performance samples stored", stored, timeout=30, interval=0.05)
    assert len(rows) == 1
    row = rows[0]
    assert (row.device, row.version, row.samples, row.cpu_samples) == (A, "3.0.0", 3, 2)
    assert (row.cpu_sum, row.rss_sum, row.rss_last, row.rss_max) == (
        10.0, 36_000_000, 12_000_000, 14_000_000,
    )  # fmt: skip
    with server.client() as c:
        assert c.get("/v1/admin/performance", headers=bearer(token)).status_code == 403
        answer = c.get("/v1/admin/performance", headers=server.admin_headers()).json()
    (release,) = answer["releases"]
    assert release["release"] == "3.0.0" and release["devices"] == 1
    assert release["cpu_percent_median"] == 5.0 and release["rss_bytes_median"] == 12_000_000


def test_grafana_example_queries_metrics_the_server_exposes(server: ServerHandle) -> None:
    """Every metric the example dashboard queries is one /metrics serves."""
    served = set(scrape(server, server.admin_token))
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in served}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    named = {n for e in exprs for n in re.findall(r"\bengine_[a-z_]+", e)}
    assert named
    for name in named:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert base in families or name in served, name
