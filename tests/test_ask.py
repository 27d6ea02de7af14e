"""The ask stage (vlm_dpo/ask.py) on the tiny world: questions from detections or from the world's truth, answers
by the embedded VLM, every record judged, metrics written; resumed runs reuse the file; bad settings are errors."""

from __future__ import annotations

import json

import pytest

from vlm_dpo import ask
from vlm_dpo.config import ConfigError, load_config
from vlm_dpo.judge import Vocabulary
from vlm_dpo.records import read_jsonl
from vlm_dpo.run import RunFolder
from vlm_dpo.vqa.answers import VERDICTS, judged
from vlm_dpo.vqa.questions import FAMILIES


def test_ask_on_the_world_truth(tiny_cfg, monkeypatch):
    tiny_cfg.ask.truth = "world"
    out = ask.run(tiny_cfg, RunFolder.setup(tiny_cfg), "test", progress=False)
    rows = list(read_jsonl(out["answers"]))
    images = {r["image_id"] for r in rows}
    assert len(images) == tiny_cfg.world.n_test
    assert {r["family"] for r in rows} <= {*FAMILIES, "premise_control"} and "listing" in {r["family"] for r in rows}
    assert all(r["verdict"] in VERDICTS and isinstance(r["answer"], str) for r in rows)
    assert all(r["prompt"].startswith(r["question"]) for r in rows)
    assert any(r["grounding"] and r["grounding"] in r["prompt"] for r in rows)  # grounded by default
    metrics = json.loads(open(out["metrics"]).read())
    asked = [r for r in rows if r["family"] != "premise_control"]  # the controls are counted apart (vqa/control.py)
    assert metrics["questions"] == len(asked) and 0 <= metrics["accuracy"]["overall"] <= 1
    # rerun: the finished file is reused (same content, not regenerated, the model not even loaded)
    before = open(out["answers"]).read()

    def no_loading(*args, **kwargs):
        raise AssertionError("a finished answers file needs no model")

    monkeypatch.setattr("vlm_dpo.models.load_model_and_processor", no_loading)
    assert ask.run(tiny_cfg, RunFolder.setup(tiny_cfg), "test", progress=False)["answers"] == out["answers"]
    assert open(out["answers"]).read() == before


def test_ask_against_detections_skips_colour_and_can_drop_the_context(tiny_cfg):
    tiny_cfg.ask.grounded = False
    out = ask.run(tiny_cfg, RunFolder.setup(tiny_cfg), "val", progress=False)
    rows = list(read_jsonl(out["answers"]))
    assert rows and "colour" not in {r["family"] for r in rows}  # a detector gives no colours
    assert all(r["prompt"] == r["question"] for r in rows)


def test_ask_config_errors():
    with pytest.raises(ConfigError, match="ask.truth"):
        load_config(None, ["ask.truth=oracle"])
    with pytest.raises(ConfigError, match="ask.families"):
        load_config(None, ["ask.families=[existence,weather]"])


def test_sampled_answers_are_judged_and_resume_to_the_same_ones(tiny_cfg, tmp_path, monkeypatch):
    """ask.n_samples: every record carries its sampled answers, each judged as the greedy one is; batches are
    seeded by their index, so a run killed mid-way resumes to exactly the uninterrupted run's file."""
    tiny_cfg.ask.n_samples, tiny_cfg.ask.batch_size, tiny_cfg.ask.limit = 3, 4, 8
    full = list(read_jsonl(ask.run(tiny_cfg, RunFolder.setup(tiny_cfg), "train", progress=False)["answers"]))
    assert len(full) > tiny_cfg.ask.batch_size  # more than one batch
    vocab = Vocabulary.world()
    for r in full:
        assert len(r["samples"]) == 3
        assert r["samples"] == [judged(r, s["answer"], vocab) for s in r["samples"]]
    assert any(s["answer"] != r["answer"] for r in full for s in r["samples"])  # sampled, not greedy

    real, calls = ask.answer, []

    def dying(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # killed during the second batch
        calls.append(1)
        return real(*args, **kwargs)

    tiny_cfg.out = str(tmp_path / "resumed")
    monkeypatch.setattr(ask, "answer", dying)
    with pytest.raises(KeyboardInterrupt):
        ask.run(tiny_cfg, RunFolder.setup(tiny_cfg), "train", progress=False)
    assert len(list(read_jsonl(tmp_path / "resumed" / "vqa" / "train.jsonl.partial"))) == tiny_cfg.ask.batch_size
    monkeypatch.setattr(ask, "answer", real)
    assert list(read_jsonl(ask.run(tiny_cfg, RunFolder.setup(tiny_cfg), "train", progress=False)["answers"])) == full

    # another n_samples is another file: redone, not reused
    tiny_cfg.ask.n_samples = 1
    rows = list(read_jsonl(ask.run(tiny_cfg, RunFolder.setup(tiny_cfg), "train", progress=False)["answers"]))
    assert [len(r["samples"]) for r in rows] == [1] * len(full)


def test_sampling_settings_count_only_when_sampling():
    settings = {name: ask.ask_settings("m", [], cfg)["ask"] for name, cfg in [
        ("greedy", ask.AskConfig()), ("greedy_hot", ask.AskConfig(temperature=0.5)),
        ("sampled", ask.AskConfig(n_samples=2)), ("sampled_hot", ask.AskConfig(n_samples=2, temperature=0.5))]}
    assert settings["greedy"] == settings["greedy_hot"] and "n_samples" not in settings["greedy"]
    assert len({json.dumps(s, sort_keys=True) for s in settings.values()}) == 3
    with pytest.raises(ConfigError, match="ask.temperature"):
        load_config(None, ["ask.temperature=0"])
    with pytest.raises(ConfigError, match="ask.n_samples"):
        load_config(None, ["ask.n_samples=-1"])


def test_cli_ask_with_samples_then_pairs_mined_from_them(tiny_cache, tmp_path):
    """Issue #17's path: `vlm-dpo ask ... ask.n_samples=4` then `vlm-dpo pairs ... pairs.answers=<its file>`: the
    answers' mined pairs are the dataset's "vqa" task, beside the caption pairs of the same run."""
    from tiny_config import TINY_OVERRIDES

    from vlm_dpo.cli import main
    from vlm_dpo.pairs.dataset import load_pairs
    from vlm_dpo.vqa.mine import VqaMineConfig, mine_answers

    run = tmp_path / "run"
    common = [*TINY_OVERRIDES, f"cache_dir={tiny_cache}", f"out={run}", "data.split=train", "--quiet"]
    assert main(["ask", *common, "ask.n_samples=4", "ask.truth=detections"]) == 0
    answers = run / "vqa" / "train.jsonl"
    records = list(read_jsonl(answers))
    assert records and all(len(r["samples"]) == 4 for r in records)
    assert main(["pairs", *common, f"pairs.answers={answers}"]) == 0
    stats = json.loads((run / "pairs" / "stats.json").read_text())
    vqa = [p for p in load_pairs(run / "pairs" / "pairs.parquet") if p["task"] == "vqa"]
    expected = [p for r in records for p in mine_answers(r, VqaMineConfig())]
    assert sorted(p["pair_id"] for p in vqa) == sorted(p["pair_id"] for p in expected) and vqa
    assert stats["by_task"]["vqa"] == len(vqa) and stats["by_task"]["caption"] > 0
    assert sum(n for k, n in stats["by_kind"].items() if k.startswith("vqa_mined_")) == len(vqa)
    assert all(p["source"] == "mined" and isinstance(p["boxes"], list) for p in vqa)  # the run's detections


def test_pairs_mine_answers_asks_first(tiny_cache, tmp_path):
    """`vlm-dpo pairs ... pairs.mine_answers=true`: describes and asks the train split first (the answers judged
    against the detections even with ask.truth=world, the detector being the training pairs' judge), then mines
    them; without sampled answers it is a config error naming ask.n_samples."""
    from tiny_config import TINY_OVERRIDES

    from vlm_dpo.cli import main
    from vlm_dpo.vqa.mine import VqaMineConfig, mine_answers

    run = RunFolder(tmp_path / "run")
    common = [*TINY_OVERRIDES, f"cache_dir={tiny_cache}", f"out={run.root}", "data.split=train", "--quiet",
              "pairs.mine_answers=true", "ask.limit=8"]
    with pytest.raises(ConfigError, match="ask.n_samples must be > 0 with pairs.mine_answers"):
        load_config(None, ["pairs.mine_answers=true"])
    assert main(["pairs", *common, "ask.n_samples=3", "ask.truth=world"]) == 0
    records = list(read_jsonl(run.vqa_answers("train")))
    assert records and all(len(r["samples"]) == 3 for r in records)
    assert "colour" not in {r["family"] for r in records}  # judged against detections
    stats = json.loads(run.pair_stats.read_text())
    mined = {p["pair_id"] for r in records for p in mine_answers(r, VqaMineConfig())}
    assert sum(n for k, n in stats["by_kind"].items() if k.startswith("vqa_mined_")) == len(mined)
    assert stats["by_task"]["caption"] > 0


def test_premise_controls_are_asked_last_and_leave_the_questions_as_they_were(tiny_cfg, tmp_path):
    """ask.premise_control (default on): each false-premise question asked again in its words about a kind that is
    there, after every question and in batches of its own, greedy only; the metrics then carry the true-premise
    refusal rate. The questions' records are those of a run without controls, to the byte."""
    from vlm_dpo.vqa.control import CONTROL_FAMILY

    tiny_cfg.ask.truth, tiny_cfg.ask.n_samples, tiny_cfg.ask.batch_size, tiny_cfg.ask.limit = "world", 2, 5, 6
    with_controls = ask.run(tiny_cfg, RunFolder.setup(tiny_cfg), "test", progress=False)
    rows = list(read_jsonl(with_controls["answers"]))
    controls = [r for r in rows if r["family"] == CONTROL_FAMILY]
    false_premises = {r["image_id"]: r for r in rows if r["family"] == "false_premise"}
    assert controls and {r["image_id"] for r in controls} <= set(false_premises)
    assert [r["family"] for r in rows[-len(controls):]] == [CONTROL_FAMILY] * len(controls)  # last
    for c in controls:
        fp = false_premises[c["image_id"]]
        assert c["qid"] == f"{c['image_id']}/{CONTROL_FAMILY}" and c["expected"] == "answer" and c["samples"] == []
        assert c["label"] != fp["label"] and fp["question"].replace(fp["label"], c["label"]) == c["question"]
        assert c["prompt"].startswith(c["question"]) and c["grounding"] == fp["grounding"]
    metrics = json.loads(open(with_controls["metrics"]).read())
    refused = sum(r["answer_kind"] == "refusal" for r in controls)
    assert refused == sum(r["verdict"] == "refused_wrongly" for r in controls)
    assert metrics["true_premise_refusal"] == pytest.approx(refused / len(controls))
    assert with_controls["premise_balanced_accuracy"] == metrics["premise_balanced_accuracy"] is not None

    tiny_cfg.ask.premise_control = False
    tiny_cfg.out = str(tmp_path / "without")
    without = list(read_jsonl(ask.run(tiny_cfg, RunFolder.setup(tiny_cfg), "test", progress=False)["answers"]))
    assert without == rows[: -len(controls)]
    assert json.loads(open(tmp_path / "without" / "vqa" / "test.metrics.json").read())["true_premise_refusal"] is None


def test_questions_against_detections_take_the_context_fallback_guess_as_a_fact(tmp_path):
    """With ground.fallback_score the context may state one guess below min_score: the questions asked against the
    detections count it as there, so no question contradicts the context it is asked with."""
    import json

    from PIL import Image

    from vlm_dpo.ask import question_items

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "a.png")
    dets = tmp_path / "val.jsonl"
    dets.write_text(json.dumps({"image_id": "a", "file": "a.png", "width": 32, "height": 32,
                                "detections": [{"label": "cup", "score": 0.4, "box": [0, 0, 8, 8]}]}) + "\n")
    base = [f"data.images={images}", "ground.min_score=0.5", "ground.positions=false", "ask.truth=detections"]
    labels = ["cup", "ball", "book"]
    plain = question_items(load_config(None, base), "val", dets, labels)
    guess = question_items(load_config(None, base + ["ground.fallback_score=0.3"]), "val", dets, labels)
    assert {q["grounding"] for q in plain} == {"Detected: nothing."}
    assert {q["grounding"] for q in guess} == {"Detected: 1 cup."}
    listing = lambda items: [q["expected"] for q in items if q["family"] == "listing"]  # noqa: E731
    assert listing(plain) == [] and listing(guess) == [["cup"]]  # nothing there: no listing question
    assert [(q["label"], q["expected"]) for q in guess if q["family"] == "counting"] == [("cup", 1)]
    premise = [q for q in guess if q["family"] == "false_premise"]
    assert premise and all(q["label"] != "cup" for q in premise)
