"""Shared by the browser tests (annotation page, report page)."""

import os

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def _missing(what: str) -> None:
    """Outside CI a missing browser piece skips the test; in CI (CI set) it fails, so a broken install cannot
    hide the browser tests."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} missing in CI: scripts/test.sh should have installed it")
    pytest.skip(f"{what} is not installed (scripts/test.sh installs it)")


def chromium_or_skip():
    """Browser tests need Debian's chromium and playwright's Python driver (scripts/test.sh installs both)."""
    from importlib.util import find_spec
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        _missing(CHROMIUM)
    if find_spec("playwright") is None:
        _missing("the playwright package")
