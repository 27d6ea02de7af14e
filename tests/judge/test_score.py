"""Scoring captions against detections, and the world's own reference and corrupted captions.

Every expected value below was worked out by hand from the rules in `vlm_dpo/judge/score.py`'s docstrings.
"""

from __future__ import annotations

import json
import random

import pytest

from vlm_dpo.judge import JudgeConfig, ParsedCaption, Vocabulary, parse_caption, score_caption
from vlm_dpo.world.captions import CorruptionRates, corrupted_caption, reference_caption
from vlm_dpo.world.scenes import sample_scene

WORLD = Vocabulary.world()


def det(label, box, score=None, color=None):
    d = {"label": label, "box": list(box)}
    if score is not None:
        d["score"] = score
    if color is not None:
        d["color"] = color
    return d


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
    # "a" is "at least one": "a cup" of two cups is true but partial (issue 16), "one cup" is a wrong count
    r = score_caption("a cup", cups, WORLD)
    assert r.count_errors == [] and r.partial == ["cup"] and not r.perfect
    assert len(score_caption("one cup", cups, WORLD).count_errors) == 1
    # ... and a lower bound above what is there is still wrong
    r = score_caption("a red cup and a blue cup", cups[:1], WORLD)
    assert [(e.label, e.stated, e.detected) for e in r.count_errors] == [("cup", 2, 1)]
    # no stated number: nothing to check
    assert score_caption("cups", cups, WORLD).count_errors == []
    # an uncertain third cup makes "three" and "two" both acceptable, "four" not
    unsure = cups + [det("cup", [4, 0, 5, 1], 0.4)]
    assert score_caption("three cups", unsure, WORLD).count_errors == []
    assert score_caption("two cups", unsure, WORLD).count_errors == []
    r = score_caption("four cups", unsure, WORLD)
    assert [(e.label, e.stated, e.detected) for e in r.count_errors] == [("cup", 4, 2)]


@pytest.mark.parametrize("extra", [[], [det("book", [6, 0, 7, 1]), det("phone", [8, 0, 9, 1])]])
def test_partial_but_true_ranks_between_complete_and_empty(extra):
    # two cups and a ball (and, in the second case, more objects no caption names)
    dets = [det("cup", [0, 0, 1, 1]), det("cup", [2, 0, 3, 1]), det("ball", [4, 0, 5, 1])] + extra
    complete = score_caption("two cups and a ball", dets, WORLD)
    partial = score_caption("a cup and a ball", dets, WORLD)
    empty = score_caption("A photo.", dets, WORLD)
    hallucinated = score_caption("a bottle", dets, WORLD)
    assert partial.count_errors == [] and partial.partial == ["cup"] and partial.covered == ["cup", "ball"]
    assert complete.partial == [] and complete.count_errors == []
    assert complete.score > partial.score > empty.score > hallucinated.score
    # the partial loss: w_partial * (1 - 1/2) / |present|
    n_present = 2 + len(extra)  # cup, ball and the extra labels
    assert partial.score == pytest.approx(complete.score - 0.5 * 0.5 / n_present)


def test_partial_weight_cannot_exceed_recall_weight():
    with pytest.raises(ValueError, match="w_partial"):
        JudgeConfig(w_recall=0.4, w_partial=0.5)


@pytest.mark.parametrize("caption, n_cups, stated, partial", [
    ("two cups. One cup is blue and one cup is red.", 2, None, False),  # itemising re-counts: 2, not 4
    ("two cups. One cup is blue and one cup is red.", 3, 2, False),  # ... and 2 is exact
    ("two cups and a red cup", 3, None, False),  # one sentence: 2 + 1
    ("two cups and a red cup", 2, 3, False),
    ("a cup. The cup is red.", 1, None, False),  # a definite mention adds nothing
    ("a cup. The cup is red.", 2, None, True),  # 1, a lower bound: partial, not wrong
    ("a cup. A cup.", 2, None, True),  # limit: a new sentence does not add (documented)
    ("a cup; two cups.", 3, 2, False),  # the largest sentence total, exact
])
def test_counts_across_mentions(caption, n_cups, stated, partial):
    cups = [det("cup", [2 * i, 0, 2 * i + 1, 1]) for i in range(n_cups)]
    r = score_caption(caption, cups, WORLD)
    assert [e.stated for e in r.count_errors] == ([] if stated is None else [stated])
    assert r.partial == (["cup"] if partial else [])


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
