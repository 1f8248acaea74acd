"""A real headless Chromium for the dashboard tests: Debian's ``chromium``, driven by playwright.

Playwright cannot download its own browser builds here, so it launches the
system's ``/usr/bin/chromium`` (scripts/setup installs it when missing and root).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tests.harness.procs import REPO_ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser

__all__ = ["CHROMIUM", "SCREENSHOTS", "chromium", "chromium_missing"]

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
#: Where browser tests keep their screenshots (ignored by git).
SCREENSHOTS = REPO_ROOT / "test-output" / "screenshots"


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install '.[dev]')"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)) and not shutil.which("chromium"):
        return f"no chromium at {CHROMIUM} (scripts/setup installs Debian's chromium as root)"
    return None


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium, closed on exit."""
    from playwright.sync_api import sync_playwright

    executable = CHROMIUM if CHROMIUM.is_file() else Path(shutil.which("chromium") or CHROMIUM)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(executable),
            headless=True,
            # root in a container: no user namespaces for the sandbox; /dev/shm may be small
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield browser
        finally:
            browser.close()
