"""The system layer's own fixture: a page in Debian's headless Chromium, driven by Playwright
for Python (the page tests of `whybert ui` and of the rendered HTML)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = shutil.which("chromium")
# Nothing that reaches for the network (updates, sync, QUIC probes): the tests run offline.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in containers
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",  # containers' /dev/shm is often too small for the renderer
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_TIMEOUT_MS = 30_000  # a click or a page answer that needs only the page's own server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium, driven by Playwright, started once per test module (a
    launch costs a second or two of CPU). Module scope, not session: Playwright's sync API
    keeps an event loop of its own alive, which must not outlive the page tests into the
    asyncio tests of other modules.

    Debian's binary, never `playwright install`: the tests run where nothing can be downloaded.
    """
    if CHROMIUM is None:
        pytest.skip("chromium is not on PATH (scripts/test installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A 1300×900 page in a fresh browser context of its own (no cookies, storage or cache
    from another test)."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        yield page
    finally:
        context.close()
