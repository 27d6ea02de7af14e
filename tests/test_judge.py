"""The caption judge: parsing tricky captions, scoring against detections, and the world's own captions.

Every expected value below was worked out by hand from the rules in `vlm_dpo/judge.py`'s docstrings.
"""

from __future__ import annotations

import json
import random

import pytest

from vlm_dpo.judge import (
    COCO_CLASSES, JudgeConfig, ParsedCaption, Vocabulary, parse_caption, pluralize, score_caption,
)
from vlm_dpo.world.captions import CorruptionRates, corrupted_caption, reference_caption
from vlm_dpo.world.scenes import KINDS, sample_scene

WORLD = Vocabulary.world()
COCO = Vocabulary.coco()
VOCABS = {"world": WORLD, "coco": COCO}


def det(label, box, score=None, color=None):
    d = {"label": label, "box": list(box)}
    if score is not None:
        d["score"] = score
    if color is not None:
        d["color"] = color
    return d


def mentions(text, vocab="world"):
    p = parse_caption(text, VOCABS[vocab])
    return [(m.label, m.count, m.plural, m.color, m.negated) for m in p.mentions]


# (caption, vocabulary, [(label, count, plural, color, negated), ...])
PARSE_CASES = [
    # plurals and counts
    ("two cups", "world", [("cup", 2, True, None, False)]),
    ("cups", "world", [("cup", None, True, None, False)]),
    ("a cup", "world", [("cup", 1, False, None, False)]),
    ("one cup", "world", [("cup", 1, False, None, False)]),
    ("3 balls", "world", [("ball", 3, True, None, False)]),
    ("seven blocks", "world", [("block", 7, True, None, False)]),
    ("twelve cubes", "world", [("block", 12, True, None, False)]),
    ("a pair of books", "world", [("book", 2, True, None, False)]),
    ("a couple of apples", "world", [("apple", 2, True, None, False)]),
    ("both bowls", "world", [("bowl", 2, True, None, False)]),
    ("several bottles", "world", [("bottle", None, True, None, False)]),
    ("a few phones", "world", [("phone", None, True, None, False)]),
    ("some balls", "world", [("ball", None, True, None, False)]),
    ("two balls and one cup", "world", [("ball", 2, True, None, False), ("cup", 1, False, None, False)]),
    ("the two cups", "world", [("cup", 2, True, None, False)]),
    ("two sheep", "coco", [("sheep", 2, True, None, False)]),
    ("the sheep", "coco", [("sheep", None, False, None, False)]),
    ("two people", "coco", [("person", 2, True, None, False)]),
    ("three knives", "coco", [("knife", 3, True, None, False)]),
    # negation
    ("no cups on the table", "world", [("cup", None, True, None, True)]),
    ("a ball but no cup", "world", [("ball", 1, False, None, False), ("cup", None, False, None, True)]),
    ("there are no cups or balls", "world", [("cup", None, True, None, True), ("ball", None, True, None, True)]),
    ("there are no cups and a ball", "world", [("cup", None, True, None, True), ("ball", 1, False, None, False)]),
    ("a cup without a ball", "world", [("cup", 1, False, None, False), ("ball", 1, False, None, True)]),
    ("not a cup", "world", [("cup", 1, False, None, True)]),
    ("there isn't a single bowl", "world", [("bowl", 1, False, None, True)]),
    ("I don't see any mugs", "world", [("cup", None, True, None, True)]),
    ("the ball is not a cup", "world", [("ball", None, False, None, False), ("cup", 1, False, None, True)]),
    ("zero apples", "world", [("apple", 0, True, None, True)]),
    # synonyms and multi-word names
    ("a mug", "world", [("cup", 1, False, None, False)]),
    ("two coffee mugs", "world", [("cup", 2, True, None, False)]),
    ("a cell phone and a smartphone", "world", [("phone", 1, False, None, False), ("phone", 1, False, None, False)]),
    ("a teddy bear", "coco", [("teddy bear", 1, False, None, False)]),
    ("a hot dog and a dog", "coco", [("hot dog", 1, False, None, False), ("dog", 1, False, None, False)]),
    ("two hot dogs", "coco", [("hot dog", 2, True, None, False)]),
    ("a man on a motor bike", "coco", [("person", 1, False, None, False), ("motorcycle", 1, False, None, False)]),
    ("a baby bird", "coco", [("bird", 1, False, None, False)]),  # not a person
    ("a toilet seat", "coco", [("toilet", 1, False, None, False)]),  # not a chair
    ("a wooden dining table", "coco", [("dining table", 1, False, None, False)]),
    ("wine glasses", "coco", [("wine glass", None, True, None, False)]),
    # whole words only, any case, punctuation
    ("a cupboard", "world", []),
    ("a booklet and a football", "world", []),
    ("CUPS!!!", "world", [("cup", None, True, None, False)]),
    ("The Cup's handle.", "world", [("cup", None, False, None, False)]),
    ("a cell-phone", "world", [("phone", 1, False, None, False)]),
    # colours
    ("a red cup", "world", [("cup", 1, False, "red", False)]),
    ("two small red cups", "world", [("cup", 2, True, "red", False)]),
    ("red and blue balls", "world", [("ball", None, True, None, False)]),
    ("a grey bowl", "world", [("bowl", 1, False, "gray", False)]),
    ("an orange cat and an orange", "coco", [("cat", 1, False, "orange", False), ("orange", 1, False, None, False)]),
    ("an orange block", "world", [("block", 1, False, "orange", False)]),
    ("a man in an orange shirt holding oranges", "coco",
     [("person", 1, False, None, False), ("orange", None, True, None, False)]),
]


@pytest.mark.parametrize("text,vocab,expected", PARSE_CASES)
def test_parse_mentions(text, vocab, expected):
    assert mentions(text, vocab) == expected


def test_mention_span_and_phrase():
    p = parse_caption("I see a cell phone.", WORLD)
    (m,) = p.mentions
    assert m.span == (8, 18)
    assert m.phrase == "cell phone"
    p = parse_caption("The Cup's handle.", WORLD)
    assert p.mentions[0].phrase == "Cup"  # the possessive is not part of the name


def test_negation_kinds():
    # "no X" states absence; "the ball is not a cup" only denies an identity.
    assert parse_caption("no cups", WORLD).mentions[0].claims_absent
    assert parse_caption("there is not a cup", WORLD).mentions[0].claims_absent
    assert not parse_caption("the ball is not a cup", WORLD).mentions[1].claims_absent


RELATION_CASES = [
    ("a cup to the left of a ball", [("cup", "left_of", "ball")]),
    ("a cup is on the left side of a ball", [("cup", "left_of", "ball")]),
    ("the book is right of the apple", [("book", "right_of", "apple")]),
    ("a bowl above a phone", [("bowl", "above", "phone")]),
    ("a bowl sits under a phone", [("bowl", "below", "phone")]),
    ("a red cup on the left and a blue ball on the right.", [("cup", "left_of", "ball")]),
    ("a ball on the right and a cup on the left", [("ball", "right_of", "cup")]),
    ("a bowl at the top and an apple at the bottom", [("bowl", "above", "apple")]),
    ("a cup next to a ball", []),
    ("a cup on the left. a ball on the right.", []),  # not across sentences
]


@pytest.mark.parametrize("text,expected", RELATION_CASES)
def test_parse_relations(text, expected):
    p = parse_caption(text, WORLD)
    assert [(r.subject, r.relation, r.object) for r in p.relations] == expected


VAGUE_CASES = [
    ("some objects on a table.", ["objects"]),
    ("a few things on the table.", ["things"]),
    ("various items on a table.", ["various", "items"]),
    ("maybe a cup, possibly some kind of ball", ["maybe", "possibly", "some kind of"]),
    ("there might be something here", ["might", "something"]),
    ("two red cups and a blue ball.", []),
]


@pytest.mark.parametrize("text,expected", VAGUE_CASES)
def test_parse_vague(text, expected):
    assert parse_caption(text, WORLD).vague == expected


def test_unknown_nouns_and_word_count():
    p = parse_caption("a banana and a cup on an empty table.", WORLD)
    assert p.unknown_nouns == ["banana", "table"]
    assert [m.label for m in p.mentions] == ["cup"]
    assert p.n_words == 9
    assert parse_caption("two red cups, a blue ball and a green book.", WORLD).n_words == 10


# ------------------------------------------------------------------------------------------------ scoring

def test_score_covered_missed_recall():
    dets = [det("cup", [0, 0, 10, 10], 0.9), det("cup", [20, 0, 30, 10], 0.8), det("ball", [50, 0, 60, 10], 0.95),
            det("book", [80, 0, 90, 10], 0.7)]
    r = score_caption("two red cups and a blue ball.", dets, WORLD)
    assert r.covered == ["cup", "ball"]
    assert r.missed == ["book"]
    assert r.hallucinated == [] and r.count_errors == [] and r.color_errors == []  # no colours to check
    assert r.recall == pytest.approx(2 / 3)
    assert r.precision == 1.0
    assert r.n_words == 7
    assert r.score == pytest.approx(2 / 3)


def test_score_synonyms_on_both_sides():
    r = score_caption("a mug", [det("cup", [0, 0, 1, 1])], WORLD)
    assert r.covered == ["cup"] and r.score == pytest.approx(1.0)
    r = score_caption("a cup", [det("Mug", [0, 0, 1, 1])], WORLD)  # a detector that says "mug"
    assert r.covered == ["cup"] and r.missed == []


def test_score_whole_word():
    r = score_caption("a cupboard and a ball", [det("ball", [0, 0, 1, 1])], WORLD)
    assert r.hallucinated == [] and r.score == pytest.approx(1.0)


def test_score_hallucination_and_precision():
    # recall 1/1; hallucinated bottle; precision 1/2; score 1 - 1 = 0
    r = score_caption("a cup and a bottle", [det("cup", [0, 0, 1, 1])], WORLD)
    assert r.hallucinated == ["bottle"]
    assert r.precision == pytest.approx(0.5)
    assert r.score == pytest.approx(0.0)


def test_score_negation():
    dets = [det("ball", [0, 0, 1, 1])]
    # "a ball but no cup": the negated cup is not a hallucination
    r = score_caption("a ball but no cup", dets, WORLD)
    assert r.hallucinated == [] and r.negation_errors == [] and r.score == pytest.approx(1.0)
    # "a cup and no ball" with a ball there: cup hallucinated (-1), ball said absent (-1), recall 0
    r = score_caption("a cup and no ball", dets, WORLD)
    assert r.hallucinated == ["cup"]
    assert r.negation_errors == ["ball"]
    assert r.missed == ["ball"]
    assert r.score == pytest.approx(0 - 1.0 - 1.0)
    # "the ball is not a cup": denies identity, says nothing about absence
    r = score_caption("the ball is not a cup", dets + [det("cup", [5, 5, 6, 6])], WORLD)
    assert r.negation_errors == [] and r.missed == ["cup"] and r.score == pytest.approx(0.5)


def test_score_counts():
    cups = [det("cup", [0, 0, 1, 1], 0.9), det("cup", [2, 0, 3, 1], 0.8)]
    assert score_caption("two cups", cups, WORLD).count_errors == []
    r = score_caption("3 cups", cups, WORLD)
    assert [(e.label, e.stated, e.detected) for e in r.count_errors] == [("cup", 3, 2)]
    assert r.score == pytest.approx(1.0 - 0.5)
    # counts add up over mentions
    assert score_caption("a red cup and a blue cup", cups, WORLD).count_errors == []
    assert len(score_caption("a cup", cups, WORLD).count_errors) == 1
    # no stated number: nothing to check
    assert score_caption("cups", cups, WORLD).count_errors == []
    # an uncertain third cup makes "three" and "two" both acceptable, "four" not
    unsure = cups + [det("cup", [4, 0, 5, 1], 0.4)]
    assert score_caption("three cups", unsure, WORLD).count_errors == []
    assert score_caption("two cups", unsure, WORLD).count_errors == []
    r = score_caption("four cups", unsure, WORLD)
    assert [(e.label, e.stated, e.detected) for e in r.count_errors] == [("cup", 4, 2)]


def test_score_colours_need_coloured_detections():
    objs = [det("cup", [0, 0, 1, 1], color="red"), det("cup", [2, 0, 3, 1], color="blue")]
    assert score_caption("a red cup and a blue cup", objs, WORLD).color_errors == []
    r = score_caption("two red cups", objs, WORLD)  # only one of them is red
    assert [(e.label, e.stated) for e in r.color_errors] == [("cup", "red")]
    assert r.score == pytest.approx(1.0 - 0.25)
    r = score_caption("a green cup", [det("cup", [0, 0, 1, 1])], WORLD)  # detector without colours
    assert r.color_errors == []


CUP_LEFT = [det("cup", [0, 0, 10, 10]), det("ball", [50, 0, 60, 10])]  # centres x=5 and x=55
CUP_RIGHT = [det("cup", [80, 0, 90, 10]), det("ball", [10, 0, 20, 10])]  # centres x=85 and x=15


@pytest.mark.parametrize("caption,dets,n_errors,score", [
    ("a cup to the left of a ball", CUP_LEFT, 0, 1.0),
    ("a cup to the left of a ball", CUP_RIGHT, 1, 0.5),
    ("a cup on the left and a ball on the right", CUP_LEFT, 0, 1.0),
    ("a cup on the left and a ball on the right", CUP_RIGHT, 1, 0.5),
    ("a ball is right of a cup", CUP_LEFT, 0, 1.0),
    ("a ball is right of a cup", CUP_RIGHT, 1, 0.5),
    # cup centre y=5, ball centre y=55: the cup is above
    ("a cup above a ball", [det("cup", [0, 0, 10, 10]), det("ball", [0, 50, 10, 60])], 0, 1.0),
    ("a cup below a ball", [det("cup", [0, 0, 10, 10]), det("ball", [0, 50, 10, 60])], 1, 0.5),
    # the ball is absent: the relation is not scored, the ball is a hallucination (1 - 1)
    ("a cup to the left of a ball", [det("cup", [80, 0, 90, 10])], 0, 0.0),
])
def test_score_relations(caption, dets, n_errors, score):
    r = score_caption(caption, dets, WORLD)
    assert len(r.relation_errors) == n_errors
    assert r.score == pytest.approx(score)


def test_relation_is_existential_over_instances():
    # one cup left of the ball, one right of it: "a cup to the left of a ball" holds
    dets = [det("cup", [0, 0, 10, 10]), det("cup", [80, 0, 90, 10]), det("ball", [40, 0, 50, 10])]
    assert score_caption("a cup to the left of a ball", dets, WORLD).relation_errors == []


def test_score_vague():
    cup = [det("cup", [0, 0, 1, 1])]
    r = score_caption("some objects on a table.", cup, WORLD)  # recall 0, one vague noun
    assert r.vague == 1 and r.missed == ["cup"]
    assert r.score == pytest.approx(-0.25)
    r = score_caption("various items on a table.", cup, WORLD)
    assert r.vague == 2 and r.score == pytest.approx(-0.5)


def test_abstention_uncertain_band():
    cfg = JudgeConfig(min_score=0.5, uncertain_low=0.3)
    dets = [det("cup", [0, 0, 1, 1], 0.9), det("ball", [2, 0, 3, 1], 0.4)]
    r = score_caption("a cup and a ball", dets, WORLD, cfg)
    assert r.covered == ["cup"] and r.unknown == ["ball"] and r.hallucinated == []
    assert r.recall == 1.0 and r.precision == 1.0 and r.score == pytest.approx(1.0)
    # an unmentioned uncertain object is not missed
    r = score_caption("a cup", dets, WORLD, cfg)
    assert r.missed == [] and r.score == pytest.approx(1.0)
    # below the band the detection is ignored: the ball becomes a hallucination
    dets[1]["score"] = 0.2
    r = score_caption("a cup and a ball", dets, WORLD, cfg)
    assert r.hallucinated == ["ball"] and r.unknown == [] and r.score == pytest.approx(0.0)


def test_abstention_out_of_vocabulary():
    # a noun the vocabulary does not know is never wrong ...
    r = score_caption("a cup and a banana", [det("cup", [0, 0, 1, 1])], WORLD)
    assert r.hallucinated == [] and r.unknown_nouns == ["banana"] and r.score == pytest.approx(1.0)
    # ... and neither is a detection of a label outside it
    r = score_caption("a cup", [det("cup", [0, 0, 1, 1]), det("table", [0, 0, 9, 9])], WORLD)
    assert r.missed == [] and r.recall == 1.0


def test_weighted_score_worked_example():
    cfg = JudgeConfig(w_recall=2.0, w_halluc=1.0, w_count=0.5, w_relation=0.5, w_color=0.25, w_negation=1.0,
                      w_vague=0.25, w_length=0.1, target_words=8)
    objs = [
        det("cup", [0, 0, 10, 10], color="red"),
        det("cup", [20, 0, 30, 10], color="blue"),
        det("ball", [90, 0, 100, 10], 0.9, color="green"),  # centre x=95
        det("phone", [40, 0, 50, 10], 0.8, color="yellow"),  # centre x=45
        det("book", [60, 0, 70, 10], 0.6, color="red"),
        det("apple", [0, 50, 10, 60], 0.4, color="red"),  # uncertain band
    ]
    caption = "maybe three red cups, a ball to the left of a phone and a bottle."
    r = score_caption(caption, objs, WORLD, cfg)
    # present: cup, ball, phone, book; the apple is uncertain and unmentioned (not missed)
    assert r.covered == ["cup", "ball", "phone"]
    assert r.hallucinated == ["bottle"]
    assert r.missed == ["book"]
    assert r.recall == pytest.approx(0.75) and r.precision == pytest.approx(0.75)
    assert [(e.label, e.stated, e.detected) for e in r.count_errors] == [("cup", 3, 2)]
    assert [(e.label, e.stated) for e in r.color_errors] == [("cup", "red")]  # 3 (capped at 2) red, 1 is
    assert [(e.subject, e.relation, e.object) for e in r.relation_errors] == [("ball", "left_of", "phone")]
    assert r.vague == 1
    assert r.n_words == 15
    # 2*0.75 - 1*1 - 0.5*1 - 0.5*1 - 0.25*1 - 1*0 - 0.25*1 - 0.1*(15-8) = -1.7
    assert r.score == pytest.approx(-1.7)
    # with the default weights: 0.75 - 1 - 0.5 - 0.5 - 0.25 - 0.25 - 0.02*0 = -1.75
    assert score_caption(caption, objs, WORLD).score == pytest.approx(-1.75)


def test_tokens_and_to_dict():
    r = score_caption("a red cup", [det("cup", [0, 0, 1, 1])], WORLD, tokenizer=lambda s: s.split())
    assert r.n_tokens == 3
    assert score_caption("a red cup", [], WORLD).n_tokens is None

    class Tok:
        def encode(self, text, add_special_tokens=True):
            return list(text) if add_special_tokens is False else [0] + list(text)

    assert score_caption("a cup", [], WORLD, tokenizer=Tok()).n_tokens == 5
    r = score_caption("three cups to the left of a ball", CUP_RIGHT, WORLD)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["count_errors"] == [{"label": "cup", "stated": 3, "detected": 1}]
    assert d["relation_errors"][0]["relation"] == "left_of"
    assert d["perfect"] is False


def test_parsed_caption_reuse():
    p = parse_caption("a cup", WORLD)
    assert isinstance(p, ParsedCaption)
    assert score_caption(p, [det("cup", [0, 0, 1, 1])], WORLD).score == pytest.approx(1.0)


def test_cfg_validation():
    with pytest.raises(ValueError):
        JudgeConfig(min_score=0.3, uncertain_low=0.5)


# ------------------------------------------------------------------------------------------------ vocabularies

def test_world_vocabulary_matches_world():
    assert WORLD.classes == tuple(KINDS)
    assert Vocabulary.world() is WORLD  # cached, so it is compiled once
    assert WORLD._index is WORLD._index
    for word, label in [("mug", "cup"), ("coffee cup", "cup"), ("cube", "block"), ("smartphone", "phone"),
                        ("cell phone", "phone"), ("mobile phones", "phone"), ("cupboard", None)]:
        assert WORLD.canonical(word) == label


def test_coco_vocabulary():
    assert COCO.classes == COCO_CLASSES and len(COCO.classes) == 80
    for word, label in [("motorbike", "motorcycle"), ("doughnut", "donut"), ("sofa", "couch"),
                        ("people", "person"), ("kids", "person"), ("cell_phone", "cell phone"),
                        ("teddybear", "teddy bear"), ("televisions", "tv"), ("puppies", "dog"),
                        ("ball", "sports ball"), ("fridge", "refrigerator"), ("home plate", None)]:
        assert COCO.canonical(word) == label


def test_from_labels():
    v = Vocabulary.from_labels(["Traffic Light", "dog"], synonyms={"puppy": "dog", "dog": ["hound"]}, colors=())
    assert v.classes == ("traffic light", "dog")
    assert mentions_of(v, "two traffic lights, a puppy and hounds") == [
        ("traffic light", 2), ("dog", 1), ("dog", None)]
    assert parse_caption("a red dog", v).mentions[0].color is None  # no colour words
    with pytest.raises(ValueError):
        Vocabulary.from_labels(["dog"], synonyms={"kitten": "cat"})


def mentions_of(vocab, text):
    return [(m.label, m.count) for m in parse_caption(text, vocab).mentions]


@pytest.mark.parametrize("phrase,plural", [
    ("cup", "cups"), ("bus", "buses"), ("bench", "benches"), ("pony", "ponies"), ("toy", "toys"),
    ("teddy bear", "teddy bears"), ("policeman", "policemen"), ("knife", "knives"), ("sheep", "sheep"),
])
def test_pluralize(phrase, plural):
    assert plural in pluralize(phrase)


# ------------------------------------------------------------------------------------------------ world captions

SCENES = [(seed, i) for seed in (0, 1) for i in range(12)]


@pytest.mark.parametrize("seed,i", SCENES)
def test_world_reference_captions_are_perfect(seed, i):
    scene = sample_scene(seed, "train", i).to_dict()
    objects = scene["objects"]
    caption = reference_caption(objects, scene["width"])
    r = score_caption(caption, objects, WORLD)
    assert r.perfect, (caption, r.to_dict())
    assert r.recall == 1.0 and r.precision == 1.0
    assert r.score == pytest.approx(1.0)


@pytest.mark.parametrize("seed,i", SCENES)
def test_world_corrupted_captions_never_score_higher(seed, i):
    scene = sample_scene(seed, "train", i).to_dict()
    objects = scene["objects"]
    best = score_caption(reference_caption(objects, scene["width"]), objects, WORLD).score
    for rates in (CorruptionRates(), CorruptionRates(cooccur=1.0, count=1.0, vague=0.0),
                  CorruptionRates(vague=1.0)):
        rng = random.Random(f"{seed}/{i}")
        for _ in range(3):
            caption, applied = corrupted_caption(objects, scene["width"], rng, rates)
            score = score_caption(caption, objects, WORLD).score
            if applied:
                assert score < best, (caption, applied)
            else:
                assert score == pytest.approx(best)
