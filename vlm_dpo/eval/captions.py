"""Caption metrics against ground truth, reusing the judge's parser (synonyms, plurals, negation, counts).

Per caption, the mentioned objects are the distinct vocabulary labels it affirms (negated mentions such as
"no cups" do not count), as CHAIR (Rohrbach et al. 2018, "Object Hallucination in Image Captioning") does:

    CHAIR_i = sum_c |mentioned_c \\ truth_c| / sum_c |mentioned_c|       (hallucinated share of mentions)
    CHAIR_s = (1/C) sum_c [ |mentioned_c \\ truth_c| > 0 ]               (captions with any hallucination)
    recall  = sum_c |mentioned_c ∩ truth_c| / sum_c |truth_c|            (object coverage)
    count_accuracy    = correct stated counts / stated counts of true objects
    relation_accuracy = relations that hold / relations between true objects
    mean_words, mean_tokens, vague_rate (vague words per caption)

Each metric is also computed per caption (`per_caption`), so bootstrap intervals resample images.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..judge import JudgeConfig, Vocabulary, parse_caption, score_caption


@dataclass
class CaptionStats:
    mentioned: int
    hallucinated: int
    truth: int
    covered: int
    counts_stated: int
    counts_right: int
    relations: int
    relations_right: int
    words: int
    tokens: int | None
    vague: int


def caption_stats(caption: str, objects: list[dict], vocab: Vocabulary, tokenizer=None) -> CaptionStats:
    """Stats of one caption against ground-truth objects ({label, box[, color]}) of its image."""
    truth = [{"label": o["label"], "score": 1.0, "box": o["box"]} for o in objects]
    r = score_caption(caption, truth, vocab, JudgeConfig(min_score=0.5, uncertain_low=0.5), tokenizer=tokenizer)
    parsed = parse_caption(caption, vocab)
    true_labels = {vocab.canonical(o["label"]) for o in objects} - {None}
    mentioned = {m.label for m in parsed.mentions if not m.negated}
    stated = {}
    for m in parsed.mentions:
        if not m.negated and m.count is not None and m.label in true_labels:
            stated[m.label] = stated.get(m.label, 0) + m.count
    counts_right = sum(1 for lab, k in stated.items()
                       if k == sum(vocab.canonical(o["label"]) == lab for o in objects))
    rel_checked = [rel for rel in parsed.relations
                   if parsed.mentions[rel.subject_index].label in true_labels
                   and parsed.mentions[rel.object_index].label in true_labels
                   and parsed.mentions[rel.subject_index].label != parsed.mentions[rel.object_index].label]
    return CaptionStats(
        mentioned=len(mentioned), hallucinated=len(mentioned - true_labels), truth=len(true_labels),
        covered=len(mentioned & true_labels), counts_stated=len(stated), counts_right=counts_right,
        relations=len(rel_checked), relations_right=len(rel_checked) - len(r.relation_errors),
        words=r.n_words, tokens=r.n_tokens, vague=r.vague)


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def aggregate(stats: list[CaptionStats]) -> dict:
    """Corpus-level metrics from per-caption stats (ratios of sums, as CHAIR defines them)."""
    s = lambda f: sum(getattr(x, f) for x in stats)  # noqa: E731
    n = max(1, len(stats))
    out = {
        "chair_i": _ratio(s("hallucinated"), s("mentioned")),
        "chair_s": sum(x.hallucinated > 0 for x in stats) / n,
        "recall": _ratio(s("covered"), s("truth")),
        "count_accuracy": _ratio(s("counts_right"), s("counts_stated")),
        "relation_accuracy": _ratio(s("relations_right"), s("relations")) if s("relations") else None,
        "mean_words": s("words") / n,
        "vague_rate": s("vague") / n,
        "captions": len(stats),
    }
    if stats and all(x.tokens is not None for x in stats):
        out["mean_tokens"] = s("tokens") / n
    return out


def bootstrap_ci(groups: list[list[CaptionStats]], metric: str, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of an `aggregate` metric, resampling images (each group = one image's
    captions), so several samples of one image move together."""
    return bootstrap_cis(groups, (metric,), n_boot, seed, alpha)[metric]


def bootstrap_cis(groups: list[list[CaptionStats]], metrics: tuple[str, ...], n_boot: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """bootstrap_ci of several `aggregate` metrics from one pass of resamples (the same intervals)."""
    from .bootstrap import percentile_cis

    cis = percentile_cis(groups, lambda pick: aggregate([s for g in pick for s in g]), metrics, n_boot, seed, alpha)
    return {k: ci if ci is not None else (float("nan"), float("nan")) for k, ci in cis.items()}
