"""Synthetic VQA pairs (vlm_dpo/vqa/pairs.py): on 150 world scenes (the world's objects as detections), every
chosen answer is judged correct and every rejected one is not, with the verdict the wrong answer stands for."""

from __future__ import annotations

from collections import Counter

from vlm_dpo.judge import Vocabulary
from vlm_dpo.vqa.answers import judge_answer, parse_answer
from vlm_dpo.vqa.pairs import vqa_pairs
from vlm_dpo.vqa.questions import cooccurrence, make_questions
from vlm_dpo.world.scenes import KINDS, sample_scene

V = Vocabulary.world()


def _records(n=150):
    for i in range(n):
        s = sample_scene(3, "train", i).to_dict()
        yield {"image_id": s["image_id"], "width": s["width"],
               "detections": [{"label": o["label"], "score": 0.9, "box": o["box"]} for o in s["objects"]]}


def test_chosen_is_right_and_rejected_is_wrong():
    records = list(_records())
    cooc = cooccurrence([[d["label"] for d in r["detections"]] for r in records])
    kinds, verdicts = Counter(), Counter()
    for r in records:
        questions = {q["family"]: q for q in make_questions(r["detections"], list(KINDS), r["image_id"],
                                                            width=r["width"], cooc=cooc)}
        for p in vqa_pairs(r, f"images/{r['image_id']}.png", "1 cup.", list(KINDS), cooc, min_score=0.5):
            assert p["task"] == "vqa" and p["source"] == "synthetic" and p["prompt"].endswith(" 1 cup.")
            family = next(f for f, q in questions.items() if p["prompt"].startswith(q["question"]))
            q = questions[family]
            assert judge_answer(q, parse_answer(p["chosen"], q, V)) == "correct", (q, p["chosen"])
            verdict = judge_answer(q, parse_answer(p["rejected"], q, V))
            assert verdict != "correct", (q, p["rejected"])
            kinds[p["kind"]] += 1
            verdicts[(p["kind"], verdict)] += 1
    assert set(kinds) == {"vqa_yes_no", "vqa_count", "vqa_side", "vqa_false_premise", "vqa_list_add",
                          "vqa_list_drop", "vqa_refused"}
    assert verdicts[("vqa_refused", "refused_wrongly")] == kinds["vqa_refused"] == kinds["vqa_count"]
    assert verdicts[("vqa_false_premise", "accepted_false_premise")] == kinds["vqa_false_premise"]
    assert verdicts[("vqa_count", "wrong")] == kinds["vqa_count"]


def test_ungrounded_prompt_is_the_question():
    r = next(_records(1))
    pairs = vqa_pairs(r, "img.png", "1 cup.", list(KINDS), Counter(), min_score=0.5, grounded=False)
    assert pairs and all(p["grounding"] is None and not p["prompt"].endswith("1 cup.") for p in pairs)


def test_adversarial_existence_pairs_deny_the_co_occurring_kind():
    records = list(_records())
    cooc = cooccurrence([[d["label"] for d in r["detections"]] for r in records])
    denied = 0
    for r in records:
        present = {d["label"] for d in r["detections"]}
        for p in vqa_pairs(r, "img.png", "1 cup.", list(KINDS), cooc, min_score=0.5, adversarial=1.0):
            if p["kind"] != "vqa_yes_no" or p["chosen"] != "no." or not present:
                continue
            asked = next(k for k in KINDS if f" {k}" in p["prompt"].split("?")[0])
            score = {k: sum(cooc[(q, k)] for q in present) for k in KINDS if k not in present}
            assert asked not in present and score[asked] == max(score.values()), p["prompt"]
            denied += 1
    assert denied >= 40


def test_colour_pairs_join_when_the_detections_carry_colours():
    from vlm_dpo.world import COLORS

    records = list(_records(60))
    cooc = cooccurrence([[d["label"] for d in r["detections"]] for r in records])
    kinds = Counter()
    for i, r in enumerate(records):
        s = sample_scene(3, "train", i).to_dict()
        coloured = r | {"detections": [d | {"color": o["color"]} for d, o in zip(r["detections"], s["objects"])]}
        plain = vqa_pairs(r, "img.png", "1 cup.", list(KINDS), cooc, min_score=0.5)
        both = vqa_pairs(coloured, "img.png", "1 cup.", list(KINDS), cooc, min_score=0.5, colours=tuple(COLORS))
        assert both[: len(plain)] == plain  # the other families' pairs do not move
        assert vqa_pairs(coloured, "img.png", "1 cup.", list(KINDS), cooc, min_score=0.5) == plain  # no palette
        (q,) = make_questions(coloured["detections"], list(KINDS), r["image_id"], width=r["width"],
                              families=("colour",)) or [None]
        extra = both[len(plain):]
        present = {d["label"] for d in r["detections"]}
        assert len(extra) == ((3 if len(present) < len(KINDS) else 2) if q else 0)
        for p in extra:
            if p["kind"] == "vqa_false_premise":  # the twin: the same phrasing about an absent kind, refused
                twin = p["prompt"].split("?")[0] + "?"
                asked = next(k for k in KINDS if twin == q["question"].replace(q["label"], k))
                assert asked not in present and p["chosen"] == f"There is no {asked}."
                tq = {"family": "false_premise", "question": twin, "label": asked, "expected": "refusal"}
                assert judge_answer(tq, parse_answer(p["chosen"], tq, V)) == "correct"
                assert judge_answer(tq, parse_answer(p["rejected"], tq, V)) == "accepted_false_premise", p
                kinds["twin"] += 1
                continue
            assert p["prompt"].startswith(q["question"]) and p["chosen"] == f"{q['expected']}."
            assert judge_answer(q, parse_answer(p["chosen"], q, V)) == "correct"
            verdict = judge_answer(q, parse_answer(p["rejected"], q, V))
            assert verdict == {"vqa_colour": "wrong", "vqa_refused": "refused_wrongly"}[p["kind"]], p
            kinds[p["kind"]] += 1
    assert kinds["vqa_colour"] == kinds["vqa_refused"] == kinds["twin"] >= 20
