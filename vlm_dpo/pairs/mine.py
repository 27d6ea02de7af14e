"""Mining preference pairs with the detector as judge, synthetic negatives, and context-robustness pairs.

This is the toolkit's own logic (no library does it): which captions to compare, how to keep pairs honest
(a minimum judge margin, at most K per image, optional length balance), and how to make hard negatives.

Mined pairs: every caption sampled for an image is judged against that image's detections; pairs (i, j)
with score_i - score_j >= min_margin are candidates, the K with the largest margins are kept (ties broken by
text, so mining is deterministic). With `length_balance`, a candidate whose chosen side is shorter is kept
only while the image's kept pairs have no more shorter-chosen than longer-chosen ones, so DPO cannot win
by learning "shorter" alone.

When no sample of an image is judged perfect, `chosen_from_detections` adds the caption the detections
themselves describe (counts, colours when known), so every image has a factual chosen side.

Synthetic negatives (from a chosen caption): add an absent object (picked adversarially: the label that
co-occurs most with the image's labels across the data, as POPE's adversarial split does), change a count,
swap left/right, make it vague; off by default: leave out a present object (true but incomplete: the
recall-preserving negative) or say one listed object twice (the repetition small VLMs fall into).

Context-robustness pairs (grounded prompts only): a false detection injected into the grounding context
(chosen ignores it, rejected repeats it), or a true one dropped (chosen still names it, rejected follows
the context and leaves it out).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations

from ..checks import at_least
from ..ground import GroundingConfig, PromptConfig, grounding_text, prompt_text
from ..judge import JudgeConfig, Vocabulary, parse_caption, score_caption
from ..world.captions import NUMBER_WORDS, VAGUE_CAPTIONS, join_phrases, noun_phrase, reference_caption
from .dataset import make_pair


@dataclass
class MineConfig:
    min_margin: float = 0.5  # judge-score difference a mined pair needs
    max_pairs_per_image: int = 3
    length_balance: bool = False
    use_greedy: bool = True  # the greedy caption is a candidate too
    chosen_from_detections: bool = True
    synthetic: list[str] = field(default_factory=lambda: ["add_object", "count", "swap_sides", "vague"])
    synthetic_per_image: int = 1  # synthetic pairs per image (kinds drawn in turn)
    context: list[str] = field(default_factory=lambda: ["inject_false", "drop_true"])
    context_per_image: int = 1
    adversarial_top: int = 3  # absent objects are drawn from the 3 labels co-occurring most with the scene
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(self, 0, "min_margin", "max_pairs_per_image", "synthetic_per_image", "context_per_image")
        at_least(self, 1, "adversarial_top")
        unknown = sorted(set(self.synthetic) - set(SYNTHETIC))
        if unknown:
            raise ValueError(f"synthetic: unknown kind(s) {unknown}; known: {sorted(SYNTHETIC)}")


def detection_caption(detections: list[dict], width: int, judge: JudgeConfig, vocab: Vocabulary) -> str | None:
    """The caption the confident detections describe ("two cups and a ball."), or None when there are none."""
    objs = [d for d in detections if d.get("score", 1.0) >= judge.min_score and vocab.canonical(d["label"])]
    if not objs:
        return None
    return reference_caption([{"label": vocab.canonical(d["label"]), "color": d.get("color"), "box": d["box"]}
                              for d in objs], width)


class Cooccurrence:
    """Label co-occurrence counts over a dataset's detections, for adversarial absent objects."""

    def __init__(self, detection_sets: list[list[str]]):
        self.pair = Counter()
        self.single = Counter()
        for labels in detection_sets:
            present = sorted(set(labels))
            self.single.update(present)
            for a, b in combinations(present, 2):
                self.pair[(a, b)] += 1
                self.pair[(b, a)] += 1

    def adversarial_absent(self, present: set[str], candidates: list[str], rng: random.Random | None = None,
                           top: int = 1) -> str | None:
        """The absent label co-occurring most with the present ones (ties: the more frequent, then name).

        With `rng` and `top` > 1, one of the `top` most co-occurring labels at random: still adversarial,
        but the same label is not injected into every pair (which would teach a word, not a rule)."""
        absent = [c for c in candidates if c not in present]
        if not absent:
            return None
        ranked = sorted(absent, key=lambda c: (-sum(self.pair[(p, c)] for p in present), -self.single[c], c))
        if rng is None or top <= 1:
            return ranked[0]
        return rng.choice(ranked[:top])


def _judge_dict(caption: str, dets: list[dict], vocab: Vocabulary, judge: JudgeConfig) -> dict:
    r = score_caption(caption, dets, vocab, judge)
    return {"score": round(r.score, 4), "hallucinated": r.hallucinated, "missed": r.missed, "partial": r.partial,
            "count_errors": len(r.count_errors), "relation_errors": len(r.relation_errors), "vague": r.vague,
            "n_words": r.n_words, "precision": round(r.precision, 4), "recall": round(r.recall, 4),
            "perfect": r.perfect}


def mine_image(rec: dict, dets: list[dict], width: int, vocab: Vocabulary, judge: JudgeConfig, cfg: MineConfig,
               image: str, generator: dict | None) -> tuple[list[dict], str | None]:
    """Mined pairs of one image's captions; also returns the best factual caption (for synthetic pairs)."""
    texts = list(rec.get("samples") or [])
    if cfg.use_greedy and rec.get("greedy"):
        texts.append(rec["greedy"])
    generated = {t.strip() for t in texts if t and t.strip()}
    cands = sorted(generated)
    judged = {t: _judge_dict(t, dets, vocab, judge) for t in cands}
    perfect = [t for t in cands if judged[t]["perfect"]]
    best = min(perfect, key=lambda t: (judged[t]["n_words"], t)) if perfect else None
    if best is None and cfg.chosen_from_detections:
        cap = detection_caption(dets, width, judge, vocab)
        if cap is not None:
            best = cap
            if cap not in judged:
                judged[cap] = _judge_dict(cap, dets, vocab, judge)
                cands.append(cap)
    options = []
    for a, b in combinations(cands, 2):
        sa, sb = judged[a]["score"], judged[b]["score"]
        if sa != sb and abs(sa - sb) >= cfg.min_margin:  # a tie is no preference, whatever min_margin says
            w, l_ = (a, b) if sa > sb else (b, a)
            options.append((round(abs(sa - sb), 6), w, l_))
    options.sort(key=lambda o: (-o[0], o[1], o[2]))
    kept, shorter, longer = [], 0, 0
    for margin, w, l_ in options:
        if len(kept) >= cfg.max_pairs_per_image:
            break
        if cfg.length_balance:
            is_shorter = len(w.split()) < len(l_.split())
            if is_shorter and shorter >= longer:
                continue
            shorter += is_shorter
            longer += len(w.split()) > len(l_.split())
        source_kind = "detections" if w not in generated else "mined"
        kept.append(make_pair(image_id=rec["image_id"], image=image, prompt=rec["prompt"], chosen=w, rejected=l_,
                              source="mined", kind=source_kind, grounding=rec.get("grounding"),
                              scores={"chosen": judged[w], "rejected": judged[l_]}, margin=margin,
                              generator=generator, boxes=[d["box"] for d in dets]))
    return kept, best


# ---------------------------------------------------------------------------------------------------------------
# Synthetic negatives: each takes a factual caption and returns a worse one, or None when it does not apply.
# ---------------------------------------------------------------------------------------------------------------

_NUM = {w: i for i, w in enumerate(NUMBER_WORDS)}


def add_object(caption: str, present: set[str], ctx: "SyntheticContext") -> str | None:
    extra = ctx.cooc.adversarial_absent(present, ctx.labels, ctx.rng, ctx.top)
    if extra is None:
        return None
    return caption.rstrip(". ") + f" and {noun_phrase(extra, 1, None)}."


def change_count(caption: str, present: set[str], ctx: "SyntheticContext") -> str | None:
    """One more of the first counted group ("two cups" -> "three cups"; "a red cup" -> "two red cups")."""
    from ..ground import plural

    m = re.search(r"\b(two|three|four|five|six|seven|eight|nine)\b", caption)
    if m:
        return caption[:m.start()] + NUMBER_WORDS[_NUM[m.group(1)] + 1] + caption[m.end():]
    for men in parse_caption(caption, ctx.vocab).mentions:
        if men.count == 1 and not men.negated:
            s, e = men.span
            art = re.search(r"\b(a|an|one)\s+((?:\w+\s+)?)$", caption[:s])
            if art:
                return caption[:art.start()] + "two " + art.group(2) + plural(caption[s:e]) + caption[e:]
    return None


def swap_sides(caption: str, present: set[str], ctx: "SyntheticContext") -> str | None:
    if not re.search(r"\b(left|right)\b", caption):
        return None
    return re.sub(r"\b(left|right)\b", lambda m: "right" if m.group(1) == "left" else "left", caption)


def _listed_phrases(caption: str) -> list[str]:
    """The noun phrases a listing caption joins ("two cups, a ball and a block." -> ["two cups", "a ball",
    "a block"]), sides dropped."""
    body = re.sub(r"\s+on the (left|right)\b", "", caption.strip().rstrip("."))
    return [p for p in re.split(r",\s*|\s+and\s+", body) if p.strip()]


def omit_object(caption: str, present: set[str], ctx: "SyntheticContext") -> str | None:
    """The same caption with one of its listed objects left out: true but incomplete ("two cups and a ball." ->
    "two cups."). The recall-preserving negative: DPO on hallucination negatives alone learns that naming less
    is safer; this pair says that leaving out what is there is worse too."""
    phrases = _listed_phrases(caption)
    if len(phrases) < 2:
        return None
    named = [i for i, p in enumerate(phrases) if any(m.label in present for m in parse_caption(p, ctx.vocab).mentions)]
    if not named:
        return None
    drop = ctx.rng.choice(named)
    return join_phrases([p for i, p in enumerate(phrases) if i != drop]) + "."


def repeat_object(caption: str, present: set[str], ctx: "SyntheticContext") -> str | None:
    """One listed phrase said twice ("a cup and a ball." -> "a cup, a cup and a ball."): the degenerate
    repetition small VLMs fall into, which states one object too many and, once DPO has pushed the probable
    phrases up, crowds out the objects that are there."""
    phrases = _listed_phrases(caption)
    if not phrases:
        return None
    i = ctx.rng.randrange(len(phrases))
    return join_phrases(phrases[: i + 1] + [phrases[i]] + phrases[i + 1:]) + "."


def make_vague(caption: str, present: set[str], ctx: "SyntheticContext") -> str | None:
    return ctx.rng.choice(VAGUE_CAPTIONS)


SYNTHETIC = {"add_object": add_object, "count": change_count, "swap_sides": swap_sides, "vague": make_vague,
             "omit_object": omit_object, "repeat": repeat_object}


@dataclass
class SyntheticContext:
    vocab: Vocabulary
    labels: list[str]
    cooc: Cooccurrence
    rng: random.Random
    top: int = 1  # adversarial absent labels drawn from the `top` most co-occurring


def synthetic_pairs(rec: dict, best: str, dets: list[dict], vocab: Vocabulary, judge: JudgeConfig,
                    cfg: MineConfig, ctx: SyntheticContext, image: str) -> list[dict]:
    """Synthetic rejected captions from the image's best caption; kept only when the judge agrees it is worse."""
    present = {vocab.canonical(d["label"]) for d in dets if d.get("score", 1.0) >= judge.min_score} - {None}
    kinds = list(cfg.synthetic)
    ctx.rng.shuffle(kinds)
    out = []
    chosen_j = _judge_dict(best, dets, vocab, judge)
    for kind in kinds:
        if len(out) >= cfg.synthetic_per_image:
            break
        bad = SYNTHETIC[kind](best, present, ctx)
        if not bad or bad == best:
            continue
        bad_j = _judge_dict(bad, dets, vocab, judge)
        if bad_j["score"] >= chosen_j["score"]:
            continue  # e.g. a swap the judge cannot check: not a trustworthy negative
        out.append(make_pair(image_id=rec["image_id"], image=image, prompt=rec["prompt"], chosen=best,
                             rejected=bad, source="synthetic", kind=kind, grounding=rec.get("grounding"),
                             scores={"chosen": chosen_j, "rejected": bad_j},
                             margin=round(chosen_j["score"] - bad_j["score"], 4), boxes=[d["box"] for d in dets]))
    return out


def context_pairs(rec: dict, best: str, dets: list[dict], width: int, height: int, vocab: Vocabulary,
                  judge: JudgeConfig, ground: GroundingConfig, prompt_cfg: PromptConfig, cfg: MineConfig,
                  ctx: SyntheticContext, image: str) -> list[dict]:
    """Pairs whose grounding context is wrong on purpose: the image, not the context, decides."""
    confident = [d for d in dets if d.get("score", 1.0) >= judge.min_score and vocab.canonical(d["label"])]
    present = {vocab.canonical(d["label"]) for d in confident}
    kinds = list(cfg.context)
    ctx.rng.shuffle(kinds)
    out = []
    for kind in kinds:
        if len(out) >= cfg.context_per_image:
            break
        if kind == "inject_false":
            extra = ctx.cooc.adversarial_absent(present, ctx.labels, ctx.rng, ctx.top)
            if extra is None:
                continue
            x = ctx.rng.uniform(0, width * 0.8)
            y = ctx.rng.uniform(0, height * 0.8)
            fake = {"label": extra, "score": 0.99, "box": [x, y, x + width * 0.2, y + height * 0.2]}
            g = grounding_text(dets + [fake], width, height, ground)
            rejected = best.rstrip(". ") + f" and {noun_phrase(extra, 1, None)}."
            chosen = best
        elif kind == "drop_true":
            if len(present) < 2:
                continue
            drop = ctx.rng.choice(sorted(present))
            kept = [d for d in dets if vocab.canonical(d["label"]) != drop]
            g = grounding_text(kept, width, height, ground)
            rejected = detection_caption(kept, width, judge, vocab)
            chosen = best
            if rejected is None:
                continue
        else:
            raise ValueError(f"unknown context pair kind {kind!r}")
        prompt = prompt_text(g, PromptConfig(prompt_cfg.instruction, grounded=True))
        cj, rj = _judge_dict(chosen, dets, vocab, judge), _judge_dict(rejected, dets, vocab, judge)
        if rj["score"] >= cj["score"]:
            continue
        out.append(make_pair(image_id=rec["image_id"], image=image, prompt=prompt, chosen=chosen, rejected=rejected,
                             source="context", kind=kind, grounding=g, scores={"chosen": cj, "rejected": rj},
                             margin=round(cj["score"] - rj["score"], 4), boxes=[d["box"] for d in dets]))
    return out
