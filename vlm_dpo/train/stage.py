"""The train stage: DPO on the run's pairs from the base model, into <run>/dpo (the loop lives in recipe)."""

from __future__ import annotations

import copy

from ..images import data_root
from ..run import RunFolder
from .recipe import TrainConfig, train_dpo


def train_config(cfg, run: RunFolder, base_model: str) -> TrainConfig:
    """cfg.train with the run folder's defaults filled in (pairs, image root, output folder)."""
    tcfg = copy.deepcopy(cfg.train)
    tcfg.model = tcfg.model or base_model
    tcfg.pairs = tcfg.pairs or str(run.pairs)
    tcfg.image_root = tcfg.image_root or str(data_root(cfg))
    tcfg.output_dir = tcfg.output_dir or str(run.dpo)
    return tcfg


def base_model(cfg, progress: bool = True) -> str:
    """The model DPO starts from: train.model, else the VLM (the embedded one is built on first use)."""
    from ..embedded import ensure_vlm

    return cfg.train.model or ensure_vlm(cfg, progress)["model"]


def run(cfg, run: RunFolder, *, progress: bool = True) -> dict:
    """`vlm-dpo train`: DPO on the pairs (default <run>/pairs/pairs.parquet); returns the training summary."""
    return train_dpo(train_config(cfg, run, base_model(cfg, progress)), progress=progress)
