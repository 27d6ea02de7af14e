"""DPO variants the pipeline trains beside the main run (`variants: [...]`), each evaluated as dpo_<name>:

    no_context   without the context-robustness pairs (only mined + synthetic + human)
    mdpo         the same pairs plus mDPO's image-conditional term (box-masked corruption) and its anchor
    captions_only  the caption pairs alone (no VQA pairs): what a mixed caption + VQA run must not be worse than
Each trains into <run>/variants/<name>/ (its pairs.parquet and dpo/).
"""

from __future__ import annotations

import copy

from .keys import key as stage_key
from .run import RunFolder


def _variant_no_context(pairs: list[dict], tcfg):
    """DPO without the context-robustness pairs (only mined + synthetic + human)."""
    return [p for p in pairs if p["source"] != "context"], tcfg


def _variant_mdpo(pairs: list[dict], tcfg):
    """The same pairs plus mDPO's image-conditional term (box-masked corruption) and its anchor."""
    tcfg.loss.weights = dict(tcfg.loss.weights) | {"mdpo_image": 1.0, "mdpo_anchor": 1.0}
    tcfg.loss.mixture = ""
    return pairs, tcfg


def _variant_captions_only(pairs: list[dict], tcfg):
    """DPO on the caption pairs alone, the same settings: the baseline a mixed caption + VQA run is held to."""
    return [p for p in pairs if (p.get("task") or "caption") == "caption"], tcfg


VARIANTS = {"no_context": _variant_no_context, "mdpo": _variant_mdpo, "captions_only": _variant_captions_only}


def train_variants(cfg, run: RunFolder, tcfg, key: str, progress: bool) -> dict[str, str]:
    """Train each configured variant (a finished one with the same upstream `key` is kept); returns
    dpo_<name> -> model path."""
    from .pairs.dataset import load_pairs, save_pairs
    from .train.recipe import train_dpo

    models = {}
    for name in cfg.variants:
        if name not in VARIANTS:
            raise ValueError(f"unknown pipeline variant {name!r}; known: {sorted(VARIANTS)}")
        vdir = run.variant(name)
        stage = run.stage(vdir, stage_key(key, name)).reset_if_stale()
        if not stage.done:
            pairs, vcfg = VARIANTS[name](load_pairs(tcfg.pairs), copy.deepcopy(tcfg))
            vdir.mkdir(parents=True, exist_ok=True)
            vcfg.pairs = str(save_pairs(pairs, vdir / "pairs.parquet"))
            vcfg.output_dir = str(vdir / "dpo")
            train_dpo(vcfg, progress=progress)
            stage.finish()
        models[f"dpo_{name}"] = str(vdir / "dpo" / "model")
    return models
