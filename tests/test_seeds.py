"""vlm_dpo/seeds.py: one seed sets every seeded field and its own run folder; the table's mean and range by hand;
issue #16's targets judged per seed; run_seeds runs the pipeline once per seed and writes both tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_dpo import seeds as S
from vlm_dpo.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _metrics(chair_sft, chair_dpo, recall_sft, recall_dpo, words_sft=10.0, words_dpo=9.0):
    models = {"sft": {"chair_i": chair_sft, "chair_s": 0.5, "recall": recall_sft, "pope_f1": 0.7,
                      "mean_words": words_sft},
              "dpo": {"chair_i": chair_dpo, "chair_s": 0.2, "recall": recall_dpo, "pope_f1": 0.8,
                      "mean_words": words_dpo}}
    rel = lambda a, b: (a - b) / b  # noqa: E731
    return {"models": models, "change_dpo_vs_sft": {"chair_i_relative": rel(chair_dpo, chair_sft),
                                                    "recall_relative": rel(recall_dpo, recall_sft),
                                                    "mean_words_relative": rel(words_dpo, words_sft)}}


def test_seed_config_sets_every_seeded_field():
    cfg = load_config(None, ["out=/tmp/x"])
    c = S.seed_config(cfg, 7)
    assert (c.world.seed, c.vlm.sft.seed, c.describe.seed, c.pairs.seed, c.pairs.mine.seed, c.train.seed) == (7,) * 6
    assert c.out == "/tmp/x/seed-7" and cfg.world.seed == 0  # the original is untouched


def test_summary_mean_and_range_by_hand():
    rows = {0: _metrics(0.2, 0.1, 0.5, 0.5), 1: _metrics(0.3, 0.06, 0.6, 0.57), 2: _metrics(0.25, 0.1, 0.5, 0.45)}
    s = S.summarize(rows)
    assert s["models"]["dpo"]["chair_i"] == pytest.approx({"mean": (0.1 + 0.06 + 0.1) / 3, "min": 0.06, "max": 0.1,
                                                           "n": 3})
    cut = s["change_dpo_vs_sft"]["chair_i_relative"]
    assert cut["min"] == pytest.approx(-0.8) and cut["max"] == pytest.approx(-0.5)
    assert cut["mean"] == pytest.approx((-0.5 - 0.8 - 0.6) / 3)
    t = S.targets(rows)
    # seed 0: -50% only; seed 1: -80% at 0.95x recall; seed 2: -60% at 0.9x recall
    assert t["per_seed"][0] == {"chair_i_cut>=0.60": False, "recall_ratio>=0.97": True, "words_ratio<=1.0": True}
    assert t["per_seed"][1]["chair_i_cut>=0.60"] and not t["per_seed"][1]["recall_ratio>=0.97"]
    assert t["per_seed"][2]["chair_i_cut>=0.60"] and not t["per_seed"][2]["recall_ratio>=0.97"]
    assert t["mean_chair_i_cut>=0.70"] is False and t["all"] is False
    md = S.markdown(rows, s)
    assert "| dpo | chair_i | 0.100 | 0.060 | 0.100 | 0.087 [0.060, 0.100] |" in md
    assert "| dpo vs sft | chair_i_relative | -50.0% | -80.0% | -60.0% |" in md
    assert "chair_i_in_context" not in md  # runs without the split leave its rows out


def test_the_chair_split_gets_its_own_rows():
    rows = {0: _metrics(0.2, 0.1, 0.5, 0.5), 1: _metrics(0.3, 0.06, 0.6, 0.57)}
    for r, split in zip(rows.values(), ({"in_context": 0.04, "outside_context": 0.06},
                                        {"in_context": 0.05, "outside_context": 0.01})):
        r["models"]["dpo"]["chair_i_by_context"] = split
    s = S.summarize(rows)
    assert s["models"]["dpo"]["chair_i_outside_context"] == pytest.approx({"mean": 0.035, "min": 0.01, "max": 0.06,
                                                                           "n": 2})
    assert "chair_i_in_context" not in s["models"]["sft"]  # a model without the split on some seed: no row
    md = S.markdown(rows, s)
    assert "| dpo | chair_i_in_context | 0.040 | 0.050 | 0.045 [0.040, 0.050] |" in md


def test_run_seeds_runs_the_pipeline_per_seed_and_writes_the_tables(tmp_path, monkeypatch):
    import vlm_dpo.pipeline as pipeline

    seen = []

    def fake_pipeline(cfg, progress=True):  # the orchestration only; the pipeline itself has its own tests
        seen.append((cfg.world.seed, cfg.train.seed, cfg.out))
        path = tmp_path / f"metrics-{cfg.world.seed}.json"
        path.write_text(json.dumps(_metrics(0.2, 0.2 - 0.05 * cfg.world.seed, 0.5, 0.5)))
        return {"metrics": str(path)}

    monkeypatch.setattr(pipeline, "run_pipeline", fake_pipeline)
    cfg = load_config(None, [f"out={tmp_path / 'seeds'}", "seeds=[1,2]"])
    out = S.run_seeds(cfg, progress=False)
    assert seen == [(1, 1, str(tmp_path / "seeds" / "seed-1")), (2, 2, str(tmp_path / "seeds" / "seed-2"))]
    doc = json.loads((tmp_path / "seeds" / "seeds.json").read_text())
    assert doc["seeds"] == doc["done"] == [1, 2] and set(doc["rows"]) == {"1", "2"}
    assert doc["summary"]["change_dpo_vs_sft"]["chair_i_relative"]["min"] == pytest.approx(-0.5)
    assert out["targets_met"] is False
    assert (tmp_path / "seeds" / "seeds.md").read_text().startswith("| model | metric | seed 1 | seed 2 |")
    with pytest.raises(ValueError, match="at least two different seeds"):
        S.run_seeds(cfg, seeds=[3, 3])


def test_the_seeds_config_is_the_demo_over_three_seeds():
    cfg = load_config(ROOT / "configs" / "seeds.yaml")
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.seeds == [0, 1, 2] and cfg.out == "runs/seeds"
    assert cfg.train == demo.train and cfg.pairs == demo.pairs and cfg.vlm == demo.vlm
    assert cfg.rounds == demo.rounds == 2
