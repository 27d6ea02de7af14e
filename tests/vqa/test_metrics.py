"""vlm_dpo/vqa/metrics.py on hand-made judged answers."""

from __future__ import annotations

import pytest

from vlm_dpo.vqa.metrics import vqa_metrics


def row(image, family, kind, verdict):
    return {"image_id": image, "family": family, "answer_kind": kind, "verdict": verdict}


ROWS = [row("a", "existence", "yes", "correct"), row("a", "existence", "yes", "wrong"),
        row("b", "existence", "no", "correct"), row("b", "counting", "number", "wrong"),
        row("a", "false_premise", "refusal", "correct"), row("b", "false_premise", "colour", "accepted_false_premise"),
        row("c", "false_premise", "claim", "accepted_false_premise"), row("c", "spatial", "yes", "correct")]


def test_hand_worked():
    m = vqa_metrics(ROWS, n_boot=200)
    assert m["accuracy"] == {"existence": pytest.approx(2 / 3), "counting": 0.0, "spatial": 1.0,
                             "false_premise": pytest.approx(1 / 3), "overall": pytest.approx(4 / 8)}
    assert m["false_premise_rejection"] == pytest.approx(1 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 4)  # existence yes, yes, no + spatial yes
    assert m["verdicts"] == {"accepted_false_premise": 2, "correct": 4, "wrong": 2}
    lo, hi = m["ci"]["overall"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0


def test_a_family_never_asked_is_absent_and_empty_input_is_none():
    m = vqa_metrics([row("a", "counting", "number", "correct")], n_boot=10)
    assert set(m["accuracy"]) == {"counting", "overall"}
    assert m["false_premise_rejection"] is None and m["yes_ratio"] is None
    empty = vqa_metrics([], n_boot=10)
    assert empty["accuracy"] == {"overall": None} and empty["ci"] == {"overall": None}


def test_premise_controls_have_their_own_rates_and_stay_out_of_accuracy():
    controls = [row("a", "premise_control", "refusal", "refused_wrongly"),
                row("b", "premise_control", "claim", "correct"),
                row("c", "premise_control", "colour", "correct"),
                row("d", "premise_control", "refusal", "refused_wrongly")]
    plain = vqa_metrics(ROWS, n_boot=50)
    m = vqa_metrics(ROWS + controls, n_boot=50)
    assert m["true_premise_refusal"] == pytest.approx(2 / 4)
    # (1/3 false premises refused + 1 - 1/2 true premises refused) / 2
    assert m["premise_balanced_accuracy"] == pytest.approx((1 / 3 + 0.5) / 2)
    for k in ("accuracy", "ci", "questions", "verdicts", "false_premise_rejection", "yes_ratio"):
        assert m[k] == plain[k], k
    assert plain["true_premise_refusal"] is None and plain["premise_balanced_accuracy"] is None


def test_a_model_refusing_every_premise_phrasing_scores_one_half():
    rows = ([row(i, "false_premise", "refusal", "correct") for i in "ab"]
            + [row(i, "premise_control", "refusal", "refused_wrongly") for i in "ab"])
    m = vqa_metrics(rows, n_boot=10)
    assert m["false_premise_rejection"] == 1.0 and m["premise_balanced_accuracy"] == 0.5
