"""The report page as a reader sees it, in a real headless browser: opens from disk with no errors and all images
loaded; a headline before -> after with paired intervals; a chart; the best value per row marked; caveats where a
metric cannot separate the models; a gallery chosen where the models differ with errors marked by kind, count,
colour and side; labelled boxes; pair statistics as tables and plots; correct with one model only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from browser_util import CHROMIUM, CHROMIUM_ARGS, chromium_or_skip

from vlm_dpo import report
from vlm_dpo.judge import Vocabulary
from vlm_dpo.records import read_jsonl
from vlm_dpo.run import RunFolder


def open_page(path, fn):
    """Open `path` in headless chromium, call fn(page), return (fn's result, console errors)."""
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        try:
            return fn(page), errors
        finally:
            browser.close()


def images_loaded(page) -> list:
    return page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")


def test_report_loads_in_headless_chromium(pipeline_run):
    chromium_or_skip()
    _, out, _ = pipeline_run
    metrics = json.loads(RunFolder(out).metrics.read_text())["models"]

    def look(page):
        headline = page.locator("#headline")
        return {"images": images_loaded(page),
                "headers": page.eval_on_selector_all("#metrics th", "els => els.map(e => e.textContent)"),
                "headline_visible": headline.is_visible(), "headline": headline.inner_text(),
                "cards": page.locator("#headline .hl").count(),
                "chart": page.locator("#chart").is_visible(),
                "caveats": page.locator(".caveat").all_inner_texts(),
                "pair_tables": page.locator("#pair-kinds").is_visible() and page.locator("#pair-stats").is_visible(),
                "pair_examples": page.locator(".pair-example").count(),
                "legend": page.locator(".legend").first.inner_text(),
                "pre": page.locator("details pre").inner_text(),
                "protocol": page.locator("#protocol").inner_text()}

    seen, errors = open_page(RunFolder(out).report_index, look)
    assert not errors
    assert seen["images"] and all(width > 0 for _, width in seen["images"]), seen["images"]
    srcs = {s for s, _ in seen["images"]}
    assert {"metrics.png", "curves.png", "pairs.png"} <= srcs
    assert {"sft", "dpo", "rft"} <= set(seen["headers"])
    assert seen["headline_visible"] and "sft (before) → dpo (after)" in seen["headline"]
    assert seen["cards"] == 5 and "CHAIR_i" in seen["headline"] and "change" in seen["headline"]
    assert seen["chart"]
    assert seen["pair_tables"] and seen["pair_examples"] >= 1
    assert '"by_kind"' not in seen["pre"]  # the pair statistics are tables now, not a JSON dump
    assert "ground-truth box" in seen["legend"] and "detector box" in seen["legend"]
    assert seen["protocol"].startswith("Evaluated on the world's test split.")
    if all(m["pope"]["adversarial"]["yes_ratio"] == 1.0 for m in metrics.values()):
        assert any("to every probe" in c for c in seen["caveats"]), seen["caveats"]


def test_headline_numbers_are_the_eval_stage_numbers(pipeline_run):
    """The per-image rows the eval stage writes give back every model's metrics exactly; the paired difference's
    point estimate is the difference of the metrics."""
    _, out, _ = pipeline_run
    run = RunFolder(out)
    models = json.loads(run.metrics.read_text())["models"]
    rows = {}
    for name, m in models.items():
        r = list(read_jsonl(run.eval_per_image(name)))
        rows[name] = report.per_image(run, name, [{"image_id": x["image_id"]} for x in r], [], {}, Vocabulary.world())
        for k in report.RATIOS:
            got = report.ratio_of_sums(rows[name], k)
            assert got == pytest.approx(m[k]) or (got is None and not m[k]), (name, k, got, m[k])
    point, ci = report.paired_diff(rows["sft"], rows["dpo"], "pope_f1", 200, 0)
    assert point == pytest.approx(models["dpo"]["pope_f1"] - models["sft"]["pope_f1"])
    assert ci is not None and ci[0] <= point <= ci[1]


def _crafted(tmp_path, names=("sft", "dpo"), ground=None, extra_detections=None):
    """A report over four real world scenes with chosen captions: sft wrong in colour / count / kind / side on
    some, dpo right on those and wrong on one where sft was right."""
    from vlm_dpo.world.captions import reference_caption
    from vlm_dpo.world.scenes import render_scene, sample_scene

    items, scenes = [], []
    for i in (2, 4, 6, 7):
        sc = sample_scene(0, "test", i)
        path = tmp_path / f"{sc.image_id}.png"
        render_scene(sc).save(path)
        items.append({"image_id": sc.image_id, "path": str(path), "grounding": "Detected: something."})
        scenes.append({"image_id": sc.image_id, "objects": [o.to_dict() for o in sc.objects], "width": sc.width})
    truth = [reference_caption(s["objects"], s["width"]) for s in scenes]
    ids = [it["image_id"] for it in items]
    sft = ["a red bowl, a blue block and a red apple.",  # the bowl is purple
           "a red cup, a yellow book and a phone.",  # no phone
           "three bottles, two purple blocks and two books.",  # two bottles
           truth[3]]
    dpo = truth[:3] + ["a purple cup and a ball."]  # the ball is not there
    captions = {"sft": dict(zip(ids, sft)), "dpo": dict(zip(ids, dpo))}
    pope = {"adversarial": {"yes_ratio": 1.0, "f1": 0.667}}
    metrics = {"models": {n: {"chair_i": 0.2 if n == "sft" else 0.1, "recall": 0.6, "chair_s": 0.5, "pope_f1": 0.667,
                              "mean_words": 6.0, "pope": pope, "ci": {"pope_f1": [0.667, 0.667]}} for n in names}}
    dets = {ids[0]: [{"label": "bowl", "score": 0.9, "box": scenes[0]["objects"][2]["box"]},
                     {"label": "cup", "score": 0.05, "box": [1, 1, 5, 5]}]}
    for i, image_dets in (extra_detections or {}).items():
        dets[ids[i]] = image_dets
    out = tmp_path / "run"
    path = report.write_report(out, metrics, scenes=scenes, captions={n: captions[n] for n in names}, items=items,
                               pair_stats=None, curves=None, detections=dets, n_boot=100, ground=ground)
    return path, ids


def test_gallery_draws_the_boxes_the_context_states(tmp_path, monkeypatch):
    """No browser: the boxes drawn on each gallery image are those its prompt's context stated, the fallback guess
    included, and the legend says which."""
    from vlm_dpo.ground import GroundingConfig

    drawn, draw = {}, report.draw_boxes

    def spy(image_path, objects, out_png, detections=None):
        drawn[out_png.stem] = [(d["label"], d["score"]) for d in detections or []]
        return draw(image_path, objects, out_png, detections=detections)

    monkeypatch.setattr(report, "draw_boxes", spy)
    guesses = {1: [{"label": "cup", "score": 0.35, "box": [1, 1, 9, 9]}, {"label": "ball", "score": 0.4,
                                                                              "box": [20, 20, 30, 30]}]}
    path, ids = _crafted(tmp_path, ground=GroundingConfig(min_score=0.5, fallback_score=0.3),
                         extra_detections=guesses)
    assert drawn[ids[0]] == [("bowl", 0.9)]  # the confident box only: the 0.05 cup stays out
    assert drawn[ids[1]] == [("ball", 0.4)]  # nothing confident: the one best guess, as the context stated it
    assert "≥ 0.5, or the best one ≥ 0.3 when none is" in path.read_text()
    (tmp_path / "plain").mkdir()
    path, ids = _crafted(tmp_path / "plain", extra_detections=guesses)
    assert drawn[ids[1]] == [] and "or the best one" not in path.read_text()


def test_gallery_marks_errors_by_kind_and_picks_where_models_differ(tmp_path):
    chromium_or_skip()
    path, ids = _crafted(tmp_path)

    def look(page):
        fixed = page.locator("h3", has_text="Where dpo fixed errors")
        card = page.locator(f'.card[data-image="{ids[0]}"] [data-model="sft"]')
        return {"images": images_loaded(page),
                "fixed_visible": fixed.is_visible(),
                "sections": page.locator("#gallery ~ h3").all_inner_texts(),
                "order": page.eval_on_selector_all(".card", "els => els.map(e => e.dataset.image)"),
                "sft0": card.inner_text(),
                "colour_mark": page.locator(f'.card[data-image="{ids[0]}"] [data-model="sft"] mark.colour').first
                .inner_text(),
                "sft1": page.locator(f'.card[data-image="{ids[1]}"] [data-model="sft"]').inner_text(),
                "sft2": page.locator(f'.card[data-image="{ids[2]}"] [data-model="sft"]').inner_text(),
                "dpo3": page.locator(f'.card[data-image="{ids[3]}"] [data-model="dpo"]').inner_text(),
                "dpo0_errors": page.locator(f'.card[data-image="{ids[0]}"] [data-model="dpo"] sup.err').count(),
                "caveats": page.locator(".caveat").all_inner_texts(),
                "best": page.locator("#metrics td.best").all_inner_texts()}

    seen, errors = open_page(path, look)
    assert not errors
    assert all(w > 0 for _, w in seen["images"]) and len(seen["images"]) == 5  # chart + 4 gallery images
    assert seen["fixed_visible"]
    assert any("got worse" in s for s in seen["sections"])
    assert seen["order"][-1] == ids[3]  # the image where dpo got worse comes in its own section, after the fixes
    assert seen["colour_mark"] == "red" and "colour: red≠purple" in seen["sft0"]  # "a red bowl" for a purple bowl
    assert "not in image" in seen["sft1"]  # the phone
    assert "count: 3≠2" in seen["sft2"]
    assert "not in image" in seen["dpo3"]  # where DPO got worse: the ball
    assert seen["dpo0_errors"] == 0
    assert any("answer “yes” to every probe" in c for c in seen["caveats"])
    assert any("zero width" in c or "every model" in c for c in seen["caveats"])
    assert seen["best"] == ["0.100"]  # CHAIR_i of dpo; equal rows mark no winner
    # the detector's 0.05 box is not drawn: only boxes at or above the context threshold
    assert (tmp_path / "run" / "report" / "gallery" / f"{ids[0]}.png").exists()


def test_side_errors_are_marked():
    vocab = Vocabulary.world()
    objects = [{"label": "cup", "color": "red", "box": [70, 10, 90, 30]},
               {"label": "ball", "color": "blue", "box": [5, 5, 20, 20]}]
    marked = report.highlight("a red cup on the left and a blue ball on the right.", objects, vocab)
    assert 'class="side"' in marked and "✗ side" in marked
    assert "✗" not in report.highlight("a blue ball on the left and a red cup on the right.", objects, vocab)


def test_report_with_only_the_sft_model(pipeline_run, tmp_path):
    """`vlm-dpo eval` with only sft: the report says there is nothing to compare and still shows its numbers."""
    chromium_or_skip()
    cfg, out, _ = pipeline_run
    from vlm_dpo.eval import stage as eval_stage

    src, dst = RunFolder(out), RunFolder(tmp_path / "only_sft")
    (dst.eval).mkdir(parents=True)
    for f in src.eval.glob("sft.*"):
        shutil.copy(f, dst.eval / f.name)
    shutil.copytree(src.detections_dir, dst.detections_dir)
    items, scenes = eval_stage.eval_items(cfg, src)
    summary = {"models": {"sft": json.loads(src.metrics.read_text())["models"]["sft"]}}
    report.run(cfg, dst, summary, items=items, scenes=scenes)

    def look(page):
        return {"images": images_loaded(page), "headline": page.locator("#headline").inner_text(),
                "headers": page.eval_on_selector_all("#metrics th", "els => els.map(e => e.textContent)"),
                "best": page.locator("td.best").count(), "changes": page.locator("#changes").count()}

    seen, errors = open_page(dst.report_index, look)
    assert not errors
    assert all(w > 0 for _, w in seen["images"])
    assert "Only sft was evaluated" in seen["headline"]
    assert seen["headers"][1:] == ["sft"] and seen["best"] == 0 and seen["changes"] == 0


def test_metric_table_has_a_row_per_part_of_the_chair_split():
    models = {"sft": {"chair_i": 0.2, "chair_i_by_context": {"in_context": 0.05, "outside_context": 0.15}},
              "dpo": {"chair_i": 0.1, "chair_i_by_context": {"in_context": 0.07, "outside_context": 0.03}}}
    table = report._metric_table(models, {})
    outside = table.split('data-metric="chair_i_outside_context"')[1].split("</tr>")[0]
    assert "kinds it did not list" in outside and "0.150" in outside and '<td class="best"' in outside
    assert "0.030" in outside.split('class="best"')[1]  # dpo's 0.030 is the better one
    assert 'data-metric="chair_i_in_context"' in table
    assert 'data-metric="echo_rate"' not in table  # no model has it: no row


def test_the_report_says_which_images_and_the_selection_protocol(tmp_path):
    def said(ev, **extra):
        return report.evaluated_on({"eval_settings": {"eval": ev}, **extra})

    assert "<b>test</b> split" in said({"split": "test"}) and "read test once" in said({"split": "test"})
    assert "<b>val</b> split, where settings are chosen" in said({"split": "val"})
    assert said({"split": "test", "annotations": "/data/truth.jsonl"}, held_out_images=7) == (
        "Evaluated on your annotated images (<code>/data/truth.jsonl</code>), 7 images.")
    assert report.evaluated_on({}) == ""
    path, _ = _crafted(tmp_path)
    assert '<p id="protocol"></p>' in path.read_text()  # crafted metrics carry no settings: nothing claimed


def test_training_curves_of_every_round(tmp_path):
    from vlm_dpo.report_figures import curve_runs, plot_curves

    rounds = []
    for r, loss in ((1, 0.7), (2, 0.5)):
        path = tmp_path / f"round-{r}" / "metrics.jsonl"
        path.parent.mkdir()
        rows = [{"step": s, "loss": loss - 0.01 * s, "rewards/accuracies": 0.5, "rewards/margins": 0.1 * s}
                for s in range(1, 4)] + [{"step": 3, "eval/loss": loss, "eval/rewards/accuracies": 0.6,
                                          "eval/rewards/margins": 0.2}]
        path.write_text("".join(json.dumps(x) + "\n" for x in rows))
        rounds.append((f"round {r}", path))
    runs = curve_runs(rounds + [("round 3", tmp_path / "missing" / "metrics.jsonl")])
    assert [label for label, _ in runs] == ["round 1", "round 2"] and len(runs[1][1]) == 4
    assert curve_runs(rounds[0][1]) == [("", runs[0][1])]  # a bare path: one unlabelled run
    out = plot_curves(rounds, tmp_path / "curves.png")
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"
    assert plot_curves([("round 1", tmp_path / "nothing.jsonl")], tmp_path / "none.png") is None


def test_training_curves_follow_the_rounds_a_summary_names(tmp_path):
    two = {"train": {}, "models": {"sft": {"model": "cache/vlm"}, "dpo": {"model": "r/rounds/round-2/dpo/model"},
                                   "dpo_round1": {"model": "r/dpo/model"}},
           "rounds": [{"round": 2, "model": "r/rounds/round-2/dpo/model"}]}
    assert report.training_curves(two) == [("round 1", Path("r/dpo/metrics.jsonl")),
                                           ("round 2", Path("r/rounds/round-2/dpo/metrics.jsonl"))]
    one = {"train": {}, "models": {"dpo": {"model": "r/dpo/model"}}, "rounds": []}
    assert report.training_curves(one) == [("", Path("r/dpo/metrics.jsonl"))]
    assert report.training_curves({"models": {"sft": {"model": "m"}}}) == []  # an evaluation without training
