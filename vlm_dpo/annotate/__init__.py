"""`vlm-dpo annotate`: a local web page where people judge caption pairs; the judgements become human pairs.

Why FastAPI + uvicorn and one plain HTML page: they are what ML users already run (model demos, inference
servers), pydantic validates every request so a malformed one gets a 4xx JSON answer instead of a crash, and
FastAPI's TestClient tests the API without a socket. The page is one HTML string with inline CSS and
JavaScript (page.py): no build step, no node, no CDN, nothing fetched at run time, so it works on an offline
machine and there is no third-party script to trust.

Pieces:
    items.py      candidate pairs from a pair file or a captions JSONL (+ detections for boxes); safe image paths
    store.py      SQLite (WAL, synchronous=FULL): items, who sees what (overlap), judgements; `export_judgements`
    agreement.py  Cohen's kappa between annotators on the items both judged
    app.py        the FastAPI app (token, host and origin checks, image serving by item id) and `serve`
    page.py       the page

Library use:
    from vlm_dpo.annotate import AnnotateConfig, run_annotate, export_judgements, agreement
    run_annotate(cfg)                      # cfg: the full Config; serves until Ctrl-C (annotate.action=serve)
    export_judgements("judgements.sqlite", "judgements.jsonl")   # -> pairs.judgements for `vlm-dpo pairs`
    agreement("judgements.sqlite")         # {"kappa": ..., "pairs": [...]} (also GET /api/agreement)

Standalone, with a config of AnnotateConfig's keys only: `python -m vlm_dpo.annotate [CONFIG.yaml] [key=value ...]`.

This module stays light (no FastAPI import): the main config imports `AnnotateConfig` from here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

ACTIONS = ("serve", "export", "agreement")


@dataclass
class AnnotateConfig:
    pairs: str = ""  # pair file (parquet/jsonl, as `vlm-dpo pairs` writes) whose chosen/rejected are the candidates
    captions: str = ""  # captions JSONL (describe); two distinct captions of an image make a candidate pair
    detections: str = ""  # detections JSONL: boxes drawn over the image (toggleable)
    image_root: str = ""  # root of the relative image paths; images outside it are never served
    db: str = ""  # SQLite file of the judgements (default <out>/annotate/judgements.sqlite)
    host: str = "127.0.0.1"  # loopback only by default; another host exposes the page (set a token)
    port: int = 8765
    token: str = ""  # when set, every request needs it (header X-Annotate-Token, Bearer, or ?token=)
    overlap: float = 0.2  # share of items every annotator sees (for agreement); the rest are split between them
    annotators: list[str] = field(default_factory=list)  # allowed annotator ids; empty = any id
    seed: int = 0  # item order, shared/split choice, and the per item+annotator A/B order
    limit: int = 0  # at most this many candidate items from the sources (0 = all)
    per_image: int = 1  # candidate pairs drawn per captions record (distinct caption pairs)
    action: str = "serve"  # serve | export (write the JSONL and exit) | agreement (print kappa and exit)
    export: str = ""  # judgement JSONL written by `export` and when the server stops (default next to db)
    # The box-score slider's first position. Below 0 = the run's ground.min_score (so the boxes first shown are the
    # detections the prompt's context listed), or 0.5 when run standalone. `?min_score=` in a link overrides it.
    min_score: float = -1.0


def resolve(cfg) -> AnnotateConfig:
    """`cfg.annotate` with the run folder's defaults filled in (cfg is the full Config)."""
    from ..run import RunFolder

    acfg = copy.deepcopy(cfg.annotate)
    run = RunFolder(cfg.out)
    acfg.db = acfg.db or str(run.judgements_db)
    acfg.export = acfg.export or str(Path(acfg.db).with_suffix(".jsonl"))
    if acfg.min_score < 0:
        acfg.min_score = getattr(getattr(cfg, "ground", None), "min_score", 0.5)
    if acfg.action != "serve":
        return acfg
    split = getattr(getattr(cfg, "data", None), "split", "train")
    if not acfg.pairs and not acfg.captions:
        if run.captions(split).exists():
            acfg.captions = str(run.captions(split))
        elif run.pairs.exists():
            acfg.pairs = str(run.pairs)
    if not acfg.detections and run.detections(split).exists():
        acfg.detections = str(run.detections(split))
    if not acfg.image_root:
        pairs_cfg = getattr(cfg, "pairs", None)
        if getattr(pairs_cfg, "image_root", ""):
            acfg.image_root = pairs_cfg.image_root
        else:
            from ..images import data_root  # the user's folder, or the embedded world (built if missing)

            acfg.image_root = str(data_root(cfg))
    return acfg


def run_annotate(cfg) -> dict:
    """`vlm-dpo annotate`: serve the page (until Ctrl-C), or export / report agreement (annotate.action)."""
    from .app import run

    return run(resolve(cfg))


def export_judgements(db, path):
    """Latest judgement per (item, annotator) -> JSONL in the judgement format of pairs/io.py; returns the path."""
    from .store import export_judgements as _export

    return _export(db, path)


def agreement(db) -> dict:
    """Cohen's kappa per annotator pair on the items both judged, and their item-weighted mean."""
    from .agreement import agreement as _agreement

    return _agreement(db)


def cohen_kappa(a, b):
    from .agreement import cohen_kappa as _kappa

    return _kappa(a, b)


__all__ = ["ACTIONS", "AnnotateConfig", "agreement", "cohen_kappa", "export_judgements", "resolve", "run_annotate"]
