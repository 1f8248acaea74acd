"""The dashboard in a real headless Chromium against a real `engine serve` and real devices:
log in, watch a rollout progress, pause and resume it, see a broken release halt, open a failed
device's timeline. Screenshots go to test-output/screenshots/."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.e2e.conftest import StoreView, fleet_group, specs
from tests.harness import DeviceTimings, Fleet
from tests.harness.browser import SCREENSHOTS, chromium, chromium_missing

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Dialog, Page

pytestmark = pytest.mark.slow

#: Generous: a loaded machine runs a dozen agents and Chromium on two cores.
WAIT_MS = 180_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium through playwright (skipped locally without it, fails in CI)."""
    why = chromium_missing()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI must run the browser tests)")
        pytest.skip(why)
    with chromium() as b:
        yield b


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Six real devices on 3.0.0 against a real engine serve; a group with two waves."""
    group = fleet_group("3.0.0", waves=[34, 100], max_parallel=1, soak="10s")
    made = Fleet(
        tmp_path / "fleet",
        specs(6),
        group,
        layout=lambda i: "versioned" if i % 2 else "in_place",
        timings=DeviceTimings(),
    )
    try:
        made.setup("3.0.0")
        made.start()
        made.wait_reported("3.0.0")
        yield made
    finally:
        made.stop()


def _shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _wave_count(page: Page, wave: int, what: str) -> int:
    value = page.get_attribute(f'article.rollout tr[data-wave="{wave}"]', f"data-{what}")
    return int(value or 0)


def test_operator_watches_pauses_resumes_and_reads_a_failure(
    browser: Browser, fleet: Fleet
) -> None:
    """Login, live wave progress, pause and resume by button, a halted broken release with its
    reason, and the failed device's timeline with the failing step's detail; no script ever
    runs from data (no dialog opens)."""
    server = fleet.server
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    page = context.new_page()

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.set_default_timeout(WAIT_MS)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))

    # -- login ------------------------------------------------------------------------------
    page.goto(server.url + "/rollouts")
    assert "/login" in page.url
    page.fill('input[name="token"]', "not the token")
    page.click('button[type="submit"]')
    page.wait_for_selector("p.error")
    _shot(page, "login")
    page.fill('input[name="token"]', server.admin_token)
    page.click('button[type="submit"]')
    page.wait_for_url(re.compile(r"/rollouts$"))
    cookie = next(c for c in context.cookies() if c["name"] == "engine_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # invisible to scripts

    # -- a good release: watch wave 0 commit on the page itself (it refreshes) ----------------
    fleet.repo.set_release("3.0.1")
    fleet.repo.engine("apply", "--yes")
    page.wait_for_selector('article.rollout[data-state="active"]')
    page.wait_for_function(
        """() => Number(document.querySelector('article.rollout tr[data-wave="0"]')
                ?.dataset.committed || 0) >= 1"""
    )
    _shot(page, "rollout-progress")
    assert _wave_count(page, 0, "committed") >= 1

    # -- pause and resume with the buttons -----------------------------------------------------
    page.click('article.rollout button[data-action="pause"]')
    page.wait_for_selector('article.rollout[data-state="paused"]')
    view = StoreView(fleet)
    assert view.rollout("fleet@3.0.1").state == "paused"
    assert "paused by the dashboard" in (page.text_content("p.reason") or "")
    _shot(page, "rollout-paused")
    page.click('article.rollout button[data-action="resume"]')
    page.wait_for_selector('article.rollout[data-state="completed"]')
    assert view.rollout("fleet@3.0.1").state == "completed"
    assert _wave_count(page, 0, "committed") + _wave_count(page, 1, "committed") == 6

    # -- a broken release halts; the rollout page says why ----------------------------------
    fleet.repo.set_release("3.0.2")
    fleet.repo.engine("apply", "--yes")
    page.goto(server.url + "/rollouts")
    page.wait_for_selector('article.rollout[data-state="halted"]')
    reason = page.text_content('article.rollout[data-state="halted"] p.reason') or ""
    assert "above max_failure_rate" in reason
    _shot(page, "rollout-halted")
    halted = view.rollout("fleet@3.0.2")
    page.goto(f"{server.url}/rollouts/{halted.id}?state=failed")
    failed_links = page.locator("table.list td a[href^='/devices/']")
    failed_links.first.wait_for()
    device = (failed_links.first.text_content() or "").strip()
    _shot(page, "rollout-failed-devices")

    # -- the failed device's timeline --------------------------------------------------------
    failed_links.first.click()
    page.wait_for_url(re.compile(f"/devices/{re.escape(device)}$"))
    failed_step = page.locator('article.update[data-target="3.0.2"] li[data-status="failed"]')
    failed_step.first.wait_for()
    # 3.0.2 exits at start: the health check sees the exit, or first the old heartbeat,
    # whichever the runtime looks at first.
    detail = failed_step.first.text_content() or ""
    assert "confirm_heartbeat failed" in detail, detail
    assert (
        "heartbeat says 3.0.1, expected 3.0.2" in detail or "process exited with code 3" in detail
    ), detail
    rows = page.locator("[data-rollout-row]")
    assert rows.count() >= 2
    assert "retry at" not in (page.text_content("section") or "")
    _shot(page, "device-timeline")

    # -- fleet and device list ----------------------------------------------------------------
    page.goto(server.url + "/")
    page.wait_for_selector('[data-count="devices"]')
    assert page.text_content('[data-count="devices"]') == "6"
    _shot(page, "fleet")
    page.goto(server.url + "/devices?platform=linux")
    assert page.get_attribute("[data-total]", "data-total") == "2"
    # Each device's runtime, and that it cannot update itself (no supervisor here).
    runtimes = page.locator("table.list td[data-runtime]").all_text_contents()
    assert len(runtimes) == 2
    assert all(re.fullmatch(r"\S+ no self-update", t.strip()) for t in runtimes), runtimes
    _shot(page, "devices")
    page.locator("table.list td a").first.click()
    page.wait_for_selector("[data-device-title]")
    assert (page.text_content("dd[data-runtime]") or "").strip() == runtimes[0].strip()

    # -- hostile text from a device is shown, never run -------------------------------------
    hostile = "hostile-<img src=x onerror=alert(1)><script>alert(2)</script>"
    imported = fleet.repo.root / "hostile.json"
    report = {"device": hostile, "agent_version": "3.0.0", "platform": "linux",
              "last_seen": "2026-01-01T00:00:00Z"}  # fmt: skip
    imported.write_text(json.dumps([report]))
    fleet.repo.engine("reports", "import", str(imported))
    page.goto(server.url + "/devices?q=hostile")
    page.locator("table.list td a").first.click()
    page.wait_for_selector("[data-device-title]")
    assert hostile in (page.text_content("[data-device-title]") or "")
    assert page.locator("main img").count() == 0
    assert dialogs == []
    assert all(u.startswith(server.url) for u in requests), [
        u for u in requests if not u.startswith(server.url)
    ]
    context.close()


def test_api_docs_render_offline(browser: Browser, tmp_path: Path) -> None:
    """Swagger UI and ReDoc render the OpenAPI document with every request to the server."""
    from tests.harness import OperatorRepo, ServerProcess

    repo = OperatorRepo(tmp_path / "fleet")
    repo.create(specs(1), fleet_group("3.0.0"))
    server = ServerProcess(repo, tmp_path / "server.log")
    server.start()
    try:
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        outside: list[str] = []

        def refuse_outside(route: Any) -> None:
            if route.request.url.startswith(server.url):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", refuse_outside)
        blocked: list[str] = []
        page.on(
            "console", lambda m: blocked.append(m.text) if "Content Security" in m.text else None
        )
        page.goto(server.url + "/docs")
        page.wait_for_selector('[data-path="/v1/admin/devices/{device}"]')
        _shot(page, "swagger")
        page.goto(server.url + "/redoc")
        page.wait_for_function(
            "() => document.body.innerText.includes('One device: report, heartbeat')"
        )
        assert outside == []
        assert all("logo-mini" in b for b in blocked), blocked  # only the vendor's logo
        context.close()
    finally:
        server.stop()
