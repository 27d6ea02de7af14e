"""The whole pipeline repeated over several seeds, and one table of what holds across them.

One seed draws everything a run draws: the world (scenes, hence the detector trained on them and the VLM's SFT
data), the VLM's SFT, sampled captions, pair mining and splits, and DPO. Floating-point order differs between
machines as much as it differs between seeds, so a recipe is only as good as its worst seed: the table gives
per-seed rows, mean and range (min, max) per metric and model, and the DPO-vs-SFT change per seed.

    vlm-dpo seeds configs/seeds.yaml          # seeds: [0, 1, 2], each a full pipeline in <out>/seed-<s>/

Writes `<out>/seeds.json` (rows, summary, targets) and `<out>/seeds.md` (the same as a Markdown table). Each seed's
run folder is an ordinary pipeline run (resumable, cached assets keyed by their seed), so an interrupted seeds
run continues where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from .eval.grounding import model_metric
from .records import write_text_atomic

# The config fields one seed sets (section, field).
SEEDED = (("world", "seed"), ("vlm.sft", "seed"), ("describe", "seed"), ("pairs", "seed"), ("pairs.mine", "seed"),
          ("train", "seed"))
METRICS = ("chair_i", "chair_s", "recall", "pope_f1", "mean_words", "chair_i_in_context", "chair_i_outside_context")
CHANGES = ("chair_i_relative", "recall_relative", "mean_words_relative")


def _set(obj, dotted: str, name: str, value):
    """obj with obj.<dotted>.<name> = value (frozen-safe: dataclasses.replace all the way down)."""
    if not dotted:
        return replace(obj, **{name: value})
    head, _, rest = dotted.partition(".")
    return replace(obj, **{head: _set(getattr(obj, head), rest, name, value)})


def seed_config(cfg, seed: int):
    """The config of one seed's run: every seeded field set to `seed`, output in <out>/seed-<seed>."""
    for section, name in SEEDED:
        cfg = _set(cfg, section, name, seed)
    return replace(cfg, out=str(Path(cfg.out) / f"seed-{seed}"))


def summarize(rows: dict[int, dict]) -> dict:
    """rows: seed -> that run's metrics.json. Per model and metric: mean, min, max over the seeds; the same for the
    DPO-vs-SFT changes."""
    def stats(values: list[float]) -> dict:
        return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)}

    models = sorted(set.intersection(*(set(r["models"]) for r in rows.values())))
    out = {"models": {}, "change_dpo_vs_sft": {}}
    for m in models:
        out["models"][m] = {k: stats([model_metric(r["models"][m], k) for r in rows.values()]) for k in METRICS
                            if all(model_metric(r["models"][m], k) is not None for r in rows.values())}
    for k in CHANGES:
        values = [r["change_dpo_vs_sft"][k] for r in rows.values() if r.get("change_dpo_vs_sft", {}).get(k) is not None]
        if len(values) == len(rows):
            out["change_dpo_vs_sft"][k] = stats(values)
    return out


def targets(rows: dict[int, dict]) -> dict:
    """Issue #16's bar for DPO vs SFT: on each seed CHAIR_i at least 60% lower, recall >= 0.97x, mean words <= 1.0x;
    the mean CHAIR_i cut over the seeds >= 70%. Each as measured, with the verdict."""
    per_seed = {}
    for seed, r in rows.items():
        c = r["change_dpo_vs_sft"]
        per_seed[seed] = {"chair_i_cut>=0.60": -c["chair_i_relative"] >= 0.60,
                          "recall_ratio>=0.97": 1 + c["recall_relative"] >= 0.97,
                          "words_ratio<=1.0": 1 + c["mean_words_relative"] <= 1.0}
    cuts = [-r["change_dpo_vs_sft"]["chair_i_relative"] for r in rows.values()]
    return {"per_seed": per_seed, "mean_chair_i_cut>=0.70": sum(cuts) / len(cuts) >= 0.70,
            "all": all(all(v.values()) for v in per_seed.values()) and sum(cuts) / len(cuts) >= 0.70}


def markdown(rows: dict[int, dict], summary: dict) -> str:
    """Per-seed rows and the mean [min, max] per model and metric."""
    lines = ["| model | metric | " + " | ".join(f"seed {s}" for s in rows) + " | mean [min, max] |",
             "| --- | --- |" + " --- |" * (len(rows) + 1)]
    for m, metrics in summary["models"].items():
        for k, st in metrics.items():
            per = " | ".join(f"{model_metric(r['models'][m], k):.3f}" for r in rows.values())
            lines.append(f"| {m} | {k} | {per} | {st['mean']:.3f} [{st['min']:.3f}, {st['max']:.3f}] |")
    for k, st in summary["change_dpo_vs_sft"].items():
        per = " | ".join(f"{r['change_dpo_vs_sft'][k]:+.1%}" for r in rows.values())
        lines.append(f"| dpo vs sft | {k} | {per} | {st['mean']:+.1%} [{st['min']:+.1%}, {st['max']:+.1%}] |")
    return "\n".join(lines) + "\n"


def run_seeds(cfg, seeds: list[int] | None = None, progress: bool = True) -> dict:
    """The pipeline once per seed (cfg.seeds unless given), then the table. Returns the paths and the summary."""
    from .pipeline import run_pipeline

    seeds = list(seeds if seeds is not None else cfg.seeds)
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must name at least two different seeds, got {seeds}")
    rows, wall = {}, {}
    for seed in seeds:
        t = time.time()
        result = run_pipeline(seed_config(cfg, seed), progress=progress)
        rows[seed] = json.loads(Path(result["metrics"]).read_text())
        wall[seed] = round(time.time() - t, 1)
        doc = write_tables(Path(cfg.out), seeds, rows, wall)  # after every seed: a long run shows what it has
    return {"seeds_json": str(Path(cfg.out) / "seeds.json"), "seeds_md": str(Path(cfg.out) / "seeds.md"),
            "change_dpo_vs_sft": doc["summary"]["change_dpo_vs_sft"], "targets_met": doc["targets"]["all"]}


def write_tables(out: Path, seeds: list[int], rows: dict[int, dict], wall: dict[int, float]) -> dict:
    """seeds.json and seeds.md of the seeds done so far (`done` lists them)."""
    summary = summarize(rows)
    doc = {"seeds": seeds, "done": list(rows), "summary": summary, "targets": targets(rows), "wall_s": wall,
           "rows": {s: {"models": {m: {k: model_metric(r["models"][m], k) for k in METRICS} for m in r["models"]},
                        "change_dpo_vs_sft": r["change_dpo_vs_sft"]} for s, r in rows.items()}}
    write_text_atomic(out / "seeds.json", json.dumps(doc, indent=1, default=str))
    write_text_atomic(out / "seeds.md", markdown(rows, summary))
    return doc
