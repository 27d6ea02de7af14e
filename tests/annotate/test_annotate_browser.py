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

from .conftest import QUESTION, make_data, vqa_pair

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
            expect(page.locator("#boxes rect")).to_have_count(boxes_per_image[image_id])
            assert boxes_per_image[image_id] > 0
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


def _serve(tmp_path, n, detections, extra=None, pairs=None):
    """Serve n images' caption items (+ the pair file of `pairs(data)`, when given) behind the token."""
    data = make_data(tmp_path, n)
    if detections is not None:
        data.detections.write_text("".join(json.dumps(r) + "\n" for r in detections(data)))
    if pairs is not None:
        (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs(data)))
        extra = (extra or {}) | {"pairs": str(tmp_path / "pairs.jsonl")}
    db = tmp_path / "annotate" / "judgements.sqlite"
    config = tmp_path / "annotate.yaml"
    config.write_text(json.dumps({"captions": str(data.captions), "detections": str(data.detections),
                                  "image_root": str(data.root), "db": str(db), "token": TOKEN} | (extra or {})))
    port = free_port()
    return data, db, Server(config, port, tmp_path / "server.log").start()


def _with_low_scores(data):
    """Each image's true boxes at 0.9 plus two low-score detections (0.2, 0.05) that the context left out."""
    out = []
    for r in data.detection_records:
        extra = [{"label": "phone", "score": 0.2, "box": [2, 2, 30, 30]},
                 {"label": "cup", "score": 0.05, "box": [4, 4, 34, 34]}]
        out.append(r | {"detections": r["detections"] + extra})
    return out


@pytest.mark.timeout(240)
def test_browser_annotator_tools(tmp_path):
    """What an annotator sees and uses: hidden screens stay hidden, a clear page without the token, boxes above
    the threshold with readable labels that do not overlap, the threshold control, zoom, guidelines, e only after
    a choice and on the chosen caption, tags and a reason, skip, flag, back/undo (a new revision), review."""
    from playwright import sync_api
    expect = sync_api.expect
    data, db, server = _serve(tmp_path, 4, _with_low_scores, {"annotators": ["alice", "bob"], "overlap": 1.0})
    port = server.port
    errors = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            # No token: a page that says what to do, not bare JSON.
            resp = page.goto(f"http://127.0.0.1:{port}/")
            assert resp.status == 401
            expect(page.locator("h1")).to_have_text("This page needs its access link")
            assert "token=" in page.inner_text("body") and "detail" not in page.inner_text("body")
            errors.clear()  # the 401 itself is logged by the browser

            # The login screen alone: the work area and "All done" are not shown.
            page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
            page.evaluate("localStorage.clear()")
            page.reload()
            expect(page.locator("#login")).to_be_visible(timeout=WAIT)
            for hidden in ("#work", "#done", "#review", "#guidelines"):
                expect(page.locator(hidden)).to_be_hidden()
            page.fill("#annotator-input", "alice")
            page.keyboard.press("Enter")
            expect(page.locator("#progress")).to_have_text("0 / 4", timeout=WAIT)
            expect(page.locator("#login")).to_be_hidden()
            expect(page.locator("#done")).to_be_hidden()
            page.wait_for_function("() => document.getElementById('image').naturalWidth > 0", timeout=WAIT)

            # Boxes: only those at or above the context's 0.5 threshold; the slider shows the others.
            image_id = page.get_attribute("#image", "alt").removeprefix("image ")
            true_boxes = next(len(r["detections"]) for r in data.detection_records if r["image_id"] == image_id)
            expect(page.locator("#boxes rect")).to_have_count(true_boxes)
            expect(page.locator("#box-count")).to_have_text(f"({true_boxes} of {true_boxes + 2})")
            page.locator("#threshold").fill("0.1")
            expect(page.locator("#boxes rect")).to_have_count(true_boxes + 1)
            page.locator("#threshold").fill("0.5")
            expect(page.locator("#boxes rect")).to_have_count(true_boxes)
            # Labels: readable (11 px text, not scaled with the image), inside the image, not overlapping.
            geo = page.evaluate("""() => {
                const s = document.getElementById('stage').getBoundingClientRect();
                return Array.from(document.querySelectorAll('.blabel')).map(l => {
                    const r = l.getBoundingClientRect();
                    return {x: r.left - s.left, y: r.top - s.top, w: r.width, h: r.height, sw: s.width, sh: s.height,
                            font: parseFloat(getComputedStyle(l).fontSize)}; }); }""")
            assert len(geo) == true_boxes
            for i, g in enumerate(geo):
                assert g["font"] == 11 and g["x"] >= 0 and g["y"] >= 0
                assert g["x"] + g["w"] <= g["sw"] + 0.5 and g["y"] + g["h"] <= g["sh"] + 0.5
                for o in geo[i + 1:]:
                    assert not (g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"]
                                and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"]), (g, o)

            # Zoom and guidelines.
            before = page.locator("#image").bounding_box()["width"]
            page.keyboard.press("z")
            page.wait_for_function(f"() => document.getElementById('image').clientWidth > {before + 50}",
                                   timeout=WAIT)
            page.keyboard.press("z")
            page.keyboard.press("?")
            expect(page.locator("#guidelines")).to_be_visible()
            expect(page.locator("#guidelines")).to_contain_text("only what is in the image")
            page.keyboard.press("Escape")
            expect(page.locator("#guidelines")).to_be_hidden()

            # e before a choice does nothing but say so; after choosing B it edits B.
            first = shown(page)
            page.keyboard.press("e")
            expect(page.locator("#status")).to_contain_text("choose first")
            expect(page.locator("#edit")).not_to_be_focused()
            page.keyboard.press("a")
            page.keyboard.press("e")
            assert page.locator("#edit").input_value() == first["a"]
            page.keyboard.press("Escape")
            page.keyboard.press("b")  # the untouched edit follows the choice
            assert page.locator("#edit").input_value() == first["b"]
            page.locator("#edit").fill("")
            page.keyboard.press("Escape")  # leave the text box: keys are shortcuts again
            page.keyboard.press("h")
            page.keyboard.press("o")
            expect(page.locator('#tags [data-tag="hallucination"]')).to_have_attribute("aria-pressed", "true")
            page.fill("#reason", "A names a phone")
            page.click("#save")
            expect(page.locator("#progress")).to_have_text("1 / 4", timeout=WAIT)
            second = wait_next_item(page, first["item_id"])

            # Skip: the next item comes, the skipped one returns at the end.
            page.keyboard.press("n")
            third = wait_next_item(page, second["item_id"])
            # Flag: stored as a note, the item is set aside.
            page.keyboard.press("f")
            fourth = wait_next_item(page, third["item_id"])
            notes = json.loads(api(port, "/api/notes"))
            assert {(n["item_id"], n["flag"]) for n in notes} >= {(third["item_id"], True)}
            assert any(n["item_id"] == first["item_id"] and n["tags"] == ["colour", "hallucination"]
                       and n["reason"] == "A names a phone" for n in notes)

            # Back / undo: u reopens the last judgement with its choice; changing it adds a revision.
            page.keyboard.press("u")
            expect(page.locator("#work")).to_have_attribute("data-item", first["item_id"], timeout=WAIT)
            expect(page.locator("#btn-b")).to_have_attribute("aria-pressed", "true")
            expect(page.locator("#revisit")).to_contain_text("revision 1")
            page.keyboard.press("3")
            page.keyboard.press("Enter")
            expect(page.locator("#status")).to_contain_text("revision 2", timeout=WAIT)
            expect(page.locator("#work")).to_have_attribute("data-item", fourth["item_id"], timeout=WAIT)

            # Review of one's own judgements.
            page.keyboard.press("r")
            expect(page.locator("#review")).to_be_visible()
            expect(page.locator("#work")).to_be_hidden()
            expect(page.locator("#review-list li")).to_have_count(1)
            expect(page.locator("#review-list li").first).to_contain_text("tie")
            expect(page.locator("#review-list li").first).to_contain_text("revision 2")
            page.keyboard.press("Escape")
            expect(page.locator("#work")).to_be_visible()

            # Finish: the fourth, then the skipped and flagged ones come back.
            page.keyboard.press("1")
            page.keyboard.press("Enter")
            expect(page.locator("#done")).to_be_visible(timeout=WAIT)
            expect(page.locator("#work")).to_be_hidden()
            expect(page.locator("#done-text")).to_contain_text("2 skipped")
            page.click("#done-skipped")
            for _ in range(2):
                expect(page.locator("#work")).to_be_visible(timeout=WAIT)
                old = page.get_attribute("#work", "data-item")
                page.keyboard.press("2")
                page.keyboard.press("Enter")
                page.wait_for_function("old => document.getElementById('work').dataset.item !== old"
                                       " || !document.getElementById('done').hidden", arg=old, timeout=WAIT)
            expect(page.locator("#done")).to_be_visible(timeout=WAIT)
            expect(page.locator("#done-text")).to_contain_text("Every item")
            assert not errors, errors
            browser.close()
    finally:
        server.kill(signal.SIGKILL)
    con = sqlite3.connect(db)
    revs = con.execute("SELECT choice, revision FROM judgements WHERE item_id = ? ORDER BY id",
                       (first["item_id"],)).fetchall()
    con.close()
    assert revs == [("b", 1), ("tie", 2)]


@pytest.mark.timeout(240)
def test_browser_items_per_minute(tmp_path, capsys):
    """A scripted annotator judging by keyboard only (read, choose, save): the app's own overhead per item,
    measured as items per minute (README quotes it)."""
    from playwright import sync_api
    expect = sync_api.expect
    n = 12
    _, _, server = _serve(tmp_path, n, None)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.port}/?token={TOKEN}&annotator=carol")
            expect(page.locator("#progress")).to_have_text(f"0 / {n}", timeout=WAIT)
            t0 = time.monotonic()
            for i in range(n):
                old = page.get_attribute("#work", "data-item")
                page.keyboard.press("12"[i % 2])
                page.keyboard.press("Enter")
                expect(page.locator("#progress")).to_have_text(f"{i + 1} / {n}", timeout=WAIT)
                page.wait_for_function("old => document.getElementById('work').dataset.item !== old"
                                       " || !document.getElementById('done').hidden", arg=old, timeout=WAIT)
            expect(page.locator("#done")).to_be_visible(timeout=WAIT)
            per_minute = n / ((time.monotonic() - t0) / 60)
            rate = page.inner_text("#rate")
            browser.close()
    finally:
        server.kill(signal.SIGKILL)
    with capsys.disabled():
        print(f"\nannotate: {per_minute:.0f} items per minute (scripted keyboard run, {n} items; page says {rate!r})")
    assert "items/min" in rate
    assert per_minute > 60  # the app is never the bottleneck: a person reading two captions takes longer


@pytest.mark.timeout(120)
def test_browser_question_pair(tmp_path):
    """Issue 17: a question pair shows its question on its own (no prompt block) and its answers as "Answer A/B";
    the caption item beside it looks as before; both are judged with the same keys, and the question's judgement
    exports with task "vqa"."""
    from playwright import sync_api
    expect = sync_api.expect
    _, db, server = _serve(tmp_path, 1, None, pairs=lambda data: [vqa_pair(data)])
    errors, seen = [], {}
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{server.port}/?token={TOKEN}&annotator=dave")
            expect(page.locator("#progress")).to_have_text("0 / 2", timeout=WAIT)  # set with the first item
            item = shown(page)
            for i in range(2):
                item = wait_next_item(page, item["item_id"]) if i else item
                task = page.get_attribute("#work", "data-task")
                seen[task] = item
                heading = page.locator("#cand-a h3")
                if task == "vqa":
                    expect(page.locator("#question")).to_have_text(QUESTION)
                    expect(page.locator("#prompt")).to_be_hidden()
                    expect(page.locator("#grounding")).to_contain_text("Detected:")
                    expect(heading).to_have_text("Answer A", ignore_case=True, use_inner_text=True)
                else:
                    expect(page.locator("#question-field")).to_be_hidden()
                    expect(page.locator("#prompt")).to_be_visible()
                    expect(heading).to_have_text("A", use_inner_text=True)
                page.keyboard.press("1")
                page.keyboard.press("Enter")
            expect(page.locator("#done")).to_be_visible(timeout=WAIT)
            assert not errors, errors
            browser.close()
        exported = [json.loads(x) for x in api(server.port, "/api/export").decode().splitlines()]
    finally:
        server.kill(signal.SIGKILL)
    assert set(seen) == {"vqa", "caption"} and {r["item_id"]: r["task"] for r in exported} == {
        it["item_id"]: task for task, it in seen.items()}
    assert [p["task"] for p in pairs_from_judgements(exported) if p["chosen"] == seen["vqa"]["a"]] == ["vqa"]
