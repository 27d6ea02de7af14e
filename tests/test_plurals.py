"""The one pluraliser: written forms must stay byte-identical to what the toolkit has always written (they are in
prompts and training captions), and read forms must stay what the judge has always accepted.

The expected values below were produced by the four pluralisers this module replaced (`ground.plural`,
`world.captions.PLURALS`, `embedded.names_kind`'s fallback and the judge's `pluralize`), before they were removed.
"""

from __future__ import annotations

import pytest

from vlm_dpo.judge import COCO_CLASSES, pluralize
from vlm_dpo.plurals import IRREGULAR_PLURALS, plural, plural_forms
from vlm_dpo.world.captions import noun_phrase
from vlm_dpo.world.scenes import KINDS

# world.captions.PLURALS, verbatim.
WORLD_PLURALS = {"cup": "cups", "bottle": "bottles", "ball": "balls", "block": "blocks", "book": "books",
                 "apple": "apples", "bowl": "bowls", "phone": "phones"}

# ground.plural over COCO_CLASSES, in order. "scissorses" is what grounding contexts have always said; see the
# module docstring of vlm_dpo/plurals.py before changing it.
COCO_PLURALS = [
    "people", "bicycles", "cars", "motorcycles", "airplanes", "buses", "trains", "trucks", "boats", "traffic lights",
    "fire hydrants", "stop signs", "parking meters", "benches", "birds", "cats", "dogs", "horses", "sheep", "cows",
    "elephants", "bears", "zebras", "giraffes", "backpacks", "umbrellas", "handbags", "ties", "suitcases",
    "frisbees", "skis", "snowboards", "sports balls", "kites", "baseball bats", "baseball gloves", "skateboards",
    "surfboards", "tennis rackets", "bottles", "wine glasses", "cups", "forks", "knives", "spoons", "bowls",
    "bananas", "apples", "sandwiches", "oranges", "broccolis", "carrots", "hot dogs", "pizzas", "donuts", "cakes",
    "chairs", "couches", "potted plants", "beds", "dining tables", "toilets", "tvs", "laptops", "mice", "remotes",
    "keyboards", "cell phones", "microwaves", "ovens", "toasters", "sinks", "refrigerators", "books", "clocks",
    "vases", "scissorses", "teddy bears", "hair driers", "toothbrushes",
]


def test_world_kinds_written_as_before():
    assert tuple(WORLD_PLURALS) == tuple(KINDS)
    assert {k: plural(k) for k in KINDS} == WORLD_PLURALS


def test_world_caption_noun_phrases():
    for kind, kinds in WORLD_PLURALS.items():
        assert noun_phrase(kind, 1, None) == ("an " if kind == "apple" else "a ") + kind
        assert noun_phrase(kind, 2, "red") == f"two red {kinds}"
        assert noun_phrase(kind, 11, None) == f"11 {kinds}"


def test_coco_classes_written_as_before():
    assert [plural(c) for c in COCO_CLASSES] == COCO_PLURALS


@pytest.mark.parametrize("word,expected", [
    # ground.plural's own test words, and its edge cases
    ("cup", "cups"), ("glass", "glasses"), ("person", "people"), ("strawberry", "strawberries"), ("toy", "toys"),
    ("y", "ys"), ("", "s"), ("box", "boxes"), ("dish", "dishes"), ("watch", "watches"),
    # only whole labels are irregular, case is kept, and "z" never took "-es" in written text
    ("Person", "Persons"), ("pocket knife", "pocket knifes"), ("quiz", "quizs"), ("child", "childs"),
    ("policeman", "policemans"), ("mug", "mugs"), ("coffee cup", "coffee cups"), ("sheep", "sheep"),
])
def test_written_form_edge_cases(word, expected):
    assert plural(word) == expected


def test_read_forms_of_vocabulary_names():
    # Every COCO class and world kind reads as its written plural, except where the reader knows more.
    differ = {c: plural_forms(c) for c in COCO_CLASSES + tuple(KINDS) if plural_forms(c) != (plural(c),)}
    assert differ == {"person": ("people", "persons"), "scissors": ("scissors",)}


@pytest.mark.parametrize("phrase,forms", [
    ("teddy bear", ("teddy bears",)), ("policeman", ("policemen",)), ("man", ("men",)), ("human", ("humans",)),
    ("quiz", ("quizes",)), ("toy", ("toys",)), ("pony", ("ponies",)), ("buffalo", ("buffalo", "buffaloes", "buffalos")),
    ("pocket knife", ("pocket knives",)), ("sheep", ("sheep",)), ("y", ("ys",)),
])
def test_read_forms(phrase, forms):
    assert plural_forms(phrase) == forms


def test_read_forms_custom_table_and_judge_name():
    assert plural_forms("cactus", {}) == ("cactuses",)  # a vocabulary with no irregular table
    assert plural_forms("cactus") == IRREGULAR_PLURALS["cactus"] == ("cacti", "cactuses")
    assert pluralize is plural_forms  # the judge's public name for it
