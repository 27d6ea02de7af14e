"""vlm_dpo/vqa/answers.py: short answers read and judged, hand-worked per family and verdict."""

from __future__ import annotations

import pytest

from vlm_dpo.judge import Vocabulary
from vlm_dpo.vqa.answers import Answer, judge_answer, list_scores, parse_answer

V = Vocabulary.world()


def q(family, expected, label="cup", other=""):
    return {"family": family, "expected": expected, "label": label, "other": other, "question": "?"}


@pytest.mark.parametrize("family,expected,text,kind,verdict", [
    # existence: a denial is the answer "no", never a refusal
    ("existence", "yes", "Yes.", "yes", "correct"),
    ("existence", "yes", "No, there is no cup.", "no", "wrong"),
    ("existence", "no", "There is no cup on the table.", "no", "correct"),
    ("existence", "no", "Yes, there is a cup.", "yes", "wrong"),
    # counting
    ("counting", 2, "Two.", "number", "correct"),
    ("counting", 2, "I count 3 cups.", "number", "wrong"),
    ("counting", 2, "There are no cups.", "refusal", "refused_wrongly"),
    ("counting", 2, "Several.", "unknown", "unparsed"),
    ("counting", 15, "Fifteen.", "number", "correct"),  # number words as far as the caption judge reads them
    # colour (grey and gray are one colour)
    ("colour", "gray", "It is grey.", "colour", "correct"),
    ("colour", "red", "Blue.", "colour", "wrong"),
    ("colour", "red", "I can't see a cup.", "refusal", "refused_wrongly"),
    # spatial yes / no
    ("spatial", "no", "No.", "no", "correct"),
    ("spatial", "no", "Yes, it is.", "yes", "wrong"),
    # false premise: only a refusal is right
    ("false_premise", "refusal", "There is no cup.", "refusal", "correct"),
    ("false_premise", "refusal", "I don't see a cup.", "refusal", "correct"),
    ("false_premise", "refusal", "The cup is red.", "colour", "accepted_false_premise"),
    ("false_premise", "refusal", "On the left.", "claim", "accepted_false_premise"),
    # premise control (the same phrasings about a kind that is there): any answer but a refusal
    ("premise_control", "answer", "On the left.", "claim", "correct"),
    ("premise_control", "answer", "The cup is red.", "colour", "correct"),
    ("premise_control", "answer", "There is no cup.", "refusal", "refused_wrongly"),
    ("premise_control", "answer", "", "unknown", "unparsed"),
])
def test_parse_and_judge(family, expected, text, kind, verdict):
    answer = parse_answer(text, q(family, expected), V)
    assert answer.kind == kind
    assert judge_answer(q(family, expected), answer) == verdict


def test_listing_is_exact_and_scored():
    question = q("listing", ["ball", "cup", "phone"], label="")
    full = parse_answer("Two cups, a ball and a mobile phone.", question, V)  # a synonym counts
    assert full == Answer("list", ["ball", "cup", "phone"]) and judge_answer(question, full) == "correct"
    short = parse_answer("A cup and an apple.", question, V)
    assert judge_answer(question, short) == "wrong"
    assert list_scores(question, short) == {"precision": 0.5, "recall": pytest.approx(1 / 3)}
    assert judge_answer(question, parse_answer("Nothing I know.", question, V)) == "unparsed"


def test_an_empty_answer_is_unparsed():
    for family, expected in (("existence", "yes"), ("counting", 1), ("colour", "red"), ("listing", ["cup"])):
        assert judge_answer(q(family, expected), parse_answer("  ", q(family, expected), V)) == "unparsed"


def test_unknown_family_is_an_error():
    with pytest.raises(ValueError, match="unknown question family 'weather'"):
        parse_answer("sunny", q("weather", "sun"), V)
