"""Headless Chromium for the browser tests: Debian's chromium through Playwright's
``executable_path`` (Playwright's own browsers are never downloaded)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 60_000  # a first page load is slow on a busy machine


def require_chromium(what: str) -> None:
    """Skip, saying how to install it, where Debian's chromium is absent."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (as root: "
                    f"bash scripts/system_deps.sh test) to check {what}")


@contextlib.contextmanager
def chromium_page(width: int, height: int = 1000) -> Iterator[object]:
    """One page of a headless Chromium, closed afterwards; waits up to TIMEOUT_MS."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"])
        page = browser.new_context(viewport={"width": width, "height": height}).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()
