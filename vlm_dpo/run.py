"""The run folder: every path a run reads or writes, named once.

    config.yaml                       the resolved config of the last command
    .origin                           where the run was made (its keys count paths as there: a moved run resumes)
    detections/<split>.jsonl          detect: per image {image_id, file, width, height, detections[...]}
    captions/<split>.jsonl            describe: per image {prompt, grounding, greedy, samples[...], ...}
    pairs/                            pairs.parquet, pairs.jsonl, stats.json
    dpo/                              metrics.jsonl, checkpoints/, reference/, model/, summary.json
    rft/                              model/, sft_log.jsonl: the rejection-sampling fine-tuning baseline
    variants/<name>/                  pairs.parquet, dpo/: DPO variants trained beside the main run
    eval/                             <model>.captions.jsonl, .pope.jsonl, .per_image.jsonl, .robustness.jsonl,
                                      .metrics.json
    metrics.json                      every model's metrics (+ the pipeline's summary)
    report/                           index.html, curves.png, metrics.png, pairs.png, gallery/
    annotate/                         judgements.sqlite (the annotation app's store), judgements.jsonl (export)

`RunFolder(path)` opens any run, finished or not (notebooks, explore.py); `RunFolder.setup(cfg)` is how a
command starts one. Assets of the embedded world (world, detector, tiny VLM) live in the cache (embedded.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .keys import ORIGIN_FILE
from .records import write_text_atomic


def apply_threads(cfg) -> None:
    """Set torch's thread count to `cfg.threads` (0: leave it). The detect and describe stages apply it again
    at their start, because Ultralytics resets the count when it picks a device."""
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)


class RunFolder:
    """Paths of one run folder (nothing is created until a stage writes)."""

    def __init__(self, path: str | Path):
        self.root = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    @classmethod
    def setup(cls, cfg) -> "RunFolder":
        """The run folder of `cfg.out`, ready for a command: offline settings, torch threads, config.yaml.

        Under a launcher (`accelerate launch`) every process sets up, but only the main one writes config.yaml:
        n processes replacing the file through the same temp name would race (vlm_dpo.shards)."""
        from .config import to_yaml
        from .offline import configure_offline
        from .shards import is_main

        configure_offline(cfg.cache_dir)
        apply_threads(cfg)
        run = cls(cfg.out)
        run.root.mkdir(parents=True, exist_ok=True)
        if is_main():
            run.record_origin()
            write_text_atomic(run.config, to_yaml(cfg))
        return run

    origin = property(lambda self: self.root / ORIGIN_FILE)

    def record_origin(self) -> None:
        """Record where this run was made, once (keys.portable_path): moved or copied elsewhere, the run keeps its
        stage keys, so its finished stages, instead of redoing them."""
        if not self.origin.exists():
            write_text_atomic(self.origin, json.dumps({"path": str(self.root), "resolved": str(self.root.resolve())}))

    config = property(lambda self: self.root / "config.yaml")

    # detect / describe
    detections_dir = property(lambda self: self.root / "detections")
    captions_dir = property(lambda self: self.root / "captions")

    def detections(self, split: str) -> Path:
        return self.detections_dir / f"{split}.jsonl"

    def captions(self, split: str) -> Path:
        return self.captions_dir / f"{split}.jsonl"

    # ask (the robot's questions, answered and judged)
    vqa_dir = property(lambda self: self.root / "vqa")

    def vqa_answers(self, split: str) -> Path:
        return self.vqa_dir / f"{split}.jsonl"

    # pairs
    pairs_dir = property(lambda self: self.root / "pairs")
    pairs = property(lambda self: self.pairs_dir / "pairs.parquet")
    pairs_jsonl = property(lambda self: self.pairs_dir / "pairs.jsonl")
    pair_stats = property(lambda self: self.pairs_dir / "stats.json")

    # train
    dpo = property(lambda self: self.root / "dpo")
    dpo_model = property(lambda self: self.dpo / "model")
    dpo_metrics = property(lambda self: self.dpo / "metrics.jsonl")
    dpo_summary = property(lambda self: self.dpo / "summary.json")
    rft = property(lambda self: self.root / "rft")
    rft_model = property(lambda self: self.rft / "model")
    variants = property(lambda self: self.root / "variants")

    def variant(self, name: str) -> Path:
        return self.variants / name

    # eval / report
    eval = property(lambda self: self.root / "eval")
    metrics = property(lambda self: self.root / "metrics.json")
    report = property(lambda self: self.root / "report")
    report_index = property(lambda self: self.report / "index.html")
    curves = property(lambda self: self.report / "curves.png")

    def eval_captions(self, model: str) -> Path:
        return self.eval / f"{model}.captions.jsonl"

    def eval_pope(self, model: str) -> Path:
        return self.eval / f"{model}.pope.jsonl"

    def eval_per_image(self, model: str) -> Path:
        """Per image: the greedy caption's stats and POPE counts (what the report bootstraps differences of)."""
        return self.eval / f"{model}.per_image.jsonl"

    # annotate
    annotate = property(lambda self: self.root / "annotate")
    judgements_db = property(lambda self: self.annotate / "judgements.sqlite")
    judgements = property(lambda self: self.annotate / "judgements.jsonl")

    def stage(self, folder: Path, key: str) -> "Stage":
        """The done-marker of a stage folder of this run (see Stage)."""
        return Stage(folder, key)


class Stage:
    """A pipeline stage folder with a done-marker keyed by everything upstream: a rerun with the same key
    skips the stage, a changed key (config or inputs changed) reruns it and everything after it."""

    def __init__(self, folder: Path, key: str):
        self.dir = Path(folder)
        self.key = key
        self.marker = self.dir / ".done"

    @property
    def done(self) -> bool:
        return self.marker.exists() and self.marker.read_text() == self.key

    def reset_if_stale(self) -> "Stage":
        """Remove outputs finished under another key; keep unmarked (interrupted) ones so they resume."""
        if self.marker.exists() and self.marker.read_text() != self.key:
            shutil.rmtree(self.dir)
        return self

    def finish(self) -> None:
        write_text_atomic(self.marker, self.key)
