"""The report's Robot questions section (vlm_dpo/report_vqa.py) on hand-made results."""

from vlm_dpo.records import write_jsonl_atomic
from vlm_dpo.report_vqa import vqa_section
from vlm_dpo.run import RunFolder


def _vqa(acc):
    return {"vqa": {"accuracy": {"counting": acc, "overall": acc}, "ci": {"counting": [0.1, 0.9]},
                    "false_premise_rejection": 0.25, "yes_ratio": 0.5, "pope_f1": 0.8}}


def test_table_and_the_questions_answered_differently(tmp_path):
    run = RunFolder(tmp_path)
    row = {"image_id": "a", "family": "counting", "question": "How many cups are there?"}
    write_jsonl_atomic(run.eval / "sft.vqa.jsonl", [row | {"answer": "three.", "verdict": "wrong"},
                                                    row | {"image_id": "b", "answer": "one.", "verdict": "correct"}])
    write_jsonl_atomic(run.eval / "dpo.vqa.jsonl", [row | {"answer": "two.", "verdict": "correct"},
                                                    row | {"image_id": "b", "answer": "one.", "verdict": "correct"}])
    page = vqa_section(run, {"sft": _vqa(0.5), "dpo": _vqa(1.0)}, "sft", "dpo")
    assert "<td>counting</td><td>50% <span class=\"note\">[10%, 90%]</span></td><td>100%" in page
    assert "<td>false premise refused</td><td>25%</td><td>25%</td>" in page
    assert page.count("How many cups are there?") == 1  # only image a differs
    assert "three. <span class=\"note\">(wrong)</span>" in page and "two. <span class=\"note\">(correct)" in page


def test_pope_without_context_row_only_when_measured(tmp_path):
    run = RunFolder(tmp_path)
    with_ctx = {n: _vqa(0.5) for n in ("sft", "dpo")}
    for n, f1 in (("sft", 0.667), ("dpo", 0.9)):
        with_ctx[n]["vqa"]["pope_f1_by_context"] = {"grounded": 0.8, "no_context": f1}
    page = vqa_section(run, with_ctx, "sft", None)
    assert "<td>POPE F1 (adversarial, no context)</td><td>67%</td><td>90%</td>" in page
    assert "no context" not in vqa_section(run, {"sft": _vqa(0.5)}, "sft", None)  # older metrics.json


def test_premise_control_rows_only_when_measured(tmp_path):
    run = RunFolder(tmp_path)
    models = {n: _vqa(0.5) for n in ("sft", "dpo")}
    models["dpo"]["vqa"] |= {"true_premise_refusal": 0.75, "premise_balanced_accuracy": 0.25}
    page = vqa_section(run, models, "sft", None)
    assert "<td>the same words about a kind that is there: refused</td><td>–</td><td>75%</td>" in page
    assert "balanced accuracy; 50% = by phrasing)</td><td>–</td><td>25%</td>" in page
    assert "kind that is there" not in vqa_section(run, {"sft": _vqa(0.5)}, "sft", None)  # older metrics.json


def test_no_vqa_results_no_section(tmp_path):
    assert vqa_section(RunFolder(tmp_path), {"sft": {"chair_i": 0.1}}, "sft", None) == ""
