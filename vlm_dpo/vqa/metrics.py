"""VQA metrics from judged answers (rows of {image_id, family, expected, answer_kind, verdict}), as
`metrics.json` holds them under models.<name>.vqa:

    accuracy[family] = correct / asked, and accuracy["overall"] over every question, each with a 95% percentile
                       bootstrap interval that resamples images (eval/bootstrap.py)
    false_premise_rejection = refusals / false-premise questions
    yes_ratio        = answers "yes" / yes-no questions answered yes or no (existence, spatial); ~0.5 on the
                       balanced existence questions for a model without a yes-bias
    true_premise_refusal = refusals / premise controls (vqa/control.py: the false-premise phrasings about a kind
                       that is there); None when none were asked
    premise_balanced_accuracy = (false_premise_rejection + 1 - true_premise_refusal) / 2: 0.5 for a model that
                       refuses regardless of the premise
Premise controls stay out of `accuracy`, `ci`, `questions` and `verdicts` (which count the families of
vqa/questions.py), so those read as they did before the control existed.
"""

from __future__ import annotations

from collections import defaultdict

from ..eval.bootstrap import percentile_ci
from .control import CONTROL_FAMILY
from .questions import FAMILIES


def _accuracy(rows: list[dict]) -> float | None:
    return sum(r["verdict"] == "correct" for r in rows) / len(rows) if rows else None


def vqa_metrics(rows: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    controls = [r for r in rows if r["family"] == CONTROL_FAMILY]
    rows = [r for r in rows if r["family"] != CONTROL_FAMILY]
    by_image: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_image[r["image_id"]].append(r)
    groups = list(by_image.values())

    def acc_of(family: str | None):
        def stat(sample: list[list[dict]]) -> float | None:
            return _accuracy([r for g in sample for r in g if family is None or r["family"] == family])
        return stat

    accuracy, ci = {}, {}
    for family in [f for f in FAMILIES if any(r["family"] == f for r in rows)] + ["overall"]:
        stat = acc_of(None if family == "overall" else family)
        accuracy[family] = stat(groups)
        ci[family] = percentile_ci(groups, stat, n_boot, seed) if groups else None
    fp = [r for r in rows if r["family"] == "false_premise"]
    yes_no = [r for r in rows if r["family"] in ("existence", "spatial") and r["answer_kind"] in ("yes", "no")]
    rejection = sum(r["answer_kind"] == "refusal" for r in fp) / len(fp) if fp else None
    true_refusal = sum(r["answer_kind"] == "refusal" for r in controls) / len(controls) if controls else None
    return {"accuracy": accuracy, "ci": ci, "questions": len(rows),
            "false_premise_rejection": rejection,
            "yes_ratio": sum(r["answer_kind"] == "yes" for r in yes_no) / len(yes_no) if yes_no else None,
            "verdicts": {v: sum(r["verdict"] == v for r in rows) for v in sorted({r["verdict"] for r in rows})},
            "true_premise_refusal": true_refusal,
            "premise_balanced_accuracy": (None if rejection is None or true_refusal is None
                                          else (rejection + 1 - true_refusal) / 2)}
