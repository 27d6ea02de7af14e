"""Helpers for exploring pairs and runs in Jupyter (the notebooks hold no logic of their own).

`run` is a run folder: a vlm_dpo.run.RunFolder or its path.
    open_run(path) / sft_model(run)       the RunFolder of a path; the base (SFT) model the run started from
    image_root_of(run)                    the root the run's image paths are relative to
    pairs_frame(run)                      pairs as a pandas DataFrame with judge scores flattened
    show_pair(row, root, boxes=...)       the image with labelled boxes (ground truth green, detector orange, only
                                          those >= the context threshold), chosen vs rejected, the judge's flags
    pair_boxes(run)                       what show_pair draws: truth and detections per image, the threshold
    pair_stats_figure(df)                 counts per source/kind, margins, length differences
    training_frame(run) / curves_figure   DPO metrics.jsonl as a DataFrame and plots
    token_logratios(policy, ref, ...)     per-token log pi - log ref of a caption (models loaded once, cached)
    logratio_view(run, rows)              image + prompt + coloured chosen/rejected tokens, one progress bar
    logratio_html(tokens, values)         those values as coloured text (which words did DPO move?)
    vqa_frame(run) / vqa_table(run)       the robot's questions: each model's answer and verdict per question;
                                          accuracy per family with intervals, false premise, yes-ratio, POPE
    show_answers(row, root, boxes=...)    the image with boxes, the question and each model's judged answer
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import warnings
from pathlib import Path

import torch

from .ground import GroundingConfig, context_detections
from .records import read_jsonl
from .run import RunFolder

# In Jupyter without ipywidgets, tqdm.auto warns (TqdmWarning) when first imported and falls back to the plain
# bar: import it here, quietly, so the stages' bars are the plain ones and the notebooks show no warning.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import tqdm.auto  # noqa: F401


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


GT_COLOUR, DET_COLOUR = "#28c846", "#ff9600"


def pair_boxes(run: str | Path | RunFolder) -> dict:
    """{"truth": image_id -> objects (the world's annotations, when the images are the world's),
    "detections": image_id -> detections (every split the run detected), "min_score" and "fallback_score": the
    context's thresholds (ground.context_detections: the boxes drawn are those the context states)}."""
    from .config import load_config

    run = open_run(run)
    cfg = load_config(run.config)
    dets = {}
    for path in sorted(run.detections_dir.glob("*.jsonl")) if run.detections_dir.is_dir() else []:
        dets |= {r["image_id"]: r.get("detections") or [] for r in read_jsonl(path) if "image_id" in r}
    truth = {}
    if not cfg.data.images:
        from .world.export import load_annotations

        truth = {s["image_id"]: s["objects"] for s in load_annotations(image_root_of(run))}
    return {"truth": truth, "detections": dets, "min_score": cfg.ground.min_score,
            "fallback_score": cfg.ground.fallback_score}


def _draw_image_and_boxes(ax, row, root: str | Path, boxes: dict) -> None:
    """The row's image on `ax` with ground truth (green) and the detections the context states (orange, dashed),
    labelled, and their legend."""
    from matplotlib.patches import Patch, Rectangle
    from PIL import Image

    with Image.open(Path(root) / row["image"]) as im:
        ax.imshow(im.convert("RGB"))
    ground = GroundingConfig(min_score=boxes.get("min_score", 0.5), fallback_score=boxes.get("fallback_score"))
    dets = context_detections((boxes.get("detections") or {}).get(row["image_id"], []), ground)
    if not dets and not boxes and row.get("boxes") is not None and len(row["boxes"]):
        dets = [{"label": "", "score": None, "box": b} for b in row["boxes"]]
    truth = (boxes.get("truth") or {}).get(row["image_id"], [])
    for o in truth:
        b = o["box"]
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, color=GT_COLOUR, lw=1.5))
        ax.text(b[0] + 1, b[1] + 1, "GT " + " ".join(x for x in (o.get("color"), o["label"]) if x), fontsize=7,
                va="top", color="black", bbox={"facecolor": GT_COLOUR, "pad": 1, "lw": 0})
    for d in dets:
        b = d["box"]
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, color=DET_COLOUR, lw=1.5, ls="--"))
        ax.text(b[0] + 1, b[3] - 1, f"det {d['label']} {d['score']:.2f}" if d.get("score") is not None else "det",
                fontsize=7, va="bottom", color="black", bbox={"facecolor": DET_COLOUR, "pad": 1, "lw": 0})
    guess = "" if ground.fallback_score is None else f", or the best >= {ground.fallback_score:g} if none"
    ax.legend(handles=[Patch(edgecolor=GT_COLOUR, fill=False, label="ground truth"),
                       Patch(edgecolor=DET_COLOUR, fill=False, ls="--",
                             label=f"detector (score >= {ground.min_score:g}{guess})")],
              loc="upper center", bbox_to_anchor=(0.5, -0.01), fontsize=7, ncol=2, frameon=False)
    ax.axis("off")


def show_pair(row, root: str | Path, boxes: dict | None = None):
    """A matplotlib figure: the image with labelled boxes (ground truth in green "GT colour label", the
    detector's in orange "det label score", only those at or above the context's threshold), and the pair's
    text beside it with the objects the judge flagged in the rejected caption."""
    import matplotlib.pyplot as plt

    fig, (ax, tx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.5]})
    _draw_image_and_boxes(ax, row, root, boxes or {})
    tx.axis("off")
    flagged = row.get("rejected_hallucinated") or ""
    tx.text(0, 1, f"{row['source']} / {row['kind']}   margin {row['margin']}\n\n{row['prompt']}", va="top",
            wrap=True, fontsize=9, family="monospace")
    tx.text(0, 0.62, f"CHOSEN ({row['chosen_score']}):\n{row['chosen']}", va="top", wrap=True, fontsize=9,
            family="monospace", color="#1a7f37")
    tx.text(0, 0.36, f"REJECTED ({row['rejected_score']}):\n{row['rejected']}", va="top", wrap=True, fontsize=9,
            family="monospace", color="#cf222e")
    tx.text(0, 0.08, f"judge flagged in rejected: {flagged} (not in the image)" if flagged else
            "judge flagged nothing in rejected (hallucination-free; other faults: count, vague, length)",
            va="top", fontsize=9, family="monospace", weight="bold", color="#cf222e" if flagged else "#555")
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


def metrics_table(run: str | Path | RunFolder, digits: int = 3):
    """Metrics per model as "value [lo, hi]" strings (95% bootstrap intervals over images), rounded."""
    import pandas as pd

    m = json.loads(open_run(run).metrics.read_text())["models"]
    keys = ["chair_i", "chair_s", "recall", "pope_f1", "mean_words", "count_accuracy", "pref_accuracy"]

    def cell(mm, k):
        v = mm.get(k)
        if not isinstance(v, (int, float)):
            return "–"
        ci = (mm.get("ci") or {}).get(k)
        return f"{v:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")

    return pd.DataFrame({name: {k: cell(mm, k) for k in keys if k in mm} for name, mm in m.items()})


def vqa_frame(run: str | Path | RunFolder, models: list[str] | None = None):
    """The robot's questions of the run's evaluation (eval/<model>.vqa.jsonl, eval/vqa.py), one row per question:
    image_id, image (file under the image root), family, question, expected, and per model answer_<m> and
    verdict_<m> side by side. models: default every model with answers, in metrics.json's order."""
    import pandas as pd

    from .config import load_config

    run = open_run(run)
    split = load_config(run.config).eval.split
    files = {r["image_id"]: r.get("file") for r in read_jsonl(run.detections(split)) if "image_id" in r}
    if models is None:
        order = list(json.loads(run.metrics.read_text())["models"]) if run.metrics.exists() else []
        found = {p.name[: -len(".vqa.jsonl")] for p in run.eval.glob("*.vqa.jsonl")}
        models = [m for m in order if m in found] + sorted(found - set(order))
    rows: dict[tuple[str, str], dict] = {}
    for m in models:
        for r in read_jsonl(run.eval / f"{m}.vqa.jsonl"):
            row = rows.setdefault((r["image_id"], r["family"]), {
                "image_id": r["image_id"], "image": files.get(r["image_id"]), "family": r["family"],
                "question": r["question"], "expected": r["expected"]})
            row[f"answer_{m}"], row[f"verdict_{m}"] = r["answer"], r["verdict"]
    return pd.DataFrame(list(rows.values()))


def vqa_table(run: str | Path | RunFolder, digits: int = 2):
    """Per model: accuracy per question family as "value [lo, hi]" (95% bootstrap over images), false-premise
    rejection and its control (true-premise refusal, balanced accuracy), yes-ratio, and POPE F1 (adversarial)
    with and without the grounding context."""
    import pandas as pd

    m = json.loads(open_run(run).metrics.read_text())["models"]

    def column(v):
        col = {f"accuracy {f}": f"{a:.{digits}f}" + (f" [{c[0]:.{digits}f}, {c[1]:.{digits}f}]" if (
            c := (v.get("ci") or {}).get(f)) else "") for f, a in v["accuracy"].items() if a is not None}
        for k in ("false_premise_rejection", "true_premise_refusal", "premise_balanced_accuracy", "yes_ratio"):
            col[k] = "–" if v.get(k) is None else f"{v[k]:.{digits}f}"
        for ctx, f1 in (v.get("pope_f1_by_context") or {"grounded": v.get("pope_f1")}).items():
            col[f"pope_f1 ({ctx})"] = "–" if f1 is None else f"{f1:.{digits}f}"
        return col

    return pd.DataFrame({name: column(mm["vqa"]) for name, mm in m.items() if mm.get("vqa")})


VERDICT_COLOUR = {"correct": "#1a7f37"}  # every other verdict (wrong, refused_wrongly, ...) in red


def show_answers(row, root: str | Path, boxes: dict | None = None, models: list[str] | None = None):
    """A matplotlib figure: the image with labelled boxes (as show_pair), and beside it the question, the answer
    the truth warrants, and each model's answer with its verdict (green when correct)."""
    import matplotlib.pyplot as plt

    models = models or [c[len("answer_"):] for c in row.index if c.startswith("answer_")]
    fig, (ax, tx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.5]})
    _draw_image_and_boxes(ax, row, root, boxes or {})
    tx.axis("off")
    tx.text(0, 1, f"{row['family']}\n\n{row['question']}\nexpected: {row['expected']}", va="top", wrap=True,
            fontsize=9, family="monospace")
    for i, m in enumerate(models):
        verdict = row[f"verdict_{m}"]
        tx.text(0, 0.6 - 0.2 * i, f"{m.upper()} ({verdict}):\n{row[f'answer_{m}']}", va="top", wrap=True,
                fontsize=9, family="monospace", color=VERDICT_COLOUR.get(verdict, "#cf222e"))
    fig.tight_layout()
    return fig


def progress_bar(*args, **kwargs):
    """tqdm for notebooks without the TqdmWarning: the widget bar when ipywidgets is installed, else plain tqdm."""
    from importlib.util import find_spec

    if find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tqdm(*args, **kwargs)


@functools.lru_cache(maxsize=4)
def _model(path: str):
    """A model and processor, loaded once per path (quietly) and kept for the next caption."""
    from .cli import quiet_libraries
    from .models import load_model_and_processor

    quiet_libraries()
    model, processor = load_model_and_processor(path)
    model.eval()
    return model, processor


def token_logratios(policy_path: str, ref_path: str, image_path: str, prompt: str, caption: str):
    """(tokens, log pi(token) - log ref(token)) over the caption's tokens."""
    from .images import open_image
    from .train.collate import encode
    from .train.logps import completion_logps

    img = open_image(image_path)
    values, tokens = [], None
    for path in (policy_path, ref_path):
        model, processor = _model(str(path))
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


def _image_tag(path: str | Path, size: int = 160) -> str:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = max(1, size // max(im.size))
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return (f'<img alt="pair image" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" '
            f'style="width:{size}px;image-rendering:pixelated;float:left;margin:0 12px 6px 0">')


def logratio_view(run: str | Path | RunFolder, rows, sides=("chosen", "rejected")) -> str:
    """HTML per pair: the image, the prompt, and each side's tokens coloured by log pi - log ref (the DPO policy
    against the SFT model it started from). Each model is loaded once; one progress bar over all captions."""
    run = open_run(run)
    root = image_root_of(run)
    policy, ref = str(run.dpo_model), str(sft_model(run))
    rows = list(rows.iterrows()) if hasattr(rows, "iterrows") else list(enumerate(rows))
    parts = []
    bar = progress_bar(total=len(rows) * len(sides), desc="per-token log-ratios")
    for _, row in rows:
        lines = []
        for side in sides:
            toks, vals = token_logratios(policy, ref, str(root / row["image"]), row["prompt"], row[side])
            lines.append(f"<div><b>{side}</b> ({sum(vals):+.2f} nats): {logratio_html(toks, vals)}</div>")
            bar.update(1)
        parts.append(f'<div class="logratio" style="overflow:hidden;margin:8px 0;border-top:1px solid #ddd;'
                     f'padding-top:6px">{_image_tag(root / row["image"])}<div><b>prompt</b>: '
                     f'<code>{html.escape(row["prompt"])}</code></div>{"".join(lines)}</div>')
    bar.close()
    return "".join(parts)
