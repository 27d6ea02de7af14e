"""The report a person reads: one static HTML file plus PNGs, no server needed.

    <out>/report/index.html
    <out>/report/curves.png          DPO loss, reward accuracy, margins (train and eval)
    <out>/report/gallery/<id>.png    held-out images with ground-truth boxes
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .judge import Vocabulary, parse_caption, resolve_vocabulary
from .records import read_jsonl, write_text_atomic
from .run import RunFolder


def _fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def plot_curves(metrics_jsonl: Path, out_png: Path) -> Path | None:
    if not metrics_jsonl.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(read_jsonl(metrics_jsonl))
    train = [r for r in rows if "loss" in r]
    ev = [r for r in rows if "eval/loss" in r]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key, title in zip(axes, ("loss", "rewards/accuracies", "rewards/margins"),
                              ("loss", "reward accuracy", "reward margin")):
        ax.plot([r["step"] for r in train], [r[key] for r in train], label="train", lw=1)
        if ev:
            ax.plot([r["step"] for r in ev], [r["eval/" + key] for r in ev], "o-", label="held-out pairs")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def draw_boxes(image_path: str, objects: list[dict], out_png: Path, scale: int = 2) -> Path:
    from PIL import Image, ImageDraw

    with Image.open(image_path) as im:
        im = im.convert("RGB").resize((im.width * scale, im.height * scale))
    d = ImageDraw.Draw(im)
    for o in objects:
        b = [v * scale for v in o["box"]]
        d.rectangle(b, outline=(255, 255, 255), width=2)
        d.text((b[0] + 3, b[1] + 2), o["label"], fill=(255, 255, 255))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    im.save(out_png)
    return out_png


def highlight(caption: str, truth_labels: set[str], vocab: Vocabulary) -> str:
    """HTML of a caption with hallucinated object words marked <mark class=bad> and true ones <mark class=ok>."""
    parsed = parse_caption(caption, vocab)
    out, pos = [], 0
    for m in sorted(parsed.mentions, key=lambda m: m.span[0]):
        s, e = m.span
        out.append(html.escape(caption[pos:s]))
        cls = "neg" if m.negated else ("ok" if m.label in truth_labels else "bad")
        out.append(f'<mark class="{cls}">{html.escape(caption[s:e])}</mark>')
        pos = e
    out.append(html.escape(caption[pos:]))
    return "".join(out)


CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 9px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.ci{color:#777;font-size:85%}
mark.bad{background:#f8b4b4}mark.ok{background:#c9f0c9}mark.neg{background:#ddd}
.card{display:flex;gap:14px;border-top:1px solid #ddd;padding:10px 0}.card img{width:192px;height:192px}
.caps div{margin:3px 0}.tag{display:inline-block;width:4.5em;color:#555}code{background:#f4f4f4}
"""


def write_report(out: Path, metrics: dict, *, scenes: list[dict], captions: dict[str, dict[str, str]],
                 items: list[dict], pair_stats: dict | None, curves: Path | None, n_gallery: int = 12,
                 vocab: Vocabulary | None = None) -> Path:
    """Write <out>/report/index.html. captions: model name -> image_id -> greedy caption."""
    vocab = vocab or Vocabulary.world()
    rep = RunFolder(out).report
    rep.mkdir(parents=True, exist_ok=True)
    models = metrics["models"]
    names = list(models)
    keys = [("chair_i", "CHAIR_i ↓"), ("chair_s", "CHAIR_s ↓"), ("recall", "recall ↑"), ("pope_f1", "POPE F1 (adv.) ↑"),
            ("mean_words", "mean words"), ("count_accuracy", "count acc. ↑"), ("vague_rate", "vague / caption ↓"),
            ("pref_accuracy", "pref. acc. (held-out) ↑"), ("clip_score", "CLIPScore ↑"), ("precision_ungrounded", "precision, no grounding ↑"),
            ("echo_rate", "echo rate, noisy context ↓"), ("recovery_rate", "recovery rate, noisy context ↑"),
            ("natural_echo_rate", "echo rate, detector context ↓"),
            ("natural_recovery_rate", "recovery rate, detector context ↑")]
    rows = []
    for k, title in keys:
        if not any(k in models[n] for n in names):
            continue
        cells = []
        for n in names:
            v = models[n].get(k)
            ci = models[n].get("ci", {}).get(k) or models[n].get("robustness_ci", {}).get(k)
            cells.append(f"<td>{_fmt(v)}" + (f' <span class="ci">[{_fmt(ci[0])}, {_fmt(ci[1])}]</span>' if ci else "")
                         + "</td>")
        rows.append(f"<tr><td>{title}</td>{''.join(cells)}</tr>")
    table = f"<table><tr><th>metric (greedy, held-out)</th>{''.join(f'<th>{n}</th>' for n in names)}</tr>{''.join(rows)}</table>"

    by_id = {s["image_id"]: s for s in scenes}
    item_by_id = {it["image_id"]: it for it in items}
    cards = []
    for it in items[:n_gallery]:
        sc = by_id[it["image_id"]]
        png = draw_boxes(it["path"], sc["objects"], rep / "gallery" / f"{it['image_id']}.png")
        truth = {o["label"] for o in sc["objects"]}
        caps = "".join(f'<div><span class="tag">{html.escape(n)}</span> {highlight(captions[n].get(it["image_id"], ""), truth, vocab)}</div>'
                       for n in names if n in captions)
        cards.append(f'<div class="card"><img src="gallery/{png.name}" alt="{html.escape(it["image_id"])}">'
                     f'<div class="caps"><div><b>{html.escape(it["image_id"])}</b> — truth: '
                     f'{html.escape(", ".join(sorted(o["label"] for o in sc["objects"])))}</div>'
                     f'<div><code>{html.escape(item_by_id[it["image_id"]].get("grounding") or "")}</code></div>{caps}</div></div>')
    stats_html = ""
    if pair_stats:
        stats_html = "<h2>Preference pairs</h2><pre>" + html.escape(json.dumps(
            {k: v for k, v in pair_stats.items() if k not in ("key",)}, indent=1, default=str)) + "</pre>"
    curves_html = f'<h2>DPO training</h2><img src="{curves.name}" alt="training curves" style="width:100%">' if curves else ""
    extra = {k: v for k, v in metrics.items() if k not in ("models",)}
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vlm_dpo report</title><style>{CSS}</style></head>
<body><h1>vlm_dpo: before and after DPO</h1>
<p>Held-out scenes, greedy captions from the pipeline's grounded prompt, the same max_new_tokens for every model.
95% bootstrap intervals over images in brackets. <b>sft</b>: before DPO; <b>dpo</b>: after; <b>rft</b>: SFT on the
chosen captions (rejection-sampling fine-tuning baseline).</p>
{table}
<details><summary>run details</summary><pre>{html.escape(json.dumps(extra, indent=1, default=str))}</pre></details>
{curves_html}
<h2>Gallery (held-out)</h2><p><mark class="ok">true object</mark> <mark class="bad">hallucinated</mark> <mark class="neg">negated</mark></p>
{''.join(cards)}
{stats_html}
</body></html>"""
    return write_text_atomic(rep / "index.html", page)


def run(cfg, run: RunFolder, summary: dict, *, items: list[dict], scenes: list[dict], pair_stats: dict | None = None,
        curves_from: Path | None = None) -> Path:
    """The report stage: <run>/report/index.html from the metrics `summary` and the models' greedy captions in
    <run>/eval/; `curves_from` is a DPO metrics.jsonl to plot (curves.png)."""
    curves = plot_curves(curves_from, run.curves) if curves_from is not None else None
    captions = {name: {r["image_id"]: r["greedy"] for r in read_jsonl(run.eval_captions(name))}
                for name in summary["models"]}
    return write_report(run.root, summary, scenes=scenes, captions=captions, items=items, pair_stats=pair_stats,
                        curves=curves, vocab=resolve_vocabulary(cfg.eval.vocabulary))
