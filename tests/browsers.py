"""What the browser tests share: Debian's chromium driven by Playwright, a tab that records its
JavaScript errors and leaves a screenshot, and a plain API call to set up what the page shows.

A missing ``chromium`` or ``playwright`` fails these tests rather than skipping them, so a broken
CI image cannot pass for a working page.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # reported by missing_requirements, as a failure
    sync_playwright = None

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Path | None:
    """The browser to drive: ``LIBRARY_TEST_CHROMIUM`` when set, else the first Chromium on PATH,
    else Debian's package's path."""
    configured = os.environ.get("LIBRARY_TEST_CHROMIUM")
    if configured:
        return Path(configured)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    debian = Path("/usr/bin/chromium")
    return debian if debian.exists() else None


CHROMIUM = find_chromium()


def missing_requirements() -> str | None:
    if sync_playwright is None:
        return "the playwright package is not installed: pip install -r requirements-dev.txt"
    if CHROMIUM is None or not CHROMIUM.exists():
        return (
            "no Chromium found (looked at LIBRARY_TEST_CHROMIUM, then chromium on PATH, then /usr/bin/chromium): "
            "install it (Debian: apt-get install chromium; .ci/run does this) or point LIBRARY_TEST_CHROMIUM at one"
        )
    return None


@contextlib.contextmanager
def launched() -> Iterator[Browser]:
    """Chromium, for a module's tests."""
    problem = missing_requirements()
    if problem:
        pytest.fail(problem, pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def new_tab(browser: Browser, screenshot: Path, **context: Any) -> Iterator[Page]:
    """A tab in a fresh context (its own storage) at desktop size unless ``context`` says
    otherwise. Its screenshot is saved afterwards, passed or failed, and a JavaScript error on the
    page fails the test."""
    options = {"viewport": {"width": 1280, "height": 900}, **context}
    browser_context = browser.new_context(**options)
    tab = browser_context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        tab.screenshot(path=str(screenshot), full_page=True)
        print(f"screenshot of the page: {screenshot}")
        browser_context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def call(port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    """One API call on its own connection; returns the JSON body of a 2xx answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = json.dumps(body) if body is not None else None
        conn.request(method, path, payload, {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        assert 200 <= response.status < 300, (method, path, response.status, data)
        return json.loads(data)
    finally:
        conn.close()


# -- the page's jobs: people who sign in, screenshots, accessibility --------------------------------

PASSWORD = "correct horse battery staple"
"""The password of everyone :func:`person` creates."""


def person(
    data_dir: Path, role: str = "member", first_name: str = "Ada", last_name: str = "Lovelace"
) -> dict[str, Any]:
    """A member with ``role`` who signs in with :data:`PASSWORD`, put into the data directory as
    another process would; returns them with their email."""
    import time
    import uuid

    from library import auth, members
    from library.records import COLLECTIONS
    from storage import JsonStore

    store = JsonStore(data_dir, COLLECTIONS)
    email = f"{role}-{uuid.uuid4().hex[:8]}@example.org"
    password_hash = auth.hash_password(PASSWORD)
    moment = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def add(txn: Any) -> dict[str, Any]:
        data = {"email": email, "first_name": first_name, "last_name": last_name}
        return members.create(txn, data, moment, password_hash, role)

    try:
        return store.update(add)
    finally:
        store.close()


def token_headers(port: int, member: dict[str, Any]) -> dict[str, str]:
    """Headers signing ``member`` (made by :func:`person`) in, through POST /auth/login."""
    body = call(port, "POST", "/auth/login", {"email": member["email"], "password": PASSWORD})
    return {"Authorization": f"Bearer {body['access_token']}"}


def screenshot_dir(fallback: Path) -> Path:
    """Where screenshots go: ``LIBRARY_SCREENSHOTS`` when set (to look at them), else ``fallback``."""
    chosen = os.environ.get("LIBRARY_SCREENSHOTS")
    folder = Path(chosen) if chosen else fallback
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def serious_violations(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now (axe is bundled with
    axe-playwright-python: nothing is fetched)."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page).response
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results["violations"]
        if v.get("impact") in ("serious", "critical")
    ]
