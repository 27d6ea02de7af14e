"""The report page opens from disk in a real headless browser with no errors and all images loaded."""

from browser_util import CHROMIUM, CHROMIUM_ARGS, chromium_or_skip

from vlm_dpo.run import RunFolder


def test_report_loads_in_headless_chromium(pipeline_run):
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    _, out, _ = pipeline_run
    page_path = RunFolder(out).report_index
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")
        headers = page.eval_on_selector_all("table th", "els => els.map(e => e.textContent)")
        browser.close()
    assert not errors
    assert images and all(width > 0 for _, width in images), images
    assert {"sft", "dpo", "rft"} <= set(headers)
