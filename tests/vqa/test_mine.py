"""vlm_dpo/vqa/mine.py: hand-made ask records (answers judged by vqa/answers.py) -> exactly the mined VQA pairs."""

from __future__ import annotations

import itertools

import pytest

from vlm_dpo.config import ConfigError, load_config
from vlm_dpo.judge import Vocabulary
from vlm_dpo.pairs.dataset import make_pair
from vlm_dpo.vqa.answers import judged
from vlm_dpo.vqa.mine import VqaMineConfig, candidates, mine_answers

V = Vocabulary.world()
GROUNDING = "Detected: 2 cups (left, right)."


def record(greedy: str, samples: list[str], *, family="counting", question="How many cups are there?", expected=2,
           label="cup", grounded=True) -> dict:
    """An ask record (vlm_dpo/ask.py) of image img-1 with its answers judged as the ask stage judges them."""
    q = {"qid": f"img-1/{family}", "image_id": "img-1", "file": "images/img-1.png", "family": family,
         "question": question, "prompt": f"{question} {GROUNDING}" if grounded else question, "grounding": GROUNDING,
         "label": label, "other": "", "expected": expected}
    return q | judged(q, greedy, V) | {"samples": [judged(q, t, V) for t in samples]}


COUNTING = record("Several.", ["Three.", "Two.", "There are no cups.", "Two.", " Two. ", "four"])


def test_the_answers_are_judged_as_the_test_expects():
    assert candidates(COUNTING) == {  # distinct stripped texts, greedy first
        "Several.": {"answer_kind": "unknown", "verdict": "unparsed"},
        "Three.": {"answer_kind": "number", "verdict": "wrong"},
        "Two.": {"answer_kind": "number", "verdict": "correct"},
        "There are no cups.": {"answer_kind": "refusal", "verdict": "refused_wrongly"},
        "four": {"answer_kind": "number", "verdict": "wrong"}}


def test_one_pair_per_question_a_correct_answer_over_the_preferred_error():
    (pair,) = mine_answers(COUNTING, VqaMineConfig(), boxes=[[1, 2, 3, 4]])
    # wrong ranks before refused_wrongly; of the two wrong answers the first by text ("Three." < "four")
    assert pair == make_pair(
        image_id="img-1", image="images/img-1.png", prompt=f"How many cups are there? {GROUNDING}", chosen="Two.",
        rejected="Three.", source="mined", kind="vqa_mined_wrong", task="vqa", grounding=GROUNDING,
        boxes=[[1, 2, 3, 4]], scores={"chosen": {"answer_kind": "number", "verdict": "correct"},
                                      "rejected": {"answer_kind": "number", "verdict": "wrong"}})


def test_more_pairs_per_question_in_verdict_order_and_never_unparsed():
    pairs = mine_answers(COUNTING, VqaMineConfig(max_pairs_per_question=10))
    assert [(p["chosen"], p["rejected"], p["kind"]) for p in pairs] == [
        ("Two.", "Three.", "vqa_mined_wrong"), ("Two.", "four", "vqa_mined_wrong"),
        ("Two.", "There are no cups.", "vqa_mined_refused_wrongly")]  # "Several." (unparsed) is no evidence
    two = mine_answers(COUNTING, VqaMineConfig(max_pairs_per_question=2))
    assert [p["rejected"] for p in two] == ["Three.", "four"]
    assert mine_answers(COUNTING, VqaMineConfig(max_pairs_per_question=0)) == []
    # the order of preference is the config's; "unparsed" only when asked for
    cfg = VqaMineConfig(max_pairs_per_question=10, rejected=["unparsed", "refused_wrongly"])
    assert [(p["rejected"], p["kind"]) for p in mine_answers(COUNTING, cfg)] == [
        ("Several.", "vqa_mined_unparsed"), ("There are no cups.", "vqa_mined_refused_wrongly")]


def test_a_false_premise_accepted_is_rejected_and_correct_answers_take_turns():
    rec = record("The phone is red.", ["There is no phone.", "I can't see a phone.", "Where?", "On the left."],
                 family="false_premise", question="What colour is the phone?", expected="refusal", label="phone",
                 grounded=False)
    pairs = mine_answers(rec, VqaMineConfig(max_pairs_per_question=3))
    assert [(p["chosen"], p["rejected"], p["kind"]) for p in pairs] == [
        ("I can't see a phone.", "On the left.", "vqa_mined_accepted_false_premise"),
        ("There is no phone.", "The phone is red.", "vqa_mined_accepted_false_premise"),
        ("I can't see a phone.", "Where?", "vqa_mined_accepted_false_premise")]
    # asked without the context: the prompt is the question and the pair has no grounding
    assert all(p["prompt"] == "What colour is the phone?" and p["grounding"] is None and p["boxes"] is None
               for p in pairs)


def test_mining_does_not_depend_on_the_order_the_answers_came_in():
    texts = ["Several.", "Three.", "Two.", "There are no cups.", "four", "2 cups."]
    cfg = VqaMineConfig(max_pairs_per_question=3)
    expected = mine_answers(record(texts[0], texts[1:]), cfg)
    assert [(p["chosen"], p["rejected"]) for p in expected] == [
        ("2 cups.", "Three."), ("Two.", "four"), ("2 cups.", "There are no cups.")]
    for order in itertools.islice(itertools.permutations(texts), 0, None, 37):
        assert mine_answers(record(order[0], list(order[1:])), cfg) == expected


def test_no_pair_without_both_sides():
    assert mine_answers(record("Two.", ["2.", "two"]), VqaMineConfig()) == []  # all correct
    assert mine_answers(record("Three.", ["Several.", "None."]), VqaMineConfig()) == []  # nothing correct
    assert mine_answers(record("Two.", ["Several.", ""]), VqaMineConfig()) == []  # only unparsed / empty
    greedy_only = record("Two.", [])
    del greedy_only["samples"]  # an answers file written before ask.n_samples existed
    assert mine_answers(greedy_only, VqaMineConfig()) == []


def test_config_errors():
    with pytest.raises(ConfigError, match="pairs.vqa_mine.rejected"):
        load_config(None, ["pairs.vqa_mine.rejected=[correct]"])
    with pytest.raises(ConfigError, match="pairs.vqa_mine.rejected"):
        load_config(None, ["pairs.vqa_mine.rejected=[wrong,wrong]"])
    with pytest.raises(ConfigError, match="pairs.vqa_mine.max_pairs_per_question"):
        load_config(None, ["pairs.vqa_mine.max_pairs_per_question=-1"])
    assert load_config(None, ["pairs.vqa_mine.rejected=[unparsed]"]).pairs.vqa_mine.rejected == ["unparsed"]
