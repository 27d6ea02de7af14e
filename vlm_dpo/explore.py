"""Helpers for exploring pairs and runs in Jupyter (the notebooks hold no logic of their own).

`run` is a run folder: a vlm_dpo.run.RunFolder or its path.
    open_run(path) / sft_model(run)       the RunFolder of a path; the base (SFT) model the run started from
    image_root_of(run)                    the root the run's image paths are relative to
    pairs_frame(run)                      pairs as a pandas DataFrame with judge scores flattened
    show_pair(row, run)                   the image with boxes, grounding, chosen vs rejected side by side
    pair_stats_figure(df)                 counts per source/kind, margins, length differences
    training_frame(run) / curves_figure   DPO metrics.jsonl as a DataFrame and plots
    token_logratios(policy, ref, ...)     per-token log pi - log ref of a caption
    logratio_html(tokens, values)         those values as coloured text (which words did DPO move?)
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import torch

from .records import read_jsonl
from .run import RunFolder


def open_run(run: str | Path | RunFolder) -> RunFolder:
    return run if isinstance(run, RunFolder) else RunFolder(run)


def sft_model(run: str | Path | RunFolder) -> Path | None:
    """The base model a finished pipeline run trained from (its metrics.json), None before it finished."""
    run = open_run(run)
    if not run.metrics.exists():
        return None
    return Path(json.loads(run.metrics.read_text()).get("vlm", {}).get("model", ""))


def image_root_of(run: str | Path | RunFolder) -> Path:
    """The image root a run's pairs are relative to (from its resolved config)."""
    from .config import load_config
    from .images import data_root

    return data_root(load_config(open_run(run).config))


def pairs_frame(run: str | Path | RunFolder):
    import pandas as pd

    rows = []
    for p in read_jsonl(open_run(run).pairs_jsonl):
        sc = p.get("scores") or {}
        rows.append({
            "pair_id": p["pair_id"], "image_id": p["image_id"], "image": p["image"], "source": p["source"],
            "kind": p["kind"], "split": p["split"], "margin": p.get("margin"), "prompt": p["prompt"],
            "grounding": p.get("grounding"), "chosen": p["chosen"], "rejected": p["rejected"],
            "chosen_score": (sc.get("chosen") or {}).get("score"),
            "rejected_score": (sc.get("rejected") or {}).get("score"),
            "rejected_hallucinated": ", ".join((sc.get("rejected") or {}).get("hallucinated") or []),
            "len_diff_words": len(p["chosen"].split()) - len(p["rejected"].split()),
            "boxes": p.get("boxes"),
        })
    return pd.DataFrame(rows)


def filter_pairs(df, source: str | None = None, min_margin: float | None = None, label: str | None = None):
    """Rows of one source, with at least a margin, whose chosen or rejected caption mentions a label."""
    out = df
    if source:
        out = out[out["source"] == source]
    if min_margin is not None:
        out = out[out["margin"].fillna(0) >= min_margin]
    if label:
        from .judge import Vocabulary, parse_caption

        vocab = Vocabulary.world()

        def mentions(text):
            return label in {m.label for m in parse_caption(text, vocab).mentions}

        out = out[out["chosen"].map(mentions) | out["rejected"].map(mentions)]
    return out


def show_pair(row, root: str | Path):
    """A matplotlib figure: the image with its boxes, and the pair's text beside it."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    fig, (ax, tx) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 1.6]})
    with Image.open(Path(root) / row["image"]) as im:
        ax.imshow(im.convert("RGB"))
    for b in row["boxes"] or []:
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, color="white", lw=1.5))
    ax.axis("off")
    tx.axis("off")
    text = (f"{row['source']} / {row['kind']}   margin {row['margin']}\n\n{row['prompt']}\n\n"
            f"CHOSEN ({row['chosen_score']}):\n{row['chosen']}\n\nREJECTED ({row['rejected_score']}):\n{row['rejected']}")
    tx.text(0, 1, text, va="top", wrap=True, fontsize=9, family="monospace")
    fig.tight_layout()
    return fig


def pair_stats_figure(df):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    df.groupby(["source", "kind"]).size().plot.barh(ax=axes[0], title="pairs per source / kind")
    df["margin"].dropna().plot.hist(ax=axes[1], bins=20, title="judge margin")
    df["len_diff_words"].plot.hist(ax=axes[2], bins=20, title="words: chosen - rejected")
    fig.tight_layout()
    return fig


def training_frame(run: str | Path | RunFolder):
    import pandas as pd

    rows = list(read_jsonl(open_run(run).dpo_metrics))
    return pd.DataFrame([r for r in rows if "loss" in r]), pd.DataFrame([r for r in rows if "eval/loss" in r])


def metrics_table(run: str | Path | RunFolder):
    import pandas as pd

    m = json.loads(open_run(run).metrics.read_text())["models"]
    keys = ["chair_i", "chair_s", "recall", "pope_f1", "mean_words", "count_accuracy", "pref_accuracy"]
    return pd.DataFrame({name: {k: mm.get(k) for k in keys} for name, mm in m.items()})


def token_logratios(policy_path: str, ref_path: str, image_path: str, prompt: str, caption: str):
    """(tokens, log pi(token) - log ref(token)) over the caption's tokens."""
    from .images import open_image
    from .models import load_model_and_processor
    from .train.collate import encode
    from .train.logps import completion_logps

    img = open_image(image_path)
    values, tokens = [], None
    for path in (policy_path, ref_path):
        model, processor = load_model_and_processor(path)
        model.eval()
        enc = encode(processor, [img], [prompt], [caption], model_type=model.config.model_type)
        with torch.no_grad():
            res = completion_logps(model, enc.inputs, enc.labels)
        values.append(res.per_token[0])
        ids = enc.labels[0][enc.labels[0] != -100].tolist()
        tokens = [processor.tokenizer.decode([i]) for i in ids]
    return tokens, (values[0] - values[1]).tolist()


def logratio_html(tokens: list[str], values: list[float], scale: float = 2.0) -> str:
    """Tokens coloured green (DPO raised them) to red (lowered), with the value on hover."""
    spans = []
    for t, v in zip(tokens, values):
        a = min(1.0, abs(v) / scale)
        colour = f"rgba(40,170,60,{a:.2f})" if v > 0 else f"rgba(220,40,40,{a:.2f})"
        spans.append(f'<span title="{v:+.3f}" style="background:{colour};padding:1px">{html.escape(t)}</span>')
    return "".join(spans)
