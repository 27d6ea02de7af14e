"""Shared by the browser tests (annotation page, report page)."""

import os

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def chromium_or_skip():
    """Browser tests need Debian's chromium (scripts/test.sh installs it). Outside CI a missing browser skips;
    in CI (CI=true) it fails, so a broken install cannot hide the browser tests."""
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing in CI: scripts/test.sh should have installed it")
        pytest.skip(f"{CHROMIUM} is not installed (scripts/test.sh installs it)")
