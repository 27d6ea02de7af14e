"""The control for false-premise questions: the same phrasing asked about a kind that IS there.

A false-premise question ("Where is the phone?" with no phone) is answered right by a refusal. A model that refuses
every question phrased that way, whatever is on the table, scores a perfect rejection rate without checking
anything. So the evaluation asks each image's false-premise question a second time, in the same words, about a
present kind ("Where is the cup?"), where a refusal is wrong (verdict `refused_wrongly`) and any answer that is not
a refusal is warranted. vqa/metrics.py then reports

    true_premise_refusal       = refusals / control questions
    premise_balanced_accuracy  = (false_premise_rejection + 1 - true_premise_refusal) / 2

0.5 is a model that refuses (or answers) regardless of the premise, 1.0 one that refuses exactly the false ones.
Control questions are their own family (CONTROL_FAMILY), outside the per-family accuracies and `overall`, so those
stay comparable with evaluations made before the control existed.

The same contrast as training pairs (pairs.vqa_premise_control, `true_premise_pairs`): each image's false-premise
question asked about a present kind with one instance, whose box answers it, chosen over the refusal:

    "Where is the cup?"                        "The cup is on the left." over "There is no cup."   kind vqa_true_premise
    "Which side of the table is the cup on?"   "It is on the left side." (or "It is in the middle.")
    "How big is the cup?"                      "The cup is small." (the box's longer side under a quarter of the
                                               image's width; "large" otherwise: a coarse reading of the box)
    "What colour is the cup?"                  "The cup is red." (only with the colour read off the image,
                                               pairs.vqa_colours; otherwise no pair)
Sides are the image's thirds by box centre, as the grounding context's positions. Next to the false-premise pair of
the same words (the refusal over a claim), a model can no longer fit both by the phrasing; it has to check the asked
kind.

Its own module, not vqa/questions.py or vqa/pairs.py: those are part of the embedded VLM's cache key (the SFT data
teaches their questions and wrong answers), and neither the control nor its pairs are SFT data. (The answers read
off a box, `premise_answer`, live in vqa/questions.py: vlm.sft.premise=cooccur teaches them.)
"""

from __future__ import annotations

import random
from collections import Counter

from ..ground import PromptConfig, prompt_text
from ..pairs.dataset import make_pair
from .questions import make_questions, premise_answer, premise_twin, refusal

CONTROL_FAMILY = "premise_control"


def premise_control(question: dict, label: str) -> dict:
    """False-premise `question` in its own words, asked about `label`, a kind that is there."""
    try:
        same_words = premise_twin(question, label)  # finds the phrasing as the colour questions' twins do
    except StopIteration:
        raise ValueError(f"not a false-premise phrasing of vqa/questions.py: {question['question']!r}") from None
    return same_words | {"family": CONTROL_FAMILY, "expected": "answer", "answer_text": ""}


def premise_controls(questions: list[dict], objects_of: dict[str, list[dict]], seed: int = 0) -> list[dict]:
    """One control per false-premise question in `questions`: its phrasing about a present kind of that image
    (`objects_of[image_id]`: [{label, ...}]), a kind with one instance where there is one (so that "where is the
    cup?" has one answer), drawn from the image's own seeded stream."""
    out = []
    for q in questions:
        if q["family"] != "false_premise":
            continue
        counts = Counter(o["label"] for o in objects_of.get(q["image_id"], []))
        if not counts:
            continue
        single = sorted(k for k, n in counts.items() if n == 1)
        rng = random.Random(f"premise-control/{seed}/{q['image_id']}")
        out.append(premise_control(q, rng.choice(single or sorted(counts))))
    return out


def true_premise_pairs(record: dict, image: str, grounding: str | None, labels: list[str], cooc: Counter, *,
                       min_score: float, grounded: bool = True, seed: int = 0, adversarial: float = 0.0) -> list[dict]:
    """The vqa_true_premise pair of one detections record ({image_id, width, height, detections}; see the module
    docstring): its false-premise question (the one vqa/pairs.py makes for it, same arguments) asked about a
    confident single-instance kind that answers it. [] when there is none."""
    from .pairs import FAMILIES as PAIR_FAMILIES

    facts = [d for d in record["detections"] if d["score"] >= min_score]
    counts = Counter(d["label"] for d in facts)
    questions = make_questions(facts, labels, record["image_id"], width=record["width"], seed=seed, cooc=cooc,
                               families=PAIR_FAMILIES, adversarial=adversarial)
    out = []
    for q in questions:
        if q["family"] != "false_premise":
            continue
        answerable = []
        for d in sorted((d for d in facts if counts[d["label"]] == 1), key=lambda d: d["label"]):
            control = premise_control(q, d["label"])
            answer = premise_answer(control["question"], d["label"], d, record["width"], record["height"])
            if answer is not None:
                answerable.append((control, answer))
        if not answerable:
            continue
        control, answer = random.Random(f"premise-control-pairs/{seed}/{record['image_id']}").choice(answerable)
        out.append(make_pair(image_id=record["image_id"], image=image, task="vqa", source="synthetic",
                             kind="vqa_true_premise",
                             prompt=prompt_text(grounding, PromptConfig(control["question"], grounded)),
                             grounding=grounding if grounded else None, chosen=answer,
                             rejected=refusal(control["label"]), boxes=[d["box"] for d in facts]))
    return out
