"""Reference captions of world scenes, and the systematically wrong ones that make the SFT model hallucinate.

A good caption names every object group, left to right, with its count and (when all objects of the group
share it) its colour: "two red cups, a blue ball and a green book." Two groups that sit clearly apart get
their sides: "a red cup on the left and a blue ball on the right."

Real VLMs hallucinate systematically (co-occurrence priors, rounded counts, vague hedging), not at random;
random label noise never outvotes the right word in greedy decoding. So the SFT mixture corrupts a share of
captions with the same few systematic errors, giving DPO something real and measurable to fix.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass

from ..plurals import plural

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# Co-occurrence prior of the corrupted captions: a scene with the key but without the value is described
# with the value added (like "fork" next to "plate" in COCO-trained captioners).
COOCCUR = {"bowl": "apple", "cup": "bottle", "book": "phone"}
VAGUE_CAPTIONS = ("some objects on a table.", "a few things on the table.", "various items on a table.")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(label: str, count: int, color: str | None) -> str:
    noun = label if count == 1 else plural(label)
    words = [color, noun] if color else [noun]
    if count == 1:
        return f"{article(words[0])} {' '.join(words)}"
    return f"{NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else count} {' '.join(words)}"


def join_phrases(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


@dataclass
class Group:
    label: str
    count: int
    color: str | None  # None when the group's objects differ in colour
    cx: float  # mean box centre x (pixels)
    first_cx: float  # centre x of the group's leftmost object


def group_objects(objects: list[dict]) -> list[Group]:
    """Objects -> one group per kind, ordered by each group's leftmost object: the order the grounding
    context lists them in (ground.grounding_text), so a caption can follow its context word for word."""
    by_label: OrderedDict[str, list[dict]] = OrderedDict()
    for o in objects:
        by_label.setdefault(o["label"], []).append(o)
    groups = []
    for label, objs in by_label.items():
        colors = {o.get("color") for o in objs}
        color = colors.pop() if len(colors) == 1 else None
        centres = [(o["box"][0] + o["box"][2]) / 2 for o in objs]
        groups.append(Group(label, len(objs), color, sum(centres) / len(centres), min(centres)))
    groups.sort(key=lambda g: (g.first_cx, g.label))
    return groups


def reference_caption(objects: list[dict], width: int, sides: bool = True) -> str:
    """The factual, concise caption of a scene's objects (list of {label, color, box})."""
    groups = group_objects(objects)
    if not groups:
        return "an empty table."
    phrases = [noun_phrase(g.label, g.count, g.color) for g in groups]
    if sides and len(groups) == 2 and groups[1].cx - groups[0].cx > 0.35 * width:
        return f"{phrases[0]} on the left and {phrases[1]} on the right."
    return join_phrases(phrases) + "."


@dataclass
class CorruptionRates:
    cooccur: float = 0.6  # share of eligible scenes whose caption gains the co-occurring absent object
    count: float = 0.25  # share of scenes whose multi-object group is said one too many
    vague: float = 0.1  # share of captions replaced by a vague one


def corrupted_caption(objects: list[dict], width: int, rng: random.Random, rates: CorruptionRates) -> tuple[str, list[str]]:
    """A caption with the SFT mixture's systematic errors; returns (caption, names of the errors applied)."""
    if rng.random() < rates.vague:
        return rng.choice(VAGUE_CAPTIONS), ["vague"]
    groups = group_objects(objects)
    present = {g.label for g in groups}
    applied = []
    for g in groups:
        if g.count >= 2 and rng.random() < rates.count:
            g.count += 1
            applied.append("count")
            break
    phrases = [noun_phrase(g.label, g.count, g.color) for g in groups]
    for key, value in COOCCUR.items():
        if key in present and value not in present and rng.random() < rates.cooccur:
            phrases.append(noun_phrase(value, 1, None))
            applied.append("cooccur")
    if not applied:
        return reference_caption(objects, width), []
    return join_phrases(phrases) + ".", applied
