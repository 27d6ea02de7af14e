"""The report a person reads: one static HTML file plus PNGs, no server needed.

    <out>/report/index.html
    <out>/report/metrics.png         the main metrics per model, with their 95% intervals
    <out>/report/curves.png          DPO loss, reward accuracy, margins (train and eval)
    <out>/report/pairs.png           preference pairs per source / kind, judge margins, length differences
    <out>/report/gallery/<id>.png    held-out images with labelled ground-truth and detector boxes

What it shows, top to bottom: a headline (before -> after per main metric, the change with a 95% paired
bootstrap interval over images), the chart, the metric table with the best value per row marked and a caveat
wherever a metric cannot tell the models apart, training curves, a gallery chosen where the models differ
(where DPO fixed errors and where it made them), with every caption's errors marked by kind (hallucinated
object, wrong count, wrong colour, wrong side), the preference pairs as tables, plots and chosen-vs-rejected
examples. The numbers are the eval stage's (metrics.json); the report only adds the paired intervals, from the
per-image rows the eval stage writes (<run>/eval/<model>.per_image.jsonl, recomputed from the captions if absent).
"""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from .eval.grounding import model_metric
from .ground import GroundingConfig, context_detections
from .judge import JudgeConfig, Vocabulary, parse_caption, resolve_vocabulary, score_caption
from .records import read_jsonl, write_text_atomic
from .report_figures import DET_COLOUR, GT_COLOUR, draw_boxes, plot_curves, plot_metrics, plot_pairs
from .report_vqa import vqa_section
from .run import RunFolder

# (key, title, direction): +1 higher is better, -1 lower is better, 0 neither
MAIN = [("chair_i", "CHAIR_i", -1), ("chair_s", "CHAIR_s", -1), ("recall", "recall", 1), ("pope_f1", "POPE F1", 1),
        ("mean_words", "mean words", 0)]
TABLE = [("chair_i", "CHAIR_i ↓", -1), ("chair_s", "CHAIR_s ↓", -1), ("recall", "recall ↑", 1),
         ("pope_f1", "POPE F1 (adv.) ↑", 1), ("mean_words", "mean words", 0), ("count_accuracy", "count acc. ↑", 1),
         ("vague_rate", "vague / caption ↓", -1), ("pref_accuracy", "pref. acc. (held-out) ↑", 1),
         ("clip_score", "CLIPScore ↑", 1), ("precision_ungrounded", "precision, no grounding ↑", 1),
         ("echo_rate", "echo rate, noisy context ↓", -1), ("recovery_rate", "recovery rate, noisy context ↑", 1),
         ("natural_echo_rate", "echo rate, detector context ↓", -1),
         ("natural_recovery_rate", "recovery rate, detector context ↑", 1),
         # CHAIR_i = the two below: absent kinds named that the detector's context listed (echoes), and the rest
         ("chair_i_in_context", "CHAIR_i, kinds the context listed ↓", -1),
         ("chair_i_outside_context", "CHAIR_i, kinds it did not list ↓", -1)]
# per-image (numerator, denominator) fields whose ratio of sums over images is the metric
RATIOS = {"chair_i": ("hallucinated", "mentioned"), "chair_s": ("any_hallucinated", "one"),
          "recall": ("covered", "truth"), "mean_words": ("words", "one"), "pope_f1": ("pope_2tp", "pope_f1_den")}


def _fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _signed(v, digits=3):
    return "–" if v is None else f"{v:+.{digits}f}".replace("-", "−")


def _truth_dets(objects: list[dict]) -> list[dict]:
    return [{"label": o["label"], "score": 1.0, "box": o["box"], **({"color": o["color"]} if o.get("color") else {})}
            for o in objects]


def caption_errors(caption: str, objects: list[dict], vocab: Vocabulary) -> dict:
    """The judge's verdict on a caption against ground truth: {kind, count, colour, side} error lists."""
    r = score_caption(caption, _truth_dets(objects), vocab, JudgeConfig())
    return {"kind": list(r.hallucinated), "count": [asdict(e) for e in r.count_errors],
            "colour": [asdict(e) for e in r.color_errors],
            "side": [f"{e.subject} {e.relation.replace('_', ' ')} {e.object}" for e in r.relation_errors]}


def n_errors(err: dict) -> int:
    return sum(len(v) for v in err.values())


def highlight(caption: str, truth, vocab: Vocabulary) -> str:
    """HTML of a caption with each object mention marked by what the judge found against the ground truth:
    <mark class=ok> right, class=bad a hallucinated object (kind), class=count a wrong count, class=colour a wrong
    colour, class=side a wrong left/right relation, class=neg negated. Each error carries a visible tag.
    `truth`: the image's ground-truth objects ({label, box, color?}), or a set of labels (kind only)."""
    objects = ([{"label": t, "box": [0, 0, 1, 1]} for t in sorted(truth)] if isinstance(truth, (set, frozenset))
               else list(truth))
    parsed = parse_caption(caption, vocab)
    r = score_caption(parsed, _truth_dets(objects), vocab, JudgeConfig())
    truth_labels = {vocab.canonical(o["label"]) for o in objects}
    counts = {e.label: e for e in r.count_errors}
    colours = {(e.label, e.stated): e for e in r.color_errors}
    side = {}
    for rel in r.relation_errors:
        side[rel.subject_index] = f"{rel.subject} {rel.relation.replace('_', ' ')} {rel.object}: wrong side"
    out, pos = [], 0
    order = sorted(range(len(parsed.mentions)), key=lambda i: parsed.mentions[i].span[0])
    for i in order:
        m = parsed.mentions[i]
        s, e = m.span
        if s < pos:
            continue
        prefix = caption[pos:s]
        tags = []
        if m.negated:
            cls = "neg"
        elif m.label not in truth_labels:
            cls = "bad"
            tags.append(("bad", "✗ not in image", f"{m.label}: no {m.label} in the image"))
        else:
            cls = "ok"
            if m.color and (m.label, m.color) in colours:
                ce = colours[(m.label, m.color)]
                seen = "/".join(ce.detected) or "?"
                k = prefix.lower().rfind(m.color.lower())
                if k >= 0:  # mark the colour word itself
                    out.append(html.escape(prefix[:k]))
                    out.append(f'<mark class="colour" title="says {html.escape(m.color)}, is {html.escape(seen)}">'
                               f'{html.escape(prefix[k:k + len(m.color)])}</mark>')
                    prefix = prefix[k + len(m.color):]
                cls = "colour"
                tags.append(("colour", f"✗ colour: {m.color}≠{seen}", f"says {m.color}, the {m.label} is {seen}"))
            if m.count is not None and m.label in counts:
                ce = counts.pop(m.label)  # tag the label's first counted mention once
                cls = "count"
                tags.append(("count", f"✗ count: {ce.stated}≠{ce.detected}",
                             f"says {ce.stated} {m.label}(s) in all, the image has {ce.detected}"))
            if i in side:
                cls = "side"
                tags.append(("side", "✗ side", side[i]))
        out.append(html.escape(prefix))
        title = "; ".join(t[2] for t in tags) or ("negated" if cls == "neg" else "in the image")
        out.append(f'<mark class="{cls}" title="{html.escape(title)}">{html.escape(caption[s:e])}</mark>')
        out += [f'<sup class="err {c}">{html.escape(text)}</sup>' for c, text, _ in tags]
        pos = e
    out.append(html.escape(caption[pos:]))
    return "".join(out)


# -- per-image rows and the paired bootstrap ------------------------------------------------------------------

def per_image(run: RunFolder, name: str, items: list[dict], scenes: list[dict], captions: dict[str, str],
              vocab: Vocabulary) -> list[dict]:
    """The eval stage's per-image rows of a model in `items` order (recomputed from its captions and POPE
    answers for runs evaluated before the eval stage wrote them)."""
    path = run.eval_per_image(name)
    if path.exists():
        rows = {r["image_id"]: r for r in read_jsonl(path)}
    else:
        from .eval.run import per_image_rows

        pope = list(read_jsonl(run.eval_pope(name))) if run.eval_pope(name).exists() else []
        rows = {r["image_id"]: r for r in per_image_rows(items, scenes, [[captions.get(it["image_id"], "")]
                                                                          for it in items], pope, vocab)}
    out = []
    for it in items:
        r = dict(rows.get(it["image_id"]) or {})
        r["any_hallucinated"] = int(r.get("hallucinated", 0) > 0)
        r["one"] = 1
        r["pope_2tp"] = 2 * r.get("pope_tp", 0)
        r["pope_f1_den"] = 2 * r.get("pope_tp", 0) + r.get("pope_fp", 0) + r.get("pope_fn", 0)
        out.append(r)
    return out


def ratio_of_sums(rows: list[dict], metric: str) -> float | None:
    num, den = RATIOS[metric]
    d = sum(r.get(den, 0) for r in rows)
    return sum(r.get(num, 0) for r in rows) / d if d else None


def paired_diff(base: list[dict], other: list[dict], metric: str, n_boot: int = 1000, seed: int = 0,
                alpha: float = 0.05) -> tuple[float | None, tuple[float, float] | None]:
    """(other - base, its percentile interval) resampling images with replacement, the same images for both
    models (a paired bootstrap): per-image rows in the same image order."""
    import numpy as np

    num, den = RATIOS[metric]
    a = np.array([[r.get(num, 0), r.get(den, 0)] for r in base], dtype=float)
    b = np.array([[r.get(num, 0), r.get(den, 0)] for r in other], dtype=float)
    if not len(a) or len(a) != len(b) or not a[:, 1].sum() or not b[:, 1].sum():
        return None, None
    point = b[:, 0].sum() / b[:, 1].sum() - a[:, 0].sum() / a[:, 1].sum()
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    sa, sb = a[idx].sum(axis=1), b[idx].sum(axis=1)
    ok = (sa[:, 1] > 0) & (sb[:, 1] > 0)
    if not ok.any():
        return float(point), None
    diff = np.sort(sb[ok, 0] / sb[ok, 1] - sa[ok, 0] / sa[ok, 1])
    n = len(diff) - 1
    return float(point), (float(diff[int(alpha / 2 * n)]), float(diff[int((1 - alpha / 2) * n)]))


# -- caveats ----------------------------------------------------------------------------------------------------

def caveats(models: dict) -> dict[str, list[str]]:
    """metric -> reasons it cannot tell the models apart (or is not worth reading) on this run."""
    out: dict[str, list[str]] = {}
    names = list(models)
    for k, title, _ in TABLE:
        vals = [models[n].get(k) for n in names if models[n].get(k) is not None]
        if not vals:
            continue
        cis = [models[n].get("ci", {}).get(k) or models[n].get("robustness_ci", {}).get(k) for n in names]
        if len(vals) > 1 and max(vals) - min(vals) < 1e-12:
            out.setdefault(k, []).append(f"{title.rstrip(' ↑↓')} is {vals[0]:.3f} for every model: it does not "
                                         "separate them here")
            continue
        if any(c and abs(c[1] - c[0]) < 1e-12 for c in cis):
            out.setdefault(k, []).append(f"{title.rstrip(' ↑↓')}: an interval of zero width (every resample gives "
                                         "the same value), so it says nothing about uncertainty")
    yes_all = [n for n in names
               if (((models[n].get("pope") or {}).get("adversarial") or {}).get("yes_ratio") or 0) >= 0.99]
    no_all = [n for n in names if (((models[n].get("pope") or {}).get("adversarial") or {}).get("yes_ratio", 0.5)
                                   <= 0.01)]
    for group, word in ((yes_all, "yes"), (no_all, "no")):
        if group:
            out.setdefault("pope_f1", []).insert(0, (
                f"POPE: {', '.join(group)} answer{'s' if len(group) == 1 else ''} “{word}” to every probe "
                f"(yes-ratio {1.0 if word == 'yes' else 0.0:.2f}): the F1 measures that habit, not whether a model "
                "sees the objects"))
    return out
    return out


# -- the page ---------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 9px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.ci{color:#777;font-size:85%}
td.best{background:#e3f6e3;font-weight:600}td.best::after{content:" ★";color:#1a7f37}
mark.bad{background:#f8b4b4}mark.ok{background:#c9f0c9}mark.neg{background:#ddd}
mark.count{background:#ffd9a8}mark.colour{background:#e4c8f5}mark.side{background:#b9dcff}
sup.err{font-size:70%;margin:0 3px;padding:0 3px;border-radius:3px;white-space:nowrap}
sup.bad{background:#f8b4b4}sup.count{background:#ffd9a8}sup.colour{background:#e4c8f5}sup.side{background:#b9dcff}
.card{display:flex;gap:14px;border-top:1px solid #ddd;padding:10px 0}.card img{width:288px;height:288px}
.caps div{margin:3px 0}.tag{display:inline-block;width:5.5em;color:#555}code{background:#f4f4f4}
.headline{display:flex;flex-wrap:wrap;gap:12px;margin:1em 0}
.hl{border:1px solid #ccc;border-radius:8px;padding:10px 14px;min-width:190px;background:#fafafa}
.hl .name{font-size:85%;color:#555;text-transform:uppercase;letter-spacing:.04em}
.hl .vals{font-size:1.5em;font-weight:600;margin:.2em 0}.hl .delta{font-size:90%}
.hl.better{border-color:#1a7f37;background:#eef9ee}.hl.worse{border-color:#cf222e;background:#fdeeee}
.caveat{background:#fff6d6;border-left:4px solid #e0b000;padding:4px 10px;margin:4px 0;font-size:90%}
.warn{color:#b07800;cursor:help}.legend span{margin-right:1.2em}.sw{display:inline-block;width:12px;height:12px;
vertical-align:middle;margin-right:4px}.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px}
.chosen{border-left:4px solid #1a7f37;padding-left:8px}.rejected{border-left:4px solid #cf222e;padding-left:8px}
.note{color:#555;font-size:90%}
"""


def _best(values: dict[str, float | None], direction: int) -> set[str]:
    vals = {n: v for n, v in values.items() if isinstance(v, (int, float))}
    if direction == 0 or len(vals) < 2 or max(vals.values()) - min(vals.values()) < 1e-12:
        return set()
    target = max(vals.values()) if direction > 0 else min(vals.values())
    return {n for n, v in vals.items() if abs(v - target) < 1e-12}


def _metric_table(models: dict, cav: dict) -> str:
    names = list(models)
    rows = []
    for k, title, direction in TABLE:
        if all(model_metric(models[n], k) is None for n in names):
            continue
        best = _best({n: model_metric(models[n], k) for n in names}, direction)
        cells = []
        for n in names:
            v = model_metric(models[n], k)
            ci = models[n].get("ci", {}).get(k) or models[n].get("robustness_ci", {}).get(k)
            cls = ' class="best" title="best of the models on this metric"' if n in best else ""
            cells.append(f"<td{cls}>{_fmt(v)}" + (f' <span class="ci">[{_fmt(ci[0])}, {_fmt(ci[1])}]</span>'
                                                  if ci else "") + "</td>")
        warn = (f' <span class="warn" title="{html.escape("; ".join(cav[k]))}">⚠</span>' if k in cav else "")
        rows.append(f'<tr data-metric="{k}"><td>{title}{warn}</td>{"".join(cells)}</tr>')
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    return f'<table id="metrics"><tr><th>metric (greedy, held-out)</th>{head}</tr>{"".join(rows)}</table>'


def _headline(models: dict, base: str, after: str | None, diffs: dict, cav: dict) -> str:
    if after is None:
        return (f'<div id="headline" class="caveat">Only <b>{html.escape(base)}</b> was evaluated: there is no '
                "before/after comparison in this run. Its metrics are below.</div>")
    cards = []
    for k, title, direction in MAIN:
        if k not in models[base] or k not in models[after]:
            continue
        point, ci = diffs[after].get(k, (None, None))
        b, a = models[base][k], models[after][k]
        rel = f" ({(a - b) / b:+.0%})".replace("-", "−") if b else ""
        verdict, cls = "no clear change", ""
        if ci is not None and direction and (ci[0] > 0 or ci[1] < 0):
            good = (ci[0] > 0) == (direction > 0)
            verdict, cls = ("better", "better") if good else ("worse", "worse")
        elif ci is not None and (ci[0] > 0 or ci[1] < 0):
            verdict = "longer" if ci[0] > 0 else "shorter"
        ci_txt = f"[{_signed(ci[0])}, {_signed(ci[1])}]" if ci else "(no interval)"
        warn = f'<div class="caveat">⚠ {html.escape(cav[k][0])}</div>' if k in cav else ""
        cards.append(f'<div class="hl {cls}" data-metric="{k}"><div class="name">{title}'
                     f'{" ↓" if direction < 0 else " ↑" if direction > 0 else ""}</div>'
                     f'<div class="vals">{_fmt(b)} → {_fmt(a)}</div>'
                     f'<div class="delta">change {_signed(point)}{rel} <span class="ci">{ci_txt}</span></div>'
                     f'<div class="verdict"><b>{verdict}</b></div>{warn}</div>')
    return (f'<div id="headline"><p><b>{html.escape(base)}</b> (before) → <b>{html.escape(after)}</b> (after); '
            "change = after − before with its 95% paired bootstrap interval over the same images. "
            "Green: better with the interval excluding zero; red: worse.</p>"
            f'<div class="headline">{"".join(cards)}</div></div>')


def _change_table(models: dict, base: str, diffs: dict) -> str:
    others = [n for n in models if n != base]
    if len(others) < 2:
        return ""
    keys = [(k, t, d) for k, t, d in MAIN if all(k in models[n] for n in models)]
    head = "".join(f"<th>{t}</th>" for _, t, _ in keys)
    rows = []
    for n in others:
        cells = []
        for k, _, _ in keys:
            p, ci = diffs[n].get(k, (None, None))
            cells.append(f"<td>{_signed(p)}" + (f' <span class="ci">[{_signed(ci[0])}, {_signed(ci[1])}]</span>'
                                                if ci else "") + "</td>")
        rows.append(f"<tr><td>{html.escape(n)}</td>{''.join(cells)}</tr>")
    return (f'<h3>Change against {html.escape(base)}, every model</h3><table id="changes"><tr><th>model</th>{head}'
            f'</tr>{"".join(rows)}</table>')


def choose_gallery(errors: dict[str, list[int]], captions_same: list[bool], base: str, after: str | None,
                   n: int) -> list[tuple[str, list[int]]]:
    """(section title, image indices): where `after` fixed errors of `base`, where it made new ones, and where
    the models' captions differ otherwise; with one model, the images with the most errors."""
    idx = range(len(captions_same))
    if after is None:
        worst = sorted((i for i in idx if errors[base][i] > 0), key=lambda i: -errors[base][i])[:n]
        return [(f"Captions of {base} with the most errors", worst)]
    fixed = sorted((i for i in idx if errors[after][i] < errors[base][i]),
                   key=lambda i: errors[after][i] - errors[base][i])
    worse = sorted((i for i in idx if errors[after][i] > errors[base][i]),
                   key=lambda i: errors[base][i] - errors[after][i])
    n_worse = min(len(worse), max(2, n // 3))
    n_fixed = min(len(fixed), n - n_worse)
    used = set(fixed[:n_fixed]) | set(worse[:n_worse])
    differ = [i for i in idx if i not in used and not captions_same[i]]
    differ.sort(key=lambda i: -max(e[i] for e in errors.values()))
    return [(f"Where {after} fixed errors of {base} ({len(fixed)} images in all)", fixed[:n_fixed]),
            (f"Where {after} got worse than {base} ({len(worse)} images in all)", worse[:n_worse]),
            ("Other images where the captions differ", differ[:max(0, n - n_fixed - n_worse)])]


def _pairs_section(rep: Path, pairs: list[dict], pair_stats: dict | None, image_root: Path | None,
                   vocab: Vocabulary, n_examples: int = 4, detections: dict | None = None,
                   ground: GroundingConfig | None = None) -> str:
    if not pairs and not pair_stats:
        return ""
    parts = ['<h2 id="pairs">Preference pairs</h2>']
    if pairs:
        by = Counter((p.get("source"), p.get("kind")) for p in pairs)
        splits = Counter(p.get("split") for p in pairs)
        rows = "".join(f"<tr><td>{html.escape(str(s))}</td><td>{html.escape(str(k))}</td><td>{c}</td></tr>"
                       for (s, k), c in sorted(by.items(), key=lambda x: -x[1]))
        parts.append(f'<p>{len(pairs)} pairs from {len({p.get("image_id") for p in pairs})} images; '
                     + ", ".join(f"{html.escape(str(s))}: {c}" for s, c in sorted(splits.items())) + ".</p>"
                     f'<table id="pair-kinds"><tr><th>source</th><th>kind</th><th>pairs</th></tr>{rows}</table>')
        png = plot_pairs(pairs, rep / "pairs.png")
        if png:
            parts.append(f'<img src="{png.name}" alt="pair statistics" style="width:100%">')
    if pair_stats:
        flat = {k: v for k, v in pair_stats.items() if isinstance(v, (int, float, str)) and k != "key"}
        nested = {k: v for k, v in pair_stats.items() if isinstance(v, dict) and v
                  and all(isinstance(x, (int, float, str)) for x in v.values())}
        rows = [(k, _fmt(v)) for k, v in flat.items()]
        rows += [(k, " · ".join(f"{html.escape(str(a))} {_fmt(b)}" for a, b in v.items())) for k, v in nested.items()]
        if rows:
            parts.append('<table id="pair-stats"><tr><th>statistic</th><th>value</th></tr>' + "".join(
                f'<tr><td>{html.escape(k)}</td><td style="text-align:left">{v}</td></tr>' for k, v in rows)
                + "</table>")
    if pairs and image_root is not None:
        parts.append("<h3>Chosen vs rejected (one example per kind)</h3><p class=note>Marks: the judge's verdict "
                     "on each caption against what it judged by (the detector or the world's truth, as the pair "
                     "records).</p>")
        seen, shown = set(), 0
        for p in pairs:
            if shown >= n_examples or p.get("kind") in seen:
                continue
            path = image_root / p["image"]
            if not path.is_file():
                continue
            seen.add(p.get("kind"))
            shown += 1
            png = draw_boxes(str(path), [], rep / "pairs" / f"{p.get('pair_id', shown)}.png",
                             detections=context_detections((detections or {}).get(p.get("image_id"), []), ground))
            sc = p.get("scores") or {}
            halluc = set((sc.get("rejected") or {}).get("hallucinated") or [])
            truth = {m.label for m in parse_caption(p["chosen"], vocab).mentions if not m.negated} - halluc
            parts.append(
                f'<div class="card pair-example"><img src="pairs/{png.name}" alt="pair image">'
                f'<div class="caps"><div><b>{html.escape(str(p.get("source")))} / {html.escape(str(p.get("kind")))}'
                f'</b> margin {_fmt(p.get("margin"))}</div>'
                f'<div><code>{html.escape(p.get("grounding") or "")}</code></div><div class="pair">'
                f'<div class="chosen"><b>chosen</b> ({_fmt((sc.get("chosen") or {}).get("score"))})<br>'
                f'{highlight(p["chosen"], truth, vocab)}</div>'
                f'<div class="rejected"><b>rejected</b> ({_fmt((sc.get("rejected") or {}).get("score"))})<br>'
                f'{highlight(p["rejected"], truth, vocab)}</div></div></div></div>')
    return "".join(parts)


def evaluated_on(metrics: dict) -> str:
    """Which images the numbers are from, and what that means under issue #16's protocol (settings chosen on val,
    test read once for the chosen settings)."""
    ev = metrics.get("eval_settings", {}).get("eval", {})
    if ev.get("annotations"):
        return (f"Evaluated on your annotated images (<code>{html.escape(str(ev['annotations']))}</code>), "
                f"{metrics.get('held_out_images', '?')} images.")
    split = ev.get("split")
    if split == "test":
        return ("Evaluated on the world's <b>test</b> split. Choose settings on <code>eval.split=val</code> and read "
                "test once for the settings chosen: figures read many times on test are tuned to it.")
    if split == "val":
        return ("Evaluated on the world's <b>val</b> split, where settings are chosen; report the chosen settings "
                "on <code>eval.split=test</code>, read once.")
    return f"Evaluated on the world's {html.escape(str(split))} split." if split else ""


def write_report(out: Path, metrics: dict, *, scenes: list[dict], captions: dict[str, dict[str, str]],
                 items: list[dict], pair_stats: dict | None, curves: Path | None, n_gallery: int = 12,
                 vocab: Vocabulary | None = None, detections: dict[str, list[dict]] | None = None,
                 ground: GroundingConfig | None = None, pairs: list[dict] | None = None,
                 image_root: Path | None = None, n_boot: int = 1000, seed: int = 0) -> Path:
    """Write <out>/report/index.html. captions: model name -> image_id -> greedy caption; detections: image_id ->
    the detector's boxes (those the prompts' context states under `ground` are drawn: ground.context_detections)."""
    vocab = vocab or Vocabulary.world()
    ground = ground or GroundingConfig(min_score=0.5)
    run = RunFolder(out)
    rep = run.report
    rep.mkdir(parents=True, exist_ok=True)
    models = metrics["models"]
    names = list(models)
    base = "sft" if "sft" in names else names[0]
    after = "dpo" if "dpo" in names and base != "dpo" else next((n for n in names if n != base), None)
    rows = {n: per_image(run, n, items, scenes, captions.get(n, {}), vocab) for n in names}
    diffs = {n: {k: paired_diff(rows[base], rows[n], k, n_boot, seed) for k in RATIOS} for n in names if n != base}
    cav = caveats(models)
    chart = plot_metrics(models, rep / "metrics.png")

    # gallery: judge every caption against the truth, pick where the models differ
    errs = {n: [caption_errors(captions.get(n, {}).get(it["image_id"], ""), sc["objects"], vocab)
                for it, sc in zip(items, scenes)] for n in names}
    counts = {n: [n_errors(e) for e in errs[n]] for n in names}
    same = [len({captions.get(n, {}).get(it["image_id"], "") for n in names}) == 1 for it in items]
    sections = choose_gallery(counts, same, base, after, n_gallery)
    if not any(idx for _, idx in sections):  # nothing to single out: still show what the captions look like
        sections.append(("No image singles a model out; the first images, for reference",
                         list(range(min(4, n_gallery, len(items))))))
    dets = detections or {}
    gallery = []
    for title, idx in sections:
        if not idx:
            gallery.append(f"<h3>{html.escape(title)}</h3><p class=note>none among the {len(items)} images</p>")
            continue
        gallery.append(f"<h3>{html.escape(title)}</h3>")
        for i in idx:
            it, sc = items[i], scenes[i]
            shown = context_detections(dets.get(it["image_id"], []), ground)
            png = draw_boxes(it["path"], sc["objects"], rep / "gallery" / f"{it['image_id']}.png", detections=shown)
            caps = "".join(
                f'<div data-model="{html.escape(n)}"><span class="tag">{html.escape(n)}</span> '
                f'{highlight(captions[n].get(it["image_id"], ""), sc["objects"], vocab)}'
                f' <span class="note">({counts[n][i]} error{"s" if counts[n][i] != 1 else ""})</span></div>'
                for n in names if n in captions)
            truth = ", ".join(sorted(" ".join(x for x in (o.get("color"), o["label"]) if x) for o in sc["objects"]))
            gallery.append(
                f'<div class="card" data-image="{html.escape(it["image_id"])}"><img src="gallery/{png.name}" '
                f'alt="{html.escape(it["image_id"])}"><div class="caps"><div><b>{html.escape(it["image_id"])}</b>'
                f' — ground truth: {html.escape(truth)}</div>'
                f'<div>context: <code>{html.escape(it.get("grounding") or "")}</code></div>{caps}</div></div>')

    curves_html = (f'<h2>DPO training</h2><img src="{curves.name}" alt="training curves" style="width:100%">'
                   if curves else "")
    chart_html = f'<img id="chart" src="{chart.name}" alt="main metrics per model" style="max-width:100%">' if chart else ""
    cav_html = "".join(f'<div class="caveat" data-metric="{k}">⚠ {html.escape("; ".join(cs))}</div>'
                       for k, cs in cav.items())
    extra = {k: v for k, v in metrics.items() if k not in ("models", "pairs")}
    fallback = "" if ground.fallback_score is None else f", or the best one ≥ {ground.fallback_score:g} when none is"
    legend = (f'<p class="legend"><span><span class="sw" style="background:rgb{GT_COLOUR}"></span>ground-truth box '
              f'(annotation), "GT colour label"</span><span><span class="sw" style="background:rgb{DET_COLOUR}">'
              f'</span>detector box, "det label score" (score ≥ {ground.min_score:g}{fallback}: what the prompt\'s '
              f'context used)</span></p><p class="legend"><mark class="ok">in the image</mark> <mark class="bad">'
              '<span>hallucinated (kind)</span></mark> <mark class="count">wrong count</mark> <mark class="colour">'
              'wrong colour</mark> <mark class="side">wrong side</mark> <mark class="neg">negated</mark></p>')
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vlm_dpo report</title>
<style>{CSS}</style></head>
<body><h1>vlm_dpo: before and after DPO</h1>
<p>Held-out scenes ({len(items)}), greedy captions from the pipeline's grounded prompt, the same max_new_tokens
for every model. 95% bootstrap intervals over images in brackets. <b>sft</b>: before DPO; <b>dpo</b>: after;
<b>rft</b>: SFT on the chosen captions (rejection-sampling fine-tuning baseline).</p>
<p id="protocol">{evaluated_on(metrics)}</p>
<h2>At a glance</h2>
{_headline(models, base, after, diffs, cav)}
{chart_html}
<h2>All metrics</h2><p class="note">★: the best model on the row (none when all are equal or the metric has no
direction).</p>
{_metric_table(models, cav)}
{cav_html}
{_change_table(models, base, diffs)}
{curves_html}
<h2 id="gallery">Gallery (held-out): where the models differ</h2>
{legend}
{''.join(gallery)}
{vqa_section(run, models, base, after)}
{_pairs_section(rep, pairs or [], pair_stats, image_root, vocab, detections=dets, ground=ground)}
<details><summary>run details</summary><pre>{html.escape(json.dumps(extra, indent=1, default=str))}</pre></details>
</body></html>"""
    return write_text_atomic(rep / "index.html", page)


def training_curves(summary: dict) -> list[tuple[str, Path]]:
    """(label, DPO metrics.jsonl) of every round a pipeline summary (metrics.json) trained, beside each round's
    model; none for an evaluation without training."""
    models, rounds = summary.get("models") or {}, summary.get("rounds") or []
    first = models.get("dpo_round1" if rounds else "dpo") or {}
    if "train" not in summary or "model" not in first:
        return []
    return [("round 1" if rounds else "", Path(first["model"]).parent / "metrics.jsonl")] + [
        (f"round {r['round']}", Path(r["model"]).parent / "metrics.jsonl") for r in rounds]


def run(cfg, run: RunFolder, summary: dict, *, items: list[dict], scenes: list[dict], pair_stats: dict | None = None,
        curves_from: Path | list[tuple[str, Path]] | None = None) -> Path:
    """The report stage: <run>/report/index.html from the metrics `summary` and the models' greedy captions in
    <run>/eval/; `curves_from` is a DPO metrics.jsonl to plot (curves.png), or (label, metrics.jsonl) per round."""
    curves = plot_curves(curves_from, run.curves) if curves_from is not None else None
    captions = {name: {r["image_id"]: r["greedy"] for r in read_jsonl(run.eval_captions(name))}
                for name in summary["models"]}
    dets = {}  # every split's detections: the eval split's for the gallery, the pairs' split for the examples
    for path in sorted(run.detections_dir.glob("*.jsonl")) if run.detections_dir.is_dir() else []:
        dets |= {r["image_id"]: r.get("detections") or [] for r in read_jsonl(path) if "image_id" in r}
    pairs, image_root = [], None
    if run.pairs_jsonl.exists():
        pairs = list(read_jsonl(run.pairs_jsonl))
        try:
            from .images import data_root

            image_root = Path(data_root(cfg))
        except Exception:  # noqa: BLE001 - examples are optional; the tables still show
            image_root = None
    return write_report(run.root, summary, scenes=scenes, captions=captions, items=items, pair_stats=pair_stats,
                        curves=curves, vocab=resolve_vocabulary(cfg.eval.vocabulary), detections=dets,
                        ground=cfg.ground, pairs=pairs, image_root=image_root,
                        n_boot=cfg.eval.bootstrap, seed=cfg.eval.seed)
