"""Screenshots for README: the report of a run and the annotation app over that run's held-out captions.

    python docs/make_screenshots.py RUN_FOLDER     (a finished run; writes docs/report*.png, docs/annotate.png)

Headless Debian chromium through playwright, as the browser tests use it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
DOCS = Path(__file__).resolve().parent


def small_png(src: Path, dst: Path, box=None, width: int = 1000) -> None:
    im = Image.open(src).convert("RGB")
    if box:
        im = im.crop(box)
    if im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


def main(run_dir: str) -> None:
    from playwright.sync_api import sync_playwright

    from vlm_dpo.config import load_config
    from vlm_dpo.images import data_root
    from vlm_dpo.records import read_jsonl
    from vlm_dpo.run import RunFolder

    run = RunFolder(run_dir)
    tmp = Path(tempfile.mkdtemp())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(run.report_index.as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=tmp / "report.png", full_page=True)
        top = page.locator("#metrics").bounding_box()
        gallery = page.locator("#gallery").bounding_box()
        small_png(tmp / "report.png", DOCS / "report.png", (0, 0, 1200, int(top["y"] + 60)))
        small_png(tmp / "report.png", DOCS / "report_gallery.png",
                  (0, int(gallery["y"]), 1200, int(gallery["y"] + 1000)))

        # The app over the run's held-out captions: sft's greedy caption against dpo's.
        cfg = load_config(run.config)
        dets = {r["image_id"]: r for r in read_jsonl(run.detections(cfg.eval.split))}
        dpo = {r["image_id"]: r["greedy"] for r in read_jsonl(run.eval_captions("dpo"))}
        caps = [{"image_id": r["image_id"], "file": dets[r["image_id"]]["file"], "prompt": r["prompt"],
                 "grounding": r["prompt"].split(". ", 1)[-1], "greedy": r["greedy"], "samples": [dpo[r["image_id"]]]}
                for r in read_jsonl(run.eval_captions("sft")) if r["greedy"] != dpo[r["image_id"]]][:20]
        (tmp / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in caps))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        conf = {"captions": str(tmp / "captions.jsonl"), "detections": str(run.detections(cfg.eval.split)),
                "image_root": str(data_root(cfg)), "db": str(tmp / "j.sqlite"), "token": "demo"}
        (tmp / "a.yaml").write_text(json.dumps(conf))
        server = subprocess.Popen([sys.executable, "-m", "vlm_dpo.annotate", str(tmp / "a.yaml"), f"port={port}"])
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/favicon.ico", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            page = browser.new_page(viewport={"width": 1300, "height": 760})
            page.goto(f"http://127.0.0.1:{port}/?token=demo&annotator=alice&min_score={cfg.ground.min_score}")
            page.wait_for_function("() => document.getElementById('image').naturalWidth > 0")
            page.keyboard.press("1")  # A: "a purple ball." for the purple ball; B says red
            page.keyboard.press("o")  # what was wrong with the loser: its colour
            page.wait_for_timeout(300)
            page.screenshot(path=tmp / "annotate.png")
            small_png(tmp / "annotate.png", DOCS / "annotate.png", width=1100)
        finally:
            server.terminate()
            server.wait(timeout=30)
        browser.close()
    for f in ("report.png", "report_gallery.png", "annotate.png"):
        print(f, (DOCS / f).stat().st_size // 1024, "KB")


if __name__ == "__main__":
    main(sys.argv[1])
