"""Questions a robot asks about a table, made from what is known to be there (detections, or the world's ground
truth for evaluation), each with the answer that is right for it.

Families (one question per family and image where the family applies):
    existence      "Is there a cup on the table?"              yes / no (present or absent kind, balanced)
    counting       "How many cups are there?"                  the number of instances
    colour         "What colour is the cup?"                   the colour (a kind with one instance of known colour)
    spatial        "Is the cup left of the ball?"              yes / no (two single-instance kinds set apart)
    false_premise  "What colour is the phone?" (no phone)      a refusal ("There is no phone.")
    listing        "Which objects can the robot pick up?"      the kinds present
Every family has several phrasings; which one an image gets is drawn from its own seeded stream. The false premise
asks about the absent kind that co-occurs most with the present ones (as POPE's adversarial split does), so a
model that guesses from co-occurrence is caught; `adversarial` is the share of the existence questions about an
absent kind that ask about that kind too (0, the default, draws it uniformly from the absent kinds). Spatial
questions compare box centres in the image's x (image left = smaller x) and are only asked when the two centres
are at least `min_gap` of the width apart, so the answer does not hinge on a few pixels.

A question is a dict: {family, question, label, other, expected, answer_text} where `expected` is the judged
answer (see answers.py: "yes" / "no" / int / colour / "left" / "right" / sorted list of labels / "refusal") and
`answer_text` the short reference answer a model should give (for SFT and synthetic pairs).
"""

from __future__ import annotations

import random
from collections import Counter

from ..ground import grid_position
from ..pairs.mine import Cooccurrence
from ..plurals import plural
from ..world.captions import NUMBER_WORDS, article, join_phrases, noun_phrase

FAMILIES = ("existence", "counting", "colour", "spatial", "false_premise", "listing")

PHRASINGS = {
    "existence": ("Is there {a} {label} on the table?", "Do you see {a} {label}?", "Is {a} {label} in the image?"),
    "counting": ("How many {labels} are there?", "How many {labels} can you see?", "Count the {labels} on the table."),
    "colour": ("What colour is the {label}?", "What is the colour of the {label}?", "Which colour does the {label} have?"),
    "spatial": ("Is the {label} left of the {other}?", "Is the {label} to the right of the {other}?",
                "Is the {label} on the left side of the {other}?", "Is the {label} on the right side of the {other}?"),
    # about an absent kind, phrased as if it were there
    "false_premise": ("What colour is the {label}?", "Where is the {label}?", "How big is the {label}?",
                      "Which side of the table is the {label} on?"),
    "listing": ("Which objects can the robot pick up?", "List the objects on the table.",
                "What objects are on the table?"),
}


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def cooccurrence(scenes: list[list[str]]) -> Counter:
    """How often two kinds appear in the same image (both orders), from lists of labels per image."""
    return Cooccurrence(scenes).pair


def refusal(label: str) -> str:
    """The short answer that refuses a question about an absent kind: "There is no phone." """
    return f"There is no {label}."


def premise_twin(q: dict, label: str) -> dict:
    """Question `q` (its phrasing) asked about the absent kind `label` instead: a false premise, to be refused."""
    template = next(t for t in PHRASINGS[q["family"]] if t.format(label=q["label"]) == q["question"])
    return {"image_id": q["image_id"], "family": "false_premise", "question": template.format(label=label),
            "label": label, "other": "", "expected": "refusal", "answer_text": refusal(label)}


def premise_answer(question: str, label: str, detection: dict, width: float, height: float) -> str | None:
    """The answer to a false-premise phrasing asked about `label`, read off its one `detection` (box, and "color"
    where the image's colour was read); None where the detection cannot answer it (a colour not read). The side is
    the column of the grounding context's 3x3 position (ground.grid_position), so the two never disagree."""
    box = detection["box"]
    column = grid_position(box, width, height).split()[-1]  # "top left" -> "left"; "top", "center" -> the middle
    side = column if column in ("left", "right") else "middle"
    if question.startswith("Where"):
        return f"The {label} is in the middle." if side == "middle" else f"The {label} is on the {side}."
    if question.startswith("Which side"):
        return "It is in the middle." if side == "middle" else f"It is on the {side} side."
    if question.startswith("How big"):
        return f"The {label} is {'small' if max(box[2] - box[0], box[3] - box[1]) < width / 4 else 'large'}."
    if question.startswith("What colour"):
        return f"The {label} is {detection['color']}." if detection.get("color") else None
    raise ValueError(f"not a false-premise phrasing of vqa/questions.py: {question!r}")


def listing_answer(counts: dict[str, int], kinds: list[str]) -> str:
    """'A cup, two balls and an apple.' for `kinds` in that order."""
    text = join_phrases([noun_phrase(k, counts.get(k, 1), None) for k in kinds]) + "."
    return text[0].upper() + text[1:]


def most_cooccurring(present: list[str], absent: list[str], cooc: Counter, rng: random.Random) -> str:
    """The absent kind seen most often with the present ones (ties drawn with `rng`): POPE's adversarial choice."""
    score = {k: sum(cooc[(p, k)] for p in present) for k in absent}
    best = max(score.values())
    return rng.choice([k for k in absent if score[k] == best])


def make_questions(objects: list[dict], labels: list[str], image_id: str, *, width: float, seed: int = 0,
                   cooc: Counter | None = None, families: tuple[str, ...] = FAMILIES,
                   min_gap: float = 0.15, adversarial: float = 0.0) -> list[dict]:
    """The questions of one image. objects: [{label, box (xyxy), color (optional)}] known to be there;
    labels: every kind the vocabulary knows (absent kinds are drawn from it)."""
    if not 0.0 <= adversarial <= 1.0:
        raise ValueError(f"adversarial must lie in [0, 1], got {adversarial}")
    rng = random.Random(f"vqa/{seed}/{image_id}")
    counts = Counter(o["label"] for o in objects)
    present = sorted(counts)
    absent = [k for k in labels if k not in counts]
    cooc = cooc or Counter()
    out: list[dict] = []

    def add(family: str, expected, answer_text: str, label: str = "", other: str = "", **fmt) -> None:
        template = rng.choice(PHRASINGS[family])
        text = template.format(label=label, other=other, a=article(label) if label else "",
                               labels=plural(label) if label else "", **fmt)
        if family == "spatial" and "right" in template:  # the template asks the mirror question
            expected = {"yes": "no", "no": "yes"}[expected]
        out.append({"image_id": image_id, "family": family, "question": text, "label": label, "other": other,
                    "expected": expected, "answer_text": answer_text if family != "spatial" else f"{expected}."})

    if "existence" in families and (present or absent):
        ask_present = bool(present) and (not absent or rng.random() < 0.5)
        label = rng.choice(present if ask_present else absent)
        # Its own stream, so that every other question of the image is the same whatever the share.
        adversary = random.Random(f"vqa-adversarial/{seed}/{image_id}")
        if not ask_present and present and adversary.random() < adversarial:
            label = most_cooccurring(present, absent, cooc, adversary)
        add("existence", "yes" if ask_present else "no", "yes." if ask_present else "no.", label)
    if "counting" in families and present:
        label = rng.choice(present)
        add("counting", counts[label], f"{number_word(counts[label])}.", label)
    if "colour" in families:
        single = [o for o in objects if counts[o["label"]] == 1 and o.get("color")]
        if single:
            o = rng.choice(single)
            add("colour", o["color"], f"{o['color']}.", o["label"])
    if "spatial" in families:
        singles = sorted((o for o in objects if counts[o["label"]] == 1), key=lambda o: o["label"])
        centre = {o["label"]: (o["box"][0] + o["box"][2]) / 2 for o in singles}
        apart = [(a, b) for a in centre for b in centre if a != b and abs(centre[a] - centre[b]) >= min_gap * width]
        if apart:
            a, b = rng.choice(apart)
            add("spatial", "yes" if centre[a] < centre[b] else "no", "", a, b)
    if "false_premise" in families and absent and present:
        label = most_cooccurring(present, absent, cooc, rng)
        add("false_premise", "refusal", refusal(label), label)
    if "listing" in families and present:
        add("listing", present, listing_answer(counts, present))
    return out
