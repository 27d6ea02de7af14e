"""DPO rounds: describe -> pairs -> DPO, once from the SFT model and then (`rounds` > 1) again from each round's
model, on its own captions (iterative, on-policy DPO).

Why a second round: the first round's pairs are the SFT model's mistakes. What DPO itself drifts into appears in
none of them: on the demo's weak world seed it repeats one listed phrase ("a ball, a ball and a ball.") until
present objects drop out of the caption. Round r samples round r-1's model on the training images, the same judge
mines its captions, and DPO trains from that model with it as the reference, so the pairs are about the policy as
it now is (iterative DPO as in Yuan et al. 2024, "Self-Rewarding Language Models", and Pang et al. 2024,
"Iterative Reasoning Preference Optimization"; here the detector stays the judge).

Round 1 lives in the run folder itself (captions/, pairs/, dpo/); round r >= 2 in <out>/rounds/round-<r>/, a run
folder of its own with the same layout (its train detections copied from round 1's, so nothing is re-detected).
Each round's stages carry done-markers keyed by everything before them, the previous rounds included.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Callable

from . import ask, describe
from .keys import key as stage_key
from .pairs import stage as pairs_stage
from .records import settings_path
from .run import RunFolder
from .train import stage as train_stage
from .train.recipe import stage_settings, train_dpo


def round_folder(run: RunFolder, r: int) -> RunFolder:
    """Where round r >= 2 writes: <out>/rounds/round-<r> (round 1 writes into the run folder itself)."""
    return RunFolder(run.root / "rounds" / f"round-{r}")


def round_config(cfg, folder: RunFolder, model: str):
    """The config of a later round: describe and train from `model` (also the reference), this round's captions
    and answers; every other setting is the first round's."""
    rcfg = copy.deepcopy(cfg)
    rcfg.out = str(folder.root)
    rcfg.vlm.model = model
    rcfg.train.model, rcfg.train.reference_model = model, ""
    rcfg.train.pairs = rcfg.train.output_dir = ""
    rcfg.pairs.captions = ""
    if rcfg.pairs.mine_answers:
        rcfg.pairs.answers = ""
    return rcfg


def dpo_round(cfg, run: RunFolder, model: str, key: str, *, progress: bool = True,
              lap: Callable[[str], None] = lambda name: None) -> tuple[dict, dict, str]:
    """describe the train split with `model` -> (ask ->) pairs -> DPO from `model`, in `run`'s folder; returns the
    training summary, the pair statistics and the key of the DPO stage. `key`: everything upstream."""
    key = stage_key(key, cfg.ground, cfg.prompt, cfg.vlm, cfg.describe)
    stage = run.stage(run.captions_dir, key).reset_if_stale()
    describe.run(cfg, run, "train", progress=progress)
    stage.finish()
    lap("describe")
    # with pairs.mine_answers: sampled, judged answers to mine VQA pairs from (issue #17)
    ask.answers_to_mine(cfg, run, "train", progress=progress, model_path=model)
    lap("ask")
    pair_stats = pairs_stage.build_pairs(pairs_stage.pairs_config(cfg, run), run.pairs_dir, ground=cfg.ground,
                                         prompt=cfg.prompt, progress=progress)
    lap("pairs")
    tcfg = train_stage.train_config(cfg, run, model)
    key = stage_key(key, pair_stats["key"], stage_settings(tcfg))
    stage = run.stage(run.dpo, key).reset_if_stale()  # unmarked = interrupted: train_dpo resumes
    if stage.done:
        summary = json.loads(run.dpo_summary.read_text())
        # the model beside the summary: in a copied run folder the file still names the original's
        summary["model"] = str(Path(tcfg.output_dir) / "model")
    else:
        summary = train_dpo(tcfg, progress=progress)
        stage.finish()
    lap("dpo")
    return summary, pair_stats, key


def later_rounds(cfg, run: RunFolder, model: str, key: str, *, progress: bool = True,
                 lap: Callable[[str], None] = lambda name: None) -> list[dict]:
    """Rounds 2..cfg.rounds after the first (whose DPO model is `model`, whose DPO stage key is `key`); returns per
    round {round, model, pairs (statistics), train (summary), key (of its DPO stage)}."""
    done = []
    for r in range(2, cfg.rounds + 1):
        folder = round_folder(run, r)
        for src in (run.detections("train"), settings_path(run.detections("train"))):
            dst = folder.detections_dir / src.name
            if src.exists() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        summary, pair_stats, key = dpo_round(round_config(cfg, folder, model), folder, model, stage_key(key, r),
                                             progress=progress, lap=lambda name, r=r: lap(f"round{r}_{name}"))
        model = summary["model"]
        done.append({"round": r, "model": model, "pairs": {k: v for k, v in pair_stats.items() if k != "key"},
                     "train": summary, "key": key})
    return done
