"""vlm_dpo/vqa/questions.py: every family's question with its right answer, on hand-made tables and on 200 world
scenes (the answers checked against the scene's ground truth)."""

from __future__ import annotations

from collections import Counter

import pytest

from vlm_dpo.vqa.questions import FAMILIES, PHRASINGS, cooccurrence, make_questions
from vlm_dpo.world.scenes import KINDS, sample_scene

TABLE = [{"label": "cup", "box": [10, 10, 30, 30], "color": "red"},
         {"label": "cup", "box": [100, 10, 120, 30], "color": "blue"},
         {"label": "ball", "box": [60, 60, 80, 80], "color": "green"},
         {"label": "apple", "box": [100, 90, 120, 110], "color": "yellow"}]


def _by_family(qs):
    return {q["family"]: q for q in qs}


def test_one_question_per_family_with_its_answer():
    co = cooccurrence([["cup", "bowl"], ["cup", "bowl"], ["ball", "phone"]])
    qs = _by_family(make_questions(TABLE, list(KINDS), "t", width=128, cooc=co))
    assert set(qs) == set(FAMILIES)
    assert qs["listing"]["expected"] == ["apple", "ball", "cup"]
    assert qs["listing"]["answer_text"] in ("An apple, a ball and two cups.",)
    # the false premise asks about the absent kind that co-occurs most with what is there: the bowl (with cups)
    assert qs["false_premise"]["label"] == "bowl" and qs["false_premise"]["expected"] == "refusal"
    assert qs["false_premise"]["answer_text"] == "There is no bowl."
    # counting: the number of instances; colour: only a kind with one instance (not the two cups)
    c = qs["counting"]
    assert c["expected"] == Counter(o["label"] for o in TABLE)[c["label"]]
    assert qs["colour"]["label"] in ("ball", "apple")
    assert qs["colour"]["expected"] == {"ball": "green", "apple": "yellow"}[qs["colour"]["label"]]
    # spatial: single-instance kinds only; ball centre x 70, apple 110 (both > 15% of 128 apart)
    s = qs["spatial"]
    assert {s["label"], s["other"]} == {"ball", "apple"}
    left = s["label"] == "ball"  # is the subject the left one?
    asks_right = "right" in s["question"]
    assert s["expected"] == ("yes" if left != asks_right else "no")


def test_the_same_image_gets_the_same_questions_and_phrasings_vary():
    a = make_questions(TABLE, list(KINDS), "t", width=128, seed=1)
    assert a == make_questions(TABLE, list(KINDS), "t", width=128, seed=1)
    texts = {q["question"] for i in range(40) for q in make_questions(TABLE, list(KINDS), f"img{i}", width=128)
             if q["family"] == "counting"}
    assert len(texts) >= 3  # several phrasings in use


def test_families_that_do_not_apply_are_left_out():
    one = [{"label": "cup", "box": [0, 0, 10, 10]}]  # no colour known, no second object
    fams = {q["family"] for q in make_questions(one, list(KINDS), "x", width=128)}
    assert fams == {"existence", "counting", "false_premise", "listing"}
    close = [{"label": "cup", "box": [0, 0, 10, 10]}, {"label": "ball", "box": [5, 0, 15, 10]}]  # 5 px apart
    assert "spatial" not in {q["family"] for q in make_questions(close, list(KINDS), "x", width=128)}
    assert make_questions([], list(KINDS), "empty", width=128)[0]["expected"] == "no"  # only "is there a ...?"


def test_answers_hold_on_world_scenes():
    scenes = [sample_scene(0, "test", i).to_dict() for i in range(200)]
    co = cooccurrence([[o["label"] for o in s["objects"]] for s in scenes])
    existence = Counter()
    for s in scenes:
        objs, counts = s["objects"], Counter(o["label"] for o in s["objects"])
        for q in make_questions(objs, list(KINDS), s["image_id"], width=s["width"], cooc=co):
            f = q["family"]
            if f == "existence":
                existence[q["expected"]] += 1
                assert (q["label"] in counts) == (q["expected"] == "yes")
            elif f == "counting":
                assert q["expected"] == counts[q["label"]] >= 1
            elif f == "colour":
                assert counts[q["label"]] == 1
                assert q["expected"] == next(o["color"] for o in objs if o["label"] == q["label"])
            elif f == "spatial":
                cx = {o["label"]: (o["box"][0] + o["box"][2]) / 2 for o in objs}
                subject_left = cx[q["label"]] < cx[q["other"]]
                assert q["expected"] == ("yes" if subject_left != ("right" in q["question"]) else "no")
            elif f == "false_premise":
                assert q["label"] not in counts and q["expected"] == "refusal"
            elif f == "listing":
                assert q["expected"] == sorted(counts)
    assert 0.35 <= existence["yes"] / sum(existence.values()) <= 0.65  # balanced, as POPE is


def test_every_phrasing_formats():
    for family, templates in PHRASINGS.items():
        for t in templates:
            t.format(label="cup", other="ball", a="a", labels="cups")


def test_adversarial_existence_asks_the_co_occurring_absent_kind():
    scenes = [sample_scene(0, "test", i).to_dict() for i in range(200)]
    co = cooccurrence([[o["label"] for o in s["objects"]] for s in scenes])
    uniform, half = Counter(), Counter()  # is the denied kind a most co-occurring one?
    for s in scenes:
        args = (s["objects"], list(KINDS), s["image_id"])
        base = make_questions(*args, width=s["width"], cooc=co)
        always = make_questions(*args, width=s["width"], cooc=co, adversarial=1.0)
        # the other families, and every question about a present kind, do not move
        assert [q for q in always if q["family"] != "existence"] == [q for q in base if q["family"] != "existence"]
        e0, e1 = base[0], always[0]
        assert e0["family"] == e1["family"] == "existence" and e0["expected"] == e1["expected"]
        if e0["expected"] == "yes" or not s["objects"]:
            assert e1 == e0
            continue
        present = {o["label"] for o in s["objects"]}
        score = {k: sum(co[(p, k)] for p in present) for k in KINDS if k not in present}
        assert e1["label"] not in present and score[e1["label"]] == max(score.values())
        uniform[score[e0["label"]] == max(score.values())] += 1
        e_half = make_questions(*args, width=s["width"], cooc=co, adversarial=0.5)[0]
        half[score[e_half["label"]] == max(score.values())] += 1
    # uniform draws hit a most co-occurring kind only sometimes; a share of 0.5 sits in between
    n = sum(uniform.values())  # the images asked about an absent kind
    assert n >= 60 and sum(half.values()) == n
    assert uniform[True] / n < 0.4 and uniform[True] + 0.15 * n < half[True] < n, (uniform, half)


def test_adversarial_share_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="adversarial must lie in"):
        make_questions(TABLE, list(KINDS), "t", width=128, adversarial=1.5)
