"""Synthetic VQA preference pairs (task "vqa"): the right short answer over a systematically wrong one, with the
detector as judge (its confident detections are the facts, as for caption pairs).

Per image, one question per family (vqa/questions.py; colour only where the detections carry colours read off the
image, vqa/colours.py, pairs.vqa_colours: a detector gives none), and the wrong answer the errors real VLMs make:
    existence      yes <-> no flipped                              kind vqa_yes_no
                   (an absent kind drawn uniformly, or with pairs.vqa_adversarial the co-occurring one: the
                   yes-bias real VLMs have is about those, POPE's adversarial split asks them)
    colour         another of the palette's colours                 kind vqa_colour
                   and the same question about the absent kind co-occurring most, the refusal over a colour
                                                                    kind vqa_false_premise
    counting       one too many (VLMs over-count)                   kind vqa_count
    spatial        the mirrored answer                              kind vqa_side
    false_premise  answering as if the object were there ("The phone is blue.") over the refusal
                                                                    kind vqa_false_premise
    listing        the list with the absent kind that co-occurs most with what is there (a hallucination), or
                   without one present kind (an omission), alternating    kind vqa_list_add / vqa_list_drop
and, for the counting and colour questions' (present) kinds, the answer over a refusal ("There is no cup."): the
unwarranted refusal, so that refusing false premises is not learnt as refusing every "what colour is the ..."
                                                                    kind vqa_refused
Every chosen answer is judged correct and every rejected one not (vqa/answers.py; tests/vqa/test_pairs.py).
"""

from __future__ import annotations

import random
from collections import Counter

from ..ground import PromptConfig, prompt_text
from ..pairs.dataset import make_pair
from .questions import listing_answer, make_questions, most_cooccurring, number_word, premise_twin, refusal

FAMILIES = ("existence", "counting", "spatial", "false_premise", "listing")
_PREMISE_CLAIMS = {"What colour": "The {label} is {colour}.", "What is the colour": "The {label} is {colour}.",
                   "Which colour": "The {label} is {colour}.", "Where": "The {label} is on the left.",
                   "How big": "The {label} is small.", "Which side": "It is on the right side."}


def wrong_answer(q: dict, counts: Counter, absent: list[str], cooc: Counter, rng: random.Random,
                 colours: tuple[str, ...] = ()) -> tuple[str, str]:
    """(rejected answer, kind) for question `q` (see the module docstring); `colours`: the palette's names."""
    family = q["family"]
    if family == "colour":
        return f"{rng.choice([c for c in colours if c != q['expected']])}.", "vqa_colour"
    if family in ("existence", "spatial"):
        flipped = {"yes": "no", "no": "yes"}[q["expected"]]
        return f"{flipped}.", "vqa_yes_no" if family == "existence" else "vqa_side"
    if family == "counting":
        return f"{number_word(q['expected'] + 1)}.", "vqa_count"
    if family == "false_premise":
        start = next(k for k in _PREMISE_CLAIMS if q["question"].startswith(k))
        colour = rng.choice(("red", "blue", "green", "yellow"))
        return _PREMISE_CLAIMS[start].format(label=q["label"], colour=colour), "vqa_false_premise"
    if family == "listing":
        present = sorted(counts)
        if absent and (len(present) == 1 or rng.random() < 0.5):
            extra = max(absent, key=lambda k: (sum(cooc[(p, k)] for p in present), k))
            kinds, kind = sorted(present + [extra]), "vqa_list_add"
        else:
            dropped = rng.choice(present)
            kinds, kind = [k for k in present if k != dropped], "vqa_list_drop"
        return listing_answer(counts, kinds), kind
    raise ValueError(f"no wrong answer for family {family!r}")


def vqa_pairs(record: dict, image: str, grounding: str | None, labels: list[str], cooc: Counter, *,
              min_score: float, grounded: bool = True, seed: int = 0, adversarial: float = 0.0,
              colours: tuple[str, ...] = ()) -> list[dict]:
    """The synthetic VQA pairs of one detections record ({image_id, width, detections}); `adversarial`: the share
    of "is there a ...?" about an absent kind asked about the one that co-occurs most (make_questions). With
    `colours` (a palette's names) a colour question joins for a detection with a "color" (vqa/colours.py)."""
    facts = [d for d in record["detections"] if d["score"] >= min_score]
    counts = Counter(d["label"] for d in facts)
    absent = [k for k in labels if k not in counts]
    rng = random.Random(f"vqa-pairs/{seed}/{record['image_id']}")
    args = (facts, labels, record["image_id"])
    questions = make_questions(*args, width=record["width"], seed=seed, cooc=cooc, families=FAMILIES,
                               adversarial=adversarial)
    if len(colours) > 1:  # asked apart, so that the other families' questions are the same with or without it
        for q in make_questions(*args, width=record["width"], seed=seed, families=("colour",)):
            questions.append(q)
            # and its twin about the absent kind co-occurring most, refused: the pair set then holds the contrast
            # (same words, present vs absent kind) that a model must learn to answer one and refuse the other. On
            # val the twins were not enough for the embedded VLM (README, "Robot questions").
            if absent:
                twin_rng = random.Random(f"vqa-twin/{seed}/{record['image_id']}")
                questions.append(premise_twin(q, most_cooccurring(sorted(counts), absent, cooc, twin_rng)))
    out = []
    for q in questions:
        wrong = [wrong_answer(q, counts, absent, cooc, rng, colours)]
        if q["family"] in ("counting", "colour"):
            wrong.append((refusal(q["label"]), "vqa_refused"))
        for rejected, kind in wrong:
            out.append(make_pair(image_id=record["image_id"], image=image, task="vqa", source="synthetic", kind=kind,
                                 prompt=prompt_text(grounding, PromptConfig(q["question"], grounded)),
                                 grounding=grounding if grounded else None, chosen=q["answer_text"],
                                 rejected=rejected, boxes=[d["box"] for d in facts]))
    return out
