"""Does the model see, or copy its grounding context? Metrics on contexts with known errors.

The embedded world knows the truth, so the context's errors can be controlled: `noisy_contexts` drops each
true object with probability `drop` and adds one false object (an absent label, in a random box) to a share
`add` of scenes, deterministically from a seed. Natural errors come from comparing a real detector's output
with the truth (`context_errors`). Per caption, at label level:

    echo_rate     = false labels in the context that the caption names / false labels in the context
    recovery_rate = true labels missing from the context that the caption names / true labels missing
    precision_ungrounded = named true labels / named labels, for captions of prompts without any context

Lower echo and higher recovery mean the model trusts the image over a wrong context. CHAIR_i of the captions of
the detector's own contexts splits by where each hallucinated label came from (ratios of sums over captions):

    chair_i_by_context.in_context      = named absent labels the context listed     / named labels
    chair_i_by_context.outside_context = named absent labels the context did not list / named labels

They add up to CHAIR_i. The first is the detector's false detections echoed; the second is what the model adds on
its own (its prior, e.g. what it names when the context is empty).
"""

from __future__ import annotations

import random

from ..judge import Vocabulary, parse_caption


def noisy_contexts(scenes: list[dict], labels: list[str], drop: float = 0.1, add: float = 0.05,
                   seed: int = 0) -> list[dict]:
    """Per scene: {"detections": context, "dropped": [labels], "injected": [labels]} (labels fully absent
    from the context count as dropped; a label with one of two objects dropped is still in the context)."""
    out = []
    for s in scenes:
        rng = random.Random(f"noise/{seed}/{s['image_id']}")
        kept = [o for o in s["objects"] if rng.random() >= drop]
        dets = [{"label": o["label"], "score": 1.0, "box": o["box"]} for o in kept]
        injected = []
        present = {o["label"] for o in s["objects"]}
        if rng.random() < add:
            absent = [lab for lab in labels if lab not in present]
            if absent:
                lab = rng.choice(absent)
                w, h = s.get("width", 128), s.get("height", 128)
                x, y = rng.uniform(0, 0.75 * w), rng.uniform(0, 0.75 * h)
                dets.append({"label": lab, "score": 1.0, "box": [x, y, x + 0.25 * w, y + 0.25 * h]})
                injected.append(lab)
        out.append({"detections": dets, "injected": injected,
                    "dropped": sorted(present - {d["label"] for d in dets})})
    return out


def _canonical(labels, vocab: Vocabulary | None) -> set[str]:
    """Labels as the vocabulary's classes (a synonym or plural is its class; a label outside it stays as is), so
    that a detector's "mug" and the truth's "cup" are one kind, and a context's "phone" is COCO's "cell phone"."""
    return {(vocab.canonical(lab) or lab) if vocab is not None else lab for lab in labels}


def context_errors(context: list[dict], objects: list[dict], vocab: Vocabulary | None = None) -> dict:
    """A real detector's label-level errors against the truth: {"injected": false labels, "dropped": missed},
    `context` being the detections the grounding context states (ground.context_detections); labels compared as
    `vocab`'s classes when given."""
    ctx = _canonical((d["label"] for d in context), vocab)
    truth = _canonical((o["label"] for o in objects), vocab)
    return {"injected": sorted(ctx - truth), "dropped": sorted(truth - ctx)}


def named_labels(caption: str, vocab: Vocabulary) -> set[str]:
    return {m.label for m in parse_caption(caption, vocab).mentions if not m.negated}


def echo_recovery_counts(caption: str, errors: dict, vocab: Vocabulary) -> tuple[int, int, int, int]:
    """(echoed, injected, recovered, dropped) counts of one caption."""
    named = named_labels(caption, vocab)  # the vocabulary's classes, so the errors are compared as classes too
    inj, drp = _canonical(errors["injected"], vocab), _canonical(errors["dropped"], vocab)
    return len(named & inj), len(inj), len(named & drp), len(drp)


def rates(counts: list[tuple[int, int, int, int]]) -> dict:
    e, i, r, d = (sum(c[k] for c in counts) for k in range(4))
    return {"echo_rate": e / i if i else None, "recovery_rate": r / d if d else None, "injected": i, "dropped": d}


def bootstrap_rates(counts: list[tuple[int, int, int, int]], n_boot: int = 1000, seed: int = 0) -> dict:
    from .bootstrap import percentile_cis

    return percentile_cis(counts, rates, ("echo_rate", "recovery_rate"), n_boot, seed)


def hallucination_counts(caption: str, errors: dict, objects: list[dict], vocab: Vocabulary) -> tuple[int, int, int]:
    """(absent labels named that the context listed, absent labels named that it did not, labels named) of one
    caption; `errors` are its context's (`context_errors`)."""
    named = named_labels(caption, vocab)
    absent = named - _canonical((o["label"] for o in objects), vocab)
    listed = _canonical(errors["injected"], vocab)
    return len(absent & listed), len(absent - listed), len(named)


def chair_by_context(counts: list[tuple[int, int, int]]) -> dict:
    listed, unlisted, named = (sum(c[k] for c in counts) for k in range(3))
    return {"in_context": listed / named if named else 0.0, "outside_context": unlisted / named if named else 0.0}


# The split as flat metric names, for tables with one row per figure (seeds.md, the report's metric table).
SPLIT_KEYS = {"chair_i_in_context": ("chair_i_by_context", "in_context"),
              "chair_i_outside_context": ("chair_i_by_context", "outside_context")}


def model_metric(model_metrics: dict, key: str) -> float | None:
    """A figure of one model's metrics.json entry by flat name (SPLIT_KEYS for the split); None when absent."""
    if key in SPLIT_KEYS:
        outer, inner = SPLIT_KEYS[key]
        return (model_metrics.get(outer) or {}).get(inner)
    return model_metrics.get(key)


def precision_counts(caption: str, objects: list[dict], vocab: Vocabulary) -> tuple[int, int]:
    """(named true labels, named labels) of one caption."""
    named = named_labels(caption, vocab)
    truth = {vocab.canonical(o["label"]) for o in objects}
    return len(named & truth), len(named)
