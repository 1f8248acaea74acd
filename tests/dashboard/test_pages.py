"""The dashboard's pages in-process: login and its cookie, CSRF and origin checks on actions,
escaping of hostile text, filters and paging, and the API docs served from local assets."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import quote

from fastapi.testclient import TestClient
from sqlalchemy import select

from engine.store import Store
from engine.store.schema import reports, rollouts
from states.report import Report
from tests.dashboard.conftest import ADMIN, log_in
from tests.dashboard.data import FAILED, HOSTILE, NOW, XSS

PAGES = ("/", "/rollouts", "/rollouts/1", "/devices", f"/devices/{FAILED}")


def _state(store: Store, rollout_id: int) -> str:
    with store.read() as conn:
        return str(
            conn.execute(select(rollouts.c.state).where(rollouts.c.id == rollout_id)).scalar_one()
        )


def test_pages_need_a_session(client: TestClient) -> None:
    """Without logging in every page redirects to the login form, which keeps the way back."""
    for path in PAGES:
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    assert (
        client.post("/rollouts/1/pause", data={"csrf": "x"}, follow_redirects=False).status_code
        == 303
    )


def test_login_sets_a_strict_httponly_cookie(client: TestClient) -> None:
    """The admin token logs in: an HttpOnly, SameSite=Strict cookie; a wrong token is 403."""
    wrong = client.post("/login", data={"token": "guess"}, follow_redirects=False)
    assert wrong.status_code == 403 and "not the admin token" in wrong.text
    assert "set-cookie" not in wrong.headers
    r = client.post(
        "/login", data={"token": ADMIN, "next": "//evil.example/"}, follow_redirects=False
    )
    cookie = r.headers["set-cookie"].lower()
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert ADMIN.lower() not in cookie
    for path in PAGES:
        page = client.get(path)
        assert page.status_code == 200, path
        assert "script-src 'self'" in page.headers["content-security-policy"]


def test_forged_or_foreign_cookie_is_refused(client: TestClient) -> None:
    """A cookie that was not signed with this admin token does not open the pages."""
    client.cookies.set("engine_session", "9999999999.nonce.0000")
    assert client.get("/", follow_redirects=False).status_code == 303


def test_hostile_text_is_escaped(client: TestClient, rollout_id: int) -> None:
    """A device id and step detail carrying HTML come back escaped on every page."""
    log_in(client)
    listed = client.get("/devices", params={"q": "hostile"})
    shown = client.get("/devices/" + quote(HOSTILE, safe=""))
    rollout = client.get(f"/rollouts/{rollout_id}", params={"state": "succeeded"})
    for page in (listed, shown, rollout):
        assert page.status_code == 200
        assert HOSTILE not in page.text and "<img" not in page.text
        assert "hostile-&lt;img src=x onerror=alert(1)&gt;&lt;/b&gt;" in page.text
    assert XSS not in shown.text and "<script>alert" not in shown.text
    assert "&lt;script&gt;alert(" in shown.text


def test_actions_need_the_csrf_token_and_same_origin(
    client: TestClient, store: Store, rollout_id: int
) -> None:
    """Abort without the session's token, or from another origin, changes nothing."""
    csrf = log_in(client)
    url = f"/rollouts/{rollout_id}/abort"
    no_token = client.post(url, data={"csrf": "forged"}, follow_redirects=False)
    foreign = client.post(
        url, data={"csrf": csrf}, headers={"Origin": "http://evil.example"}, follow_redirects=False
    )
    cross_site = client.post(
        url, data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"}, follow_redirects=False
    )
    assert no_token.status_code == foreign.status_code == cross_site.status_code == 403
    assert _state(store, rollout_id) == "halted"
    refused = client.post(f"/rollouts/{rollout_id}/resume", data={"csrf": csrf})
    assert refused.status_code == 409 and "halted" in refused.text
    done = client.post(
        url, data={"csrf": csrf}, headers={"Origin": "http://127.0.0.1"}, follow_redirects=False
    )
    assert done.status_code == 303 and _state(store, rollout_id) == "aborted"


def test_rollout_page_shows_gates_halt_reason_and_fresh_device_reasons(
    client: TestClient, rollout_id: int
) -> None:
    """Per-wave counts, the halt reason, gates in words, and no stale retry promise."""
    log_in(client)
    page = client.get(f"/rollouts/{rollout_id}").text
    assert "above max_failure_rate 20%" in page
    assert 'data-wave="0" data-committed="1" data-in-progress="0" data-failed="1"' in page
    assert "halts above 20%" in page and "needs 95%" in page
    assert "not retried: the rollout is halted" in page and "retry at" not in page
    assert 'data-action="abort"' in page and 'data-action="pause"' not in page


def test_device_page_shows_performance_samples(client: TestClient) -> None:
    """The device page lists the agent's CPU and memory per release."""
    log_in(client)
    page = client.get(f"/devices/{FAILED}").text
    assert 'data-perf-version="3.0.3"' in page and "90.0 MB" in page and "2.5 %" in page


def test_fleet_page_counts(client: TestClient) -> None:
    """Devices, online, failures in 24 h, versions and the success rate per release."""
    log_in(client)
    page = client.get("/").text
    assert re.search(r'data-count="devices">5<', page)
    assert re.search(r'data-count="failures">1<', page)
    assert 'data-version="3.0.3"' in page and 'data-release="3.0.3"' in page
    assert "50%" in page  # 1 succeeded, 1 failed
    assert "not retried: the rollout is halted" in page and "retry at" not in page


def test_device_filters_and_paging(client: TestClient, store: Store) -> None:
    """Filters narrow the list; pages of 50; bad filter values are a 400 naming the choices."""
    store.upsert_reports(
        Report(device=f"zz-{i:03d}", agent_version="2.9.0", platform="macos",  # type: ignore[arg-type]
               last_seen=NOW - timedelta(seconds=10))
        for i in range(120)
    )  # fmt: skip
    log_in(client)
    total = client.get("/devices", params={"version": "2.9.0"}).text
    assert 'data-total="120"' in total and "page 1 of 3" in total
    third = client.get("/devices", params={"version": "2.9.0", "page": 3}).text
    assert third.count('data-device="zz-') == 20 and "zz-119" in third
    assert 'data-total="1"' in client.get("/devices", params={"state": "failed"}).text
    assert (
        'data-total="120"'
        in client.get("/devices", params={"platform": "macos", "online": "yes"}).text
    )
    grouped = client.get("/devices", params={"group": "linux-prod"}).text
    assert 'data-total="5"' in grouped
    bad = client.get("/devices", params={"state": "exploded", "online": "maybe"})
    assert (
        bad.status_code == 400
        and "state: one of pending" in bad.text
        and "online: yes or no" in bad.text
    )
    with store.read() as conn:
        assert conn.execute(select(reports.c.device).where(reports.c.device == "zz-000")).first()


def test_api_docs_load_only_local_assets(client: TestClient) -> None:
    """/docs and /redoc name only this server's assets, which are served."""
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), path
        for asset in re.findall(r"""(?:src|href)=["'](/static/[^"']+)""", page.text):
            served = client.get(asset)
            assert served.status_code == 200 and len(served.content) > 500, asset
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/vendor/README.md").status_code == 404


def test_enrolled_device_without_report_is_listed(client: TestClient, store: Store) -> None:
    """A device that enrolled but never reported is in the list, offline, with no version."""
    from engine.server.registry import enroll_device
    from fleetbase.platform import Platform

    with store.write() as conn:
        enroll_device(conn, "aaa-new-device", Platform.MACOS, NOW)
    log_in(client)
    everything = client.get("/devices").text
    assert 'data-total="6"' in everything
    assert everything.index('data-device="aaa-new-device"') < everything.index(
        f'data-device="{FAILED}"'
    )
    for query in ({"version": "none"}, {"online": "no", "platform": "macos"}, {"q": "new-dev"}):
        page = client.get("/devices", params=query).text
        assert 'data-device="aaa-new-device"' in page, query
    assert (
        'data-device="aaa-new-device"' not in client.get("/devices", params={"online": "yes"}).text
    )
    assert 'data-count="devices">6<' in client.get("/").text


def test_runtimes_and_group_channels_are_shown(client: TestClient, store: Store) -> None:
    """The device list and page show each runtime and whether it can update itself (nothing
    more when it never said); the fleet and rollouts pages show the channel a group follows."""
    with store.write() as conn:
        conn.execute(
            reports.update()
            .where(reports.c.device == FAILED)
            .values(features='["config", "runtime_update"]')
        )
        conn.execute(
            reports.update()
            .where(reports.c.device == "berlin-pos-0003")
            .values(features='["config"]')
        )
        conn.execute(rollouts.update().values(channel="beta"))
    log_in(client)
    listed = client.get("/devices", params={"q": "berlin-pos"}).text
    cells = dict(
        re.findall(r'data-device="([^"]+)">.*?<td data-runtime>([^<]*)</td>', listed, re.S)
    )
    assert cells[FAILED] == "0.1.0 self-update"
    assert cells["berlin-pos-0003"] == "0.1.0 no self-update"
    assert cells["berlin-pos-0004"] == "0.1.0"  # never said: no claim either way
    page = client.get(f"/devices/{FAILED}").text
    assert "<dd data-runtime>0.1.0 self-update</dd>" in page
    rollout = client.get("/rollouts/1").text
    assert re.search(
        rf'data-device="{FAILED}".*?<td data-runtime>0.1.0 self-update</td>', rollout, re.S
    )
    fleet = client.get("/").text
    assert re.search(r'data-group="linux-prod">.*?<td data-channel>channel beta</td>', fleet, re.S)
    assert "channel beta" in client.get("/rollouts").text
