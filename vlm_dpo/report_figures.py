"""The report's figures: training curves, the main metrics per model, pair statistics, and images with labelled
ground-truth and detector boxes (PNG files beside index.html)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .records import read_jsonl

GT_COLOUR, DET_COLOUR = (40, 200, 70), (255, 150, 0)
# (key, title) of the charted metrics (all within 0..1)
CHARTED = [("chair_i", "CHAIR_i ↓"), ("chair_s", "CHAIR_s ↓"), ("recall", "recall ↑"), ("pope_f1", "POPE F1 ↑")]


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_runs(sources: Path | list[tuple[str, Path]]) -> list[tuple[str, list[dict]]]:
    """(label, logged rows) of each DPO metrics.jsonl that exists; a bare path is one unlabelled run."""
    if isinstance(sources, (str, Path)):
        sources = [("", Path(sources))]
    return [(label, list(read_jsonl(path))) for label, path in sources if Path(path).exists()]


def plot_curves(sources: Path | list[tuple[str, Path]], out_png: Path) -> Path | None:
    """Loss, reward accuracy and margin over the steps of a DPO metrics.jsonl, or of several (label, metrics.jsonl)
    (the rounds of a run), each round in its own colour; None when none of the files exists."""
    runs = curve_runs(sources)
    if not runs:
        return None
    plt = _matplotlib()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key, title in zip(axes, ("loss", "rewards/accuracies", "rewards/margins"),
                              ("loss", "reward accuracy", "reward margin")):
        for i, (label, rows) in enumerate(runs):
            name = f"{label}: " if label else ""
            train = [r for r in rows if key in r]
            ev = [r for r in rows if "eval/" + key in r]
            colour = f"C{i}"
            ax.plot([r["step"] for r in train], [r[key] for r in train], color=colour, label=f"{name}train", lw=1,
                    alpha=0.8)
            if ev:
                ax.plot([r["step"] for r in ev], [r["eval/" + key] for r in ev], "o--", color=colour,
                        label=f"{name}held-out pairs")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def plot_metrics(models: dict, out_png: Path) -> Path | None:
    """Grouped bars: the main metrics (0..1) per model with their 95% intervals."""
    keys = [(k, t) for k, t in CHARTED if any(k in m for m in models.values())]
    if not keys or not models:
        return None
    plt = _matplotlib()
    names = list(models)
    fig, ax = plt.subplots(figsize=(1.6 + 1.9 * len(keys), 3.3))
    width = 0.8 / len(names)
    for j, n in enumerate(names):
        vals = [models[n].get(k) or 0.0 for k, _ in keys]
        cis = [models[n].get("ci", {}).get(k) for k, _ in keys]
        err = [[max(0.0, v - c[0]) if c else 0 for v, c in zip(vals, cis)],
               [max(0.0, c[1] - v) if c else 0 for v, c in zip(vals, cis)]]
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(keys))]
        bars = ax.bar(xs, vals, width, yerr=err, capsize=3, label=n)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, 0.01), ha="center", va="bottom", fontsize=7,
                        rotation=90, color="white")
    ax.set_xticks(range(len(keys)), [t for _, t in keys])
    ax.set_ylim(0, 1)
    ax.set_title("main metrics per model (95% intervals over images)")
    ax.legend(ncol=min(len(names), 5), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_boxes(image_path: str, objects: list[dict], out_png: Path, scale: int = 3,
               detections: list[dict] | None = None) -> Path:
    """The image enlarged, ground-truth boxes in green labelled "GT <colour> <label>" (top left, inside) and
    detector boxes in orange labelled "det <label> <score>" (bottom left, inside)."""
    from PIL import Image, ImageDraw

    with Image.open(image_path) as im:
        im = im.convert("RGB").resize((im.width * scale, im.height * scale), Image.NEAREST)
    d = ImageDraw.Draw(im)
    font = _font(11)

    def label(xy, text, colour, below=False):
        x, y = xy
        l, t, r, b = d.textbbox((0, 0), text, font=font)
        w, h = r - l + 4, b - t + 4
        x = min(max(0, x), im.width - w)
        y = min(max(0, y - h if below else y), im.height - h)
        d.rectangle([x, y, x + w, y + h], fill=colour)
        d.text((x + 2, y + 2 - t), text, fill=(0, 0, 0), font=font)

    for o in detections or []:
        b = [v * scale for v in o["box"]]
        d.rectangle(b, outline=DET_COLOUR, width=2)
    for o in objects:
        b = [v * scale for v in o["box"]]
        d.rectangle(b, outline=GT_COLOUR, width=2)
    for o in objects:
        b = [v * scale for v in o["box"]]
        label((b[0] + 2, b[1] + 2), "GT " + " ".join(x for x in (o.get("color"), o["label"]) if x), GT_COLOUR)
    for o in detections or []:
        b = [v * scale for v in o["box"]]
        label((b[0] + 2, b[3] - 2), f"det {o['label']} {o.get('score') or 0:.2f}", DET_COLOUR, below=True)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    im.save(out_png)
    return out_png


def plot_pairs(pairs: list[dict], out_png: Path) -> Path | None:
    plt = _matplotlib()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    by = Counter(f"{p.get('source')}/{p.get('kind')}" for p in pairs)
    labels = sorted(by, key=by.get)
    axes[0].barh(labels, [by[x] for x in labels])
    axes[0].set_title("pairs per source / kind")
    margins = [p["margin"] for p in pairs if isinstance(p.get("margin"), (int, float))]
    axes[1].hist(margins or [0], bins=20)
    axes[1].set_title("judge margin (chosen − rejected score)")
    axes[2].hist([len(p["chosen"].split()) - len(p["rejected"].split()) for p in pairs], bins=20)
    axes[2].set_title("words: chosen − rejected")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png
