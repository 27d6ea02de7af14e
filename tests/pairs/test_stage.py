"""`build_pairs` end to end on hand-built captions, detections, imports and judgements (vlm_dpo.pairs.stage)."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from vlm_dpo.ground import GroundingConfig, grounding_text, prompt_text
from vlm_dpo.judge import JudgeConfig, Vocabulary, score_caption
from vlm_dpo.pairs.dataset import load_pairs, resolve_image
from vlm_dpo.pairs.mine import MineConfig
from vlm_dpo.pairs.stage import PairsConfig, build_pairs
from vlm_dpo.records import write_jsonl_atomic
from vlm_dpo.vqa.mine import VqaMineConfig
from vlm_dpo.world import reference_caption

from .conftest import IMAGE_SIZE

VOCAB = Vocabulary.world()


def _write_inputs(root, scenes):
    """Captions + detections of scenes 0-2 (and a captions record without detections); an import file and a
    judgement file about scene 3. Paths relative to `root`."""
    det_recs, cap_recs = [], []
    for s in scenes[:3]:
        dets = [{"label": o.label, "score": 0.9, "box": [round(v, 1) for v in o.box]} for o in s.objects]
        det_recs.append({"image_id": s.image_id, "file": f"images/{s.image_id}.png", "width": s.width,
                         "height": s.height, "detections": dets})
        g = grounding_text(dets, s.width, s.height)
        good = reference_caption([{"label": d["label"], "color": None, "box": d["box"]} for d in dets], s.width)
        assert score_caption(good, dets, VOCAB).perfect
        cap_recs.append({"image_id": s.image_id, "file": f"images/{s.image_id}.png", "prompt": prompt_text(g),
                         "grounding": g, "greedy": good,
                         "samples": [good.rstrip(".") + " and a purple elephant and a bowl and a phone.",
                                     "some things on a table.", good],
                         "generation": {"temperature": 1.0}, "model": "tiny-vlm"})
    cap_recs.append(dict(cap_recs[0], image_id="no-such-image"))
    write_jsonl_atomic(root / "captions.jsonl", cap_recs)
    write_jsonl_atomic(root / "detections.jsonl", det_recs)
    img3 = f"images/{scenes[3].image_id}.png"
    human = {"image": img3, "prompt": "Describe the objects on the table.", "chosen": "a cup.", "rejected": "a ball."}
    (root / "imports.jsonl").write_text("\n".join([
        json.dumps(human), "{not json", json.dumps(human | {"image": "../outside.png"}),
        json.dumps(human)]) + "\n")  # the repeated row is a duplicate pair
    write_jsonl_atomic(root / "judgements.jsonl", [
        {"judgement_id": "j1", "annotator": "ann", "image_id": scenes[3].image_id, "image": img3,
         "prompt": "Describe the objects on the table.", "grounding": None, "a": "two cups.", "b": "a bowl.",
         "choice": "b", "edit": None},
        {"judgement_id": "j2", "annotator": "ann", "image_id": scenes[3].image_id, "image": img3,
         "prompt": "Describe the objects on the table.", "grounding": None, "a": "two cups.", "b": "a bowl.",
         "choice": "tie", "edit": None},
    ])


def _config(root, **kw):
    return PairsConfig(captions=str(root / "captions.jsonl"), detections=str(root / "detections.jsonl"),
                       image_root=str(root), imports=[str(root / "imports.jsonl")],
                       judgements=[str(root / "judgements.jsonl")], val_fraction=0.5,
                       mine=MineConfig(synthetic_per_image=2), **kw)


@pytest.fixture
def stage_inputs(image_root):
    root, scenes = image_root
    assert scenes[0].width == IMAGE_SIZE
    _write_inputs(root, scenes)
    return root, scenes


def _mark(path):
    """Give a file a recognisable mtime, so a rewrite shows whatever the clock resolution."""
    os.utime(path, ns=(10**9, 10**9))
    return path.stat().st_mtime_ns


def test_build_pairs_end_to_end(stage_inputs, tmp_path):
    root, scenes = stage_inputs
    out = tmp_path / "pairs"
    stats = build_pairs(_config(root), out, progress=False)
    for name in ("pairs.parquet", "pairs.jsonl", "stats.json"):
        assert (out / name).is_file()
    assert json.loads((out / "stats.json").read_text()) == json.loads(json.dumps(stats))
    pairs = load_pairs(out / "pairs.parquet")
    assert pairs == load_pairs(out / "pairs.jsonl")
    assert {p["source"] for p in pairs} == {"mined", "synthetic", "context", "human"}
    assert stats["pairs"] == len(pairs) and stats["images"] == 4
    assert stats["by_source"] == {s: sum(p["source"] == s for p in pairs) for s in stats["by_source"]}
    assert stats["by_source"]["human"] == 2  # one imported (its duplicate dropped), one judged (the tie is none)
    assert stats["by_source"]["synthetic"] == 6  # two per captioned image
    assert len({p["pair_id"] for p in pairs}) == len(pairs)
    skipped = stats["rejections"]["skipped"]
    assert skipped == {"no_detections_record": 1, "malformed_row": 1, "image_outside_root": 1, "duplicate": 1}
    assert [e["reason"] for e in stats["rejections"]["first"]] == ["no_detections_record", "malformed_row",
                                                                   "image_outside_root"]
    # every pair: an image under the root, relative; one split per image; judged pairs strictly better
    splits = {}
    for p in pairs:
        assert not os.path.isabs(p["image"]) and resolve_image(p["image"], root).is_file()
        splits.setdefault(p["image_id"], set()).add(p["split"])
        if p["source"] != "human":
            assert p["scores"]["chosen"]["score"] > p["scores"]["rejected"]["score"]
            assert p["margin"] > 0 and p["boxes"]
        if p["source"] == "mined":
            assert p["generator"] == {"model": "tiny-vlm", "settings": {"temperature": 1.0}}
        if p["source"] == "context":
            assert p["grounding"] in p["prompt"]
    assert all(len(s) == 1 for s in splits.values())
    assert stats["by_split"] == {s: sum(p["split"] == s for p in pairs) for s in ("train", "val")}
    assert len({i for i, s in splits.items() if s == {"val"}}) == 2  # 4 images, half of them val
    (judged,) = [p for p in pairs if p["annotator"] == "ann"]
    assert (judged["chosen"], judged["rejected"], judged["kind"]) == ("a bowl.", "two cups.", "human")
    # the same inputs elsewhere give the same pairs (mining, synthetic and context pairs are deterministic)
    assert build_pairs(_config(root), tmp_path / "again", progress=False) == stats
    assert load_pairs(tmp_path / "again" / "pairs.parquet") == pairs


def test_rerun_is_skipped_and_changes_rebuild(stage_inputs, tmp_path):
    root, _ = stage_inputs
    out = tmp_path / "pairs"
    cfg = _config(root)
    first = build_pairs(cfg, out, progress=False)
    stamp = _mark(out / "pairs.parquet")
    again = build_pairs(cfg, out, progress=False)
    assert again == json.loads((out / "stats.json").read_text()) and again["key"] == first["key"]
    assert (out / "pairs.parquet").stat().st_mtime_ns == stamp  # nothing rewritten

    changed = build_pairs(replace(cfg, mine=MineConfig(max_pairs_per_image=1, synthetic=[])), out, progress=False)
    assert changed["key"] != first["key"] and (out / "pairs.parquet").stat().st_mtime_ns != stamp
    assert "synthetic" not in changed["by_source"] and changed["by_source"]["mined"] <= 3
    assert json.loads((out / "stats.json").read_text())["key"] == changed["key"]

    # the grounding config shapes the context pairs' prompts: a change rebuilds too
    stamp = _mark(out / "pairs.parquet")
    cfg2 = replace(cfg, mine=MineConfig(max_pairs_per_image=1, synthetic=[]))
    positions_off = build_pairs(cfg2, out, ground=GroundingConfig(positions=False), progress=False)
    assert positions_off["key"] != changed["key"] and (out / "pairs.parquet").stat().st_mtime_ns != stamp
    ctx = [p for p in load_pairs(out / "pairs.parquet") if p["source"] == "context"]
    assert ctx and all("(" not in p["grounding"] for p in ctx)

    # inputs count by content: a touched but equal input is skipped, a changed one rebuilds; an interrupted
    # stage (no parquet) rebuilds
    os.utime(root / "judgements.jsonl", ns=(2 * 10**9, 2 * 10**9))
    assert build_pairs(cfg, out, progress=False)["key"] == first["key"]
    lines = (root / "judgements.jsonl").read_text().splitlines(keepends=True)
    (root / "judgements.jsonl").write_text("".join(lines[:-1]))
    touched = build_pairs(cfg, out, progress=False)
    assert touched["key"] not in (first["key"], changed["key"], positions_off["key"])
    (out / "pairs.parquet").unlink()
    assert build_pairs(cfg, out, progress=False)["key"] == touched["key"]
    assert (out / "pairs.parquet").is_file()


def test_build_pairs_with_nothing_usable_fails_loudly(stage_inputs, tmp_path):
    root, _ = stage_inputs
    cfg = PairsConfig(imports=[str(root / "imports.jsonl")], image_root=str(tmp_path / "empty_root"))
    with pytest.raises(ValueError, match="no usable pairs"):
        build_pairs(cfg, tmp_path / "pairs", progress=False)
    assert not (tmp_path / "pairs" / "stats.json").exists()
    with pytest.raises(Exception, match="missing.jsonl"):
        build_pairs(PairsConfig(imports=[str(root / "missing.jsonl")], image_root=str(root)), tmp_path / "p2",
                    progress=False)


def test_pairs_vocabulary_by_name(stage_inputs, tmp_path):
    """pairs.vocabulary goes through judge.resolve_vocabulary: the detections' own labels work, a typo fails."""
    root, _ = stage_inputs
    stats = build_pairs(replace(_config(root), vocabulary="detections"), tmp_path / "det", progress=False)
    assert stats["by_source"]["mined"] > 0
    with pytest.raises(ValueError, match="unknown vocabulary 'imagenet'"):
        build_pairs(replace(_config(root), vocabulary="imagenet"), tmp_path / "typo", progress=False)
    assert JudgeConfig().min_score == 0.5  # the detections above (0.9) are confident


def test_pairs_vocabulary_from_a_file(stage_inputs, tmp_path, monkeypatch):
    """pairs.vocabulary=<a YAML file>: the world's cups are the example vocabulary's mugs, its other kinds
    unknown (never wrong); the file is part of the stage key, and a missing one is a clear error."""
    from pathlib import Path

    from vlm_dpo.config import load_config

    root, _ = stage_inputs
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the path is relative to the repository
    cfg = load_config(overrides=["pairs.vocabulary=data/vocabulary.example.yaml"])
    assert cfg.pairs.vocabulary == "data/vocabulary.example.yaml"
    stats = build_pairs(replace(_config(root), vocabulary=cfg.pairs.vocabulary), tmp_path / "file", progress=False)
    pairs = load_pairs(tmp_path / "file" / "pairs.parquet")
    mined = [p for p in pairs if p["source"] == "mined"]
    assert stats["by_source"]["mined"] == len(mined) > 0
    for p in mined:  # judged in the file's classes: a cup is a mug; a ball, a bowl, an elephant are unknown
        for side in ("chosen", "rejected"):
            judged = p["scores"][side]
            assert set(judged["hallucinated"]) | set(judged["missed"]) <= {"mug"}
    # another vocabulary file with the same name is another judge: the stage rebuilds
    own = tmp_path / "vocab.yaml"
    own.write_text("mug: [mug, cup]\n")
    first = build_pairs(replace(_config(root), vocabulary=str(own)), tmp_path / "own", progress=False)
    own.write_text("mug: [mug, cup]\nball: [ball]\n")
    second = build_pairs(replace(_config(root), vocabulary=str(own)), tmp_path / "own", progress=False)
    assert first["key"] != second["key"]
    with pytest.raises(ValueError, match=r"vocabulary file 'data/no-such\.yaml' does not exist"):
        build_pairs(replace(_config(root), vocabulary="data/no-such.yaml"), tmp_path / "missing", progress=False)


def test_human_judgement_of_a_mined_pair_wins(stage_inputs, tmp_path):
    """A person's import identical to a mined pair (image, prompt, chosen, rejected) is kept once, as human;
    stats.json counts the merge by source."""
    root, _ = stage_inputs
    base = build_pairs(_config(root), tmp_path / "base", progress=False)
    assert base["merged"] == {}
    mined = next(p for p in load_pairs(tmp_path / "base" / "pairs.parquet") if p["source"] == "mined")
    row = {k: mined[k] for k in ("image", "prompt", "chosen", "rejected")}
    (root / "human.jsonl").write_text(json.dumps(row) + "\n")
    cfg = replace(_config(root), imports=[str(root / "imports.jsonl"), str(root / "human.jsonl")])
    stats = build_pairs(cfg, tmp_path / "merged", progress=False)
    pairs = load_pairs(tmp_path / "merged" / "pairs.parquet")
    (same,) = [p for p in pairs if p["pair_id"] == mined["pair_id"]]
    assert same["source"] == "human" and (same["chosen"], same["rejected"]) == (mined["chosen"], mined["rejected"])
    assert stats["merged"] == {"human_over_mined": 1}
    assert json.loads((tmp_path / "merged" / "stats.json").read_text())["merged"] == {"human_over_mined": 1}
    assert stats["pairs"] == base["pairs"]  # one pair, not two
    assert stats["by_source"]["mined"] == base["by_source"]["mined"] - 1
    assert stats["by_source"]["human"] == base["by_source"]["human"] + 1
    assert stats["rejections"]["skipped"] == base["rejections"]["skipped"]  # a merge is not a duplicate


def test_vqa_pairs_join_the_caption_pairs_at_the_configured_ratio(stage_inputs, tmp_path):
    root, scenes = stage_inputs
    captions_only = build_pairs(_config(root), tmp_path / "captions", progress=False)
    assert captions_only["by_task"] == {"caption": captions_only["pairs"]}
    stats = build_pairs(replace(_config(root), vqa_ratio=0.25), tmp_path / "mixed", progress=False)
    pairs = load_pairs(tmp_path / "mixed" / "pairs.parquet")
    vqa = [p for p in pairs if p["task"] == "vqa"]
    n_caption = sum(p["source"] != "human" for p in pairs if p["task"] == "caption")  # the ratio counts generated ones
    assert len(vqa) == round(0.25 * n_caption) > 0 and stats["by_task"]["vqa"] == len(vqa)
    assert all(p["source"] == "synthetic" and p["kind"].startswith("vqa_") and p["grounding"] in p["prompt"]
               for p in vqa)
    # the pairs of one image stay in one split, captions and questions alike
    split = {}
    for p in pairs:
        assert split.setdefault(p["image_id"], p["split"]) == p["split"]
    # pairs.vqa_adversarial moves only the denied kind of "is there a ...?" (the co-occurring one: tests/vqa); a
    # ratio this high keeps every image's questions
    every = {}
    for share in (0.0, 1.0):
        build_pairs(replace(_config(root), vqa_ratio=10.0, vqa_adversarial=share), tmp_path / f"adv{share}",
                    progress=False)
        every[share] = [p for p in load_pairs(tmp_path / f"adv{share}" / "pairs.parquet") if p["task"] == "vqa"]
    moved = [(a, b) for a, b in zip(every[0.0], every[1.0], strict=True) if a != b]
    assert moved and all(a["kind"] == b["kind"] == "vqa_yes_no" and a["chosen"] == b["chosen"] == "no."
                         for a, b in moved), moved
    # pairs.vqa_colours: colour questions about the detections, each answered in the colour the image shows
    build_pairs(replace(_config(root), vqa_ratio=10.0, vqa_colours="world"), tmp_path / "colours", progress=False)
    colour = [p for p in load_pairs(tmp_path / "colours" / "pairs.parquet") if p["kind"] == "vqa_colour"]
    truth = {(s.image_id, o.label): o.color for s in scenes for o in s.objects}
    asked = {p["pair_id"]: next(k for k in VOCAB.classes if f" {k}" in p["prompt"].split("?")[0]) for p in colour}
    assert colour and all(p["chosen"] == f"{truth[(p['image_id'], asked[p['pair_id']])]}." for p in colour)
    # pairs.vqa_premise_control: the same draw, plus a true-premise pair for each image with a false premise drawn
    base = [p for p in load_pairs(tmp_path / "mixed" / "pairs.parquet") if p["task"] == "vqa"]
    build_pairs(replace(_config(root), vqa_ratio=0.25, vqa_premise_control=True), tmp_path / "control",
                progress=False)
    with_control = [p for p in load_pairs(tmp_path / "control" / "pairs.parquet") if p["task"] == "vqa"]
    control = [p for p in with_control if p["kind"] == "vqa_true_premise"]
    assert sorted(p["pair_id"] for p in with_control if p["kind"] != "vqa_true_premise") == sorted(
        p["pair_id"] for p in base)
    premised = {p["image_id"] for p in base if p["kind"] == "vqa_false_premise"}
    assert control and {p["image_id"] for p in control} <= premised
    assert all(p["rejected"].startswith("There is no ") and not p["chosen"].startswith("There is no")
               for p in control)
    # older pair files (no task column) read as captions
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({k: v for k, v in pairs[0].items() if k != "task"}) + "\n")
    assert load_pairs(old)[0]["task"] == "caption"


def _ask_records(scenes) -> list[dict]:
    """`vlm-dpo ask` records (ask.n_samples=3) about scenes 0 and 3: is there a <kind> there (yes), judged."""
    from vlm_dpo.vqa.answers import judged

    recs = []
    for s in (scenes[0], scenes[3]):
        label = s.objects[0].label
        q = {"qid": f"{s.image_id}/existence", "image_id": s.image_id, "file": f"images/{s.image_id}.png",
             "family": "existence", "question": f"Is there a {label}?", "prompt": f"Is there a {label}? Detected: x.",
             "grounding": "Detected: x.", "label": label, "other": "", "expected": "yes"}
        recs.append(q | judged(q, "No.", VOCAB) | {"samples": [judged(q, t, VOCAB) for t in ("Yes.", "No.", "")]})
    return recs


def test_mined_vqa_pairs_from_judged_answers(stage_inputs, tmp_path):
    """pairs.answers: each ask record's correct answer over its wrong one joins the dataset as a mined "vqa" pair
    (boxes from the detections file when it has the image), split with its image's caption pairs; the file's
    content is part of the stage key."""
    root, scenes = stage_inputs
    write_jsonl_atomic(root / "answers.jsonl", _ask_records(scenes))
    base = build_pairs(_config(root), tmp_path / "base", progress=False)
    stats = build_pairs(replace(_config(root), answers=str(root / "answers.jsonl")), tmp_path / "vqa", progress=False)
    pairs = load_pairs(tmp_path / "vqa" / "pairs.parquet")
    vqa = sorted((p for p in pairs if p["task"] == "vqa"), key=lambda p: p["image_id"])
    assert [(p["image_id"], p["chosen"], p["rejected"], p["kind"], p["source"]) for p in vqa] == [
        (scenes[0].image_id, "Yes.", "No.", "vqa_mined_wrong", "mined"),
        (scenes[3].image_id, "Yes.", "No.", "vqa_mined_wrong", "mined")]
    assert stats["by_task"] == {"caption": base["pairs"], "vqa": 2} and stats["by_kind"]["vqa_mined_wrong"] == 2
    assert stats["by_source"]["mined"] == base["by_source"]["mined"] + 2
    assert vqa[0]["boxes"] == [[round(v, 1) for v in o.box] for o in scenes[0].objects]
    assert vqa[1]["boxes"] is None  # scene 3 is not in the detections file
    assert vqa[0]["scores"] == {"chosen": {"answer_kind": "yes", "verdict": "correct"},
                                "rejected": {"answer_kind": "no", "verdict": "wrong"}}
    assert all(p["grounding"] == "Detected: x." and p["prompt"].endswith(p["grounding"]) for p in vqa)
    split = {}
    for p in pairs:
        assert split.setdefault(p["image_id"], p["split"]) == p["split"]
    # another answers file (same name) rebuilds, and so do other mining settings
    write_jsonl_atomic(root / "answers.jsonl", _ask_records(scenes)[:1])
    again = build_pairs(replace(_config(root), answers=str(root / "answers.jsonl")), tmp_path / "vqa", progress=False)
    assert again["key"] != stats["key"] and again["by_task"]["vqa"] == 1
    two = replace(_config(root), answers=str(root / "answers.jsonl"), vqa_mine=VqaMineConfig(max_pairs_per_question=2))
    assert build_pairs(two, tmp_path / "vqa", progress=False)["key"] != again["key"]
    # without answers the mining settings shape nothing: the key of runs made before they existed is kept
    assert build_pairs(replace(two, answers=""), tmp_path / "base", progress=False)["key"] == base["key"]


@pytest.mark.parametrize("change,error", [
    ({"file": "../elsewhere/images/x.png"}, r"image '\.\./elsewhere/images/x\.png' is not a file under the image root"),
    ({"file": "images/no-such.png"}, r"image 'images/no-such\.png' is not a file under the image root"),
    ({"verdict": None}, r"lacks \['verdict'\]; not a record of `vlm-dpo ask`"),
])
def test_answers_of_another_image_root_are_an_error_naming_the_record(stage_inputs, tmp_path, change, error):
    from vlm_dpo.images import DataError
    from vlm_dpo.records import RecordError

    root, scenes = stage_inputs
    good, bad = _ask_records(scenes)
    bad = {k: v for k, v in (bad | change).items() if v is not None}
    write_jsonl_atomic(root / "answers.jsonl", [good, bad])
    with pytest.raises((DataError, RecordError), match=rf"answers\.jsonl:2 \(question {bad['qid']}\): {error}"):
        build_pairs(replace(_config(root), answers=str(root / "answers.jsonl")), tmp_path / "pairs", progress=False)
    assert not (tmp_path / "pairs" / "stats.json").exists()


def test_a_palette_that_is_no_file_name_is_refused():
    from vlm_dpo.checks import FieldValueError

    with pytest.raises(FieldValueError, match="vqa_colours"):
        PairsConfig(vqa_colours="rainbow")
