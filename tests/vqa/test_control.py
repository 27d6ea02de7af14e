"""vlm_dpo/vqa/control.py: each false-premise question asked again, in its own words, about a kind that is there."""

from __future__ import annotations

import pytest

from vlm_dpo.vqa.control import CONTROL_FAMILY, premise_control, premise_controls
from vlm_dpo.vqa.questions import PHRASINGS, make_questions

LABELS = ["apple", "ball", "book", "bottle", "bowl", "cup", "phone", "plate"]


def obj(label, x0):
    return {"label": label, "box": [x0, 10, x0 + 20, 30], "color": "red"}


def fp(question, label="phone", image_id="img"):
    return {"image_id": image_id, "family": "false_premise", "question": question, "label": label, "other": "",
            "expected": "refusal", "answer_text": f"There is no {label}."}


@pytest.mark.parametrize("template", PHRASINGS["false_premise"])
def test_same_words_about_the_present_kind(template):
    c = premise_control(fp(template.format(label="phone")), "cup")
    assert c == {"image_id": "img", "family": CONTROL_FAMILY, "question": template.format(label="cup"),
                 "label": "cup", "other": "", "expected": "answer", "answer_text": ""}


def test_a_question_in_other_words_is_an_error_naming_it():
    with pytest.raises(ValueError, match="Is there a phone"):
        premise_control(fp("Is there a phone?"), "cup")


def test_one_control_per_false_premise_question_preferring_single_instances():
    objects = {"a": [obj("cup", 0), obj("cup", 40), obj("ball", 80)], "b": [obj("bowl", 0)], "c": []}
    questions = [fp("Where is the phone?", image_id="a"), fp("How big is the apple?", "apple", "b"),
                 fp("Where is the phone?", image_id="c"),  # nothing there: no control
                 {"image_id": "a", "family": "counting", "question": "How many cups are there?", "label": "cup"}]
    controls = premise_controls(questions, objects, seed=0)
    assert [(c["image_id"], c["question"]) for c in controls] == [("a", "Where is the ball?"),
                                                                   ("b", "How big is the bowl?")]


def test_every_image_with_a_false_premise_gets_a_control_about_a_kind_it_has():
    objects_of, questions = {}, []
    for i in range(60):
        objects = [obj(LABELS[(i + k) % len(LABELS)], 40 * k) for k in range(1 + i % 3)]
        objects_of[f"s{i}"] = objects
        questions += make_questions(objects, LABELS, f"s{i}", width=128, seed=3)
    controls = premise_controls(questions, objects_of, seed=3)
    fps = [q for q in questions if q["family"] == "false_premise"]
    assert len(controls) == len(fps) == 60
    for q, c in zip(fps, controls):
        assert c["image_id"] == q["image_id"] and c["label"] in {o["label"] for o in objects_of[q["image_id"]]}
        assert c["question"].replace(c["label"], "X") == q["question"].replace(q["label"], "X")
    assert premise_controls(questions, objects_of, seed=3) == controls  # seeded


def det(label, box, color=None, score=0.9):
    return {"label": label, "box": box, "score": score} | ({"color": color} if color else {})


@pytest.mark.parametrize("question,d,answer", [
    ("Where is the cup?", det("cup", [0, 0, 20, 20]), "The cup is on the left."),
    ("Where is the cup?", det("cup", [54, 0, 74, 20]), "The cup is in the middle."),
    ("Which side of the table is the cup on?", det("cup", [100, 0, 120, 20]), "It is on the right side."),
    ("Which side of the table is the cup on?", det("cup", [54, 0, 74, 20]), "It is in the middle."),
    ("How big is the cup?", det("cup", [0, 0, 31, 20]), "The cup is small."),  # 31 < 128 / 4
    ("How big is the cup?", det("cup", [0, 0, 20, 32]), "The cup is large."),
    ("What colour is the cup?", det("cup", [0, 0, 20, 20], "red"), "The cup is red."),
    ("What colour is the cup?", det("cup", [0, 0, 20, 20]), None),  # no colour read: no answer
])
def test_answers_read_off_the_box(question, d, answer):
    from vlm_dpo.vqa.questions import premise_answer

    assert premise_answer(question, "cup", d, 128, 128) == answer


def test_true_premise_pairs_ask_the_false_premise_question_about_a_kind_that_is_there():
    from collections import Counter

    from vlm_dpo.judge import Vocabulary
    from vlm_dpo.vqa.answers import judged
    from vlm_dpo.vqa.control import true_premise_pairs
    from vlm_dpo.vqa.pairs import vqa_pairs

    vocab = Vocabulary.world()
    labels = list(vocab.classes)
    cooc = Counter({("cup", "bottle"): 5, ("bottle", "cup"): 5})
    n = 0
    for i in range(40):
        dets = [det(labels[(i + k) % len(labels)], [40 * k, 10, 40 * k + 20, 30]) for k in range(1 + i % 3)]
        dets.append(det("phone", [0, 0, 5, 5], score=0.2))  # not confident: not a fact
        record = {"image_id": f"s{i}", "width": 128, "height": 128, "detections": dets}
        args = (record, f"images/s{i}.png", "Detected: x.", labels, cooc)
        got = true_premise_pairs(*args, min_score=0.5, seed=1)
        fp = [p for p in vqa_pairs(*args, min_score=0.5, seed=1) if p["kind"] == "vqa_false_premise"]
        assert len(got) <= len(fp) <= 1
        for p in got:
            n += 1
            absent = next(k for k in labels if f"the {k} " in fp[0]["prompt"].split("?")[0] + " ")
            kind = next(k for k in labels if f"the {k} " in p["prompt"].split("?")[0] + " ")
            assert kind in {d["label"] for d in dets[:-1]} and absent not in {d["label"] for d in dets[:-1]}
            assert p["prompt"].replace(kind, "X") == fp[0]["prompt"].replace(absent, "X")  # same words
            assert p["kind"] == "vqa_true_premise" and p["rejected"] == f"There is no {kind}."
            q = {"family": "premise_control", "label": kind, "expected": "answer"}
            assert judged(q, p["chosen"], vocab)["verdict"] == "correct"
            assert judged(q, p["rejected"], vocab)["verdict"] == "refused_wrongly"
    assert n > 20
