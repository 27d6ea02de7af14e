"""The annotation page in a real headless browser (Debian's chromium driven by playwright) against the real
server in a subprocess: mouse and keyboard judgements, an edit, a reload, a SIGKILL and a restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vlm_dpo.pairs.io import pairs_from_judgements
from vlm_dpo.records import read_jsonl

from browser_util import CHROMIUM, CHROMIUM_ARGS, chromium_or_skip

from .conftest import make_data

TOKEN = "t0ken-for-tests"
N = 5
WAIT = 20_000  # ms, for expectations (two shared CPU cores)

@pytest.fixture(autouse=True)
def _needs_chromium():
    chromium_or_skip()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(port: int, path: str) -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"X-Annotate-Token": TOKEN})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


class Server:
    """`python -m vlm_dpo.annotate CONFIG port=P` in its own process group."""

    def __init__(self, config: Path, port: int, log: Path):
        self.config, self.port, self.log = config, port, log
        self.proc = None

    def start(self) -> "Server":
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vlm_dpo.annotate", str(self.config), f"port={self.port}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"annotation server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                api(self.port, "/api/stats")
                return self
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"annotation server did not answer within 60 s:\n{self.log.read_text()}")

    def kill(self, sig=signal.SIGKILL) -> int:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        return self.proc.wait(timeout=30)


def shown(page) -> dict:
    return {"item_id": page.get_attribute("#work", "data-item"), "a": page.inner_text("#text-a"),
            "b": page.inner_text("#text-b")}


def wait_next_item(page, old_id: str) -> dict:
    page.wait_for_function("old => document.getElementById('work').dataset.item !== old", arg=old_id,
                           timeout=WAIT)
    return shown(page)


@pytest.mark.timeout(180)
def test_browser_judgements_survive_reload_and_kill(tmp_path):
    from playwright import sync_api
    expect = sync_api.expect
    data = make_data(tmp_path, N)
    db = tmp_path / "annotate" / "judgements.sqlite"
    config = tmp_path / "annotate.yaml"
    config.write_text(json.dumps({"captions": str(data.captions), "detections": str(data.detections),
                                  "image_root": str(data.root), "db": str(db), "token": TOKEN}))  # JSON is YAML
    port = free_port()
    server = Server(config, port, tmp_path / "server.log").start()
    boxes_per_image = {r["image_id"]: len(r["detections"]) for r in data.detection_records}
    judged: list[tuple[dict, str, str | None]] = []
    errors, page_errors = [], []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.on("console", lambda m: errors.append((m.text, m.location)) if m.type == "error" else None)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            base = f"http://127.0.0.1:{port}/?token={TOKEN}"
            page.goto(base)

            # Sign in with the keyboard.
            expect(page.locator("#login")).to_be_visible(timeout=WAIT)
            page.click("#annotator-input")
            page.keyboard.type("alice")
            page.keyboard.press("Enter")
            expect(page.locator("#progress")).to_have_text(f"0 / {N}", timeout=WAIT)
            assert "annotator=alice" in page.url

            # The image loads (through the token) and its detection boxes are drawn, and toggle.
            page.wait_for_function("() => { const i = document.getElementById('image');"
                                   " return i.complete && i.naturalWidth > 0; }", timeout=WAIT)
            item = shown(page)
            image_id = page.get_attribute("#image", "alt").removeprefix("image ")
            assert page.locator("#boxes rect").count() == boxes_per_image[image_id] > 0
            page.click("#show-boxes")
            expect(page.locator("#boxes")).to_be_hidden()
            page.keyboard.press("d")
            expect(page.locator("#boxes")).to_be_visible()

            # 1: the mouse. Save without a choice first: refused, nothing stored.
            page.click("#save")
            expect(page.locator("#status")).to_contain_text("choose", timeout=WAIT)
            page.click("#btn-a")
            expect(page.locator("#btn-a")).to_have_attribute("aria-pressed", "true")
            page.click("#save")
            expect(page.locator("#progress")).to_have_text(f"1 / {N}", timeout=WAIT)
            expect(page.locator("#status")).to_have_text("saved \u2713")
            judged.append((item, "a", None))
            item = wait_next_item(page, item["item_id"])

            # 2: keys 2 + Enter.
            page.keyboard.press("2")
            expect(page.locator("#btn-b")).to_have_attribute("aria-pressed", "true")
            page.keyboard.press("Enter")
            expect(page.locator("#progress")).to_have_text(f"2 / {N}", timeout=WAIT)
            judged.append((item, "b", None))
            item = wait_next_item(page, item["item_id"])

            # 3: t (tie), e (edit, prefilled with A), replace the text, Enter saves.
            page.keyboard.press("t")
            page.keyboard.press("e")
            edit = page.locator("#edit")
            expect(edit).to_be_focused()
            assert edit.input_value() == item["a"]  # the "e" itself was not typed
            page.keyboard.press("Control+A")
            page.keyboard.type("Two objects on a wooden table.")
            assert edit.input_value() == "Two objects on a wooden table."
            page.keyboard.press("Enter")
            expect(page.locator("#progress")).to_have_text(f"3 / {N}", timeout=WAIT)
            judged.append((item, "tie", "Two objects on a wooden table."))
            item = wait_next_item(page, item["item_id"])
            assert not errors and not page_errors, (errors, page_errors)  # e.g. no CSP violation

            # Reload: the same annotator resumes at the next unjudged item.
            page.reload()
            expect(page.locator("#progress")).to_have_text(f"3 / {N}", timeout=WAIT)
            expect(page.locator("#work")).to_have_attribute("data-item", item["item_id"], timeout=WAIT)
            assert item["item_id"] not in {j[0]["item_id"] for j in judged}
            assert shown(page) == item  # same A/B order after the reload

            # 4: x (both bad) + Enter, then the server is killed -9 right after "saved".
            page.keyboard.press("x")
            page.keyboard.press("Enter")
            expect(page.locator("#progress")).to_have_text(f"4 / {N}", timeout=WAIT)
            expect(page.locator("#status")).to_have_text("saved \u2713")
            judged.append((item, "both_bad", None))
            item = wait_next_item(page, item["item_id"])
            assert server.kill(signal.SIGKILL) == -signal.SIGKILL
            con = sqlite3.connect(db)
            assert con.execute("SELECT COUNT(*) FROM judgements").fetchone()[0] == 4
            con.close()

            # 5: while the server is down the page must not claim success.
            page.keyboard.press("1")
            page.keyboard.press("Enter")
            expect(page.locator("#status")).to_contain_text("NOT saved", timeout=WAIT)
            expect(page.locator("#progress")).to_have_text(f"4 / {N}")

            server = Server(config, port, tmp_path / "server.log").start()
            page.reload()
            expect(page.locator("#progress")).to_have_text(f"4 / {N}", timeout=WAIT)
            expect(page.locator("#work")).to_have_attribute("data-item", item["item_id"], timeout=WAIT)
            page.click("#btn-a")
            page.keyboard.press("Enter")
            expect(page.locator("#progress")).to_have_text(f"{N} / {N}", timeout=WAIT)
            expect(page.locator("#done")).to_be_visible(timeout=WAIT)
            judged.append((item, "a", None))
            assert not page_errors, page_errors
            browser.close()

        exported_live = [json.loads(x) for x in api(port, "/api/export").decode().splitlines()]
        assert server.kill(signal.SIGTERM) == 0  # a clean stop writes the export next to the database
    finally:
        server.kill(signal.SIGKILL)

    # What is stored is exactly what was shown and clicked, in order, with the A/B order recorded.
    con = sqlite3.connect(db)
    rows = con.execute("SELECT item_id, annotator, a, b, choice, edit, swapped FROM judgements ORDER BY id").fetchall()
    con.close()
    assert [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        (it["item_id"], "alice", it["a"], it["b"], choice, edit) for it, choice, edit in judged]
    exported = list(read_jsonl(db.with_suffix(".jsonl")))
    assert exported == exported_live and len(exported) == N
    pairs = pairs_from_judgements(exported)
    assert len(pairs) == 1 + 1 + 2 + 0 + 1
    it3 = judged[2][0]
    assert {(p["chosen"], p["rejected"]) for p in pairs if p["kind"] == "human_edit"} == {
        ("Two objects on a wooden table.", it3["a"]), ("Two objects on a wooden table.", it3["b"])}
    assert (judged[1][0]["b"], judged[1][0]["a"]) in {(p["chosen"], p["rejected"]) for p in pairs}
