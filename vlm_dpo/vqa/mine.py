"""Mined VQA preference pairs (task "vqa"): the VLM's own answers to a robot's question, a correct one over a wrong
one, with the detector as judge (the ask stage judged every answer against the detections: vlm_dpo/ask.py).

This is the toolkit's own logic (no library does it): which of a question's answers to compare and which errors
to teach away first. Synthetic VQA pairs (vqa/pairs.py) write the wrong answer; these are errors the model made.

Per ask record (one question; `ask.n_samples` > 0 gives the choice): the candidates are the greedy answer and the
sampled ones, as distinct stripped texts, each with the verdict the ask stage gave it (vqa/answers.py).
    chosen    an answer judged "correct"
    rejected  an answer whose verdict is in `rejected`, by default the errors DPO should fix, most wanted first:
              accepted_false_premise (answered about an absent object), wrong, refused_wrongly (denied a present
              one). "unparsed" is not there by default: an answer of nothing of the asked kind is no evidence.
At most `max_pairs_per_question` pairs: the rejected answers in order of their verdict's rank (ties: by text), each
once, each against the next correct answer in text order (round robin), so the pairs depend on the set of answers,
never on the order they were sampled in. Kind "vqa_mined_<rejected verdict>", source "mined", the record's prompt
(the question, with the grounding context when it was asked with one), `scores` = both sides' verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..checks import FieldValueError, at_least
from ..images import DataError, resolve_image
from ..pairs.dataset import make_pair
from ..records import RecordError, read_jsonl
from .answers import VERDICTS

REJECTED = ("accepted_false_premise", "wrong", "refused_wrongly")
RECORD_FIELDS = ("qid", "image_id", "file", "question", "prompt", "answer", "answer_kind", "verdict")


@dataclass
class VqaMineConfig:
    max_pairs_per_question: int = 1
    # Verdicts a rejected answer may have, most wanted first (see the module docstring); "unparsed" may be added.
    rejected: list[str] = field(default_factory=lambda: list(REJECTED))

    def __post_init__(self) -> None:
        at_least(self, 0, "max_pairs_per_question")
        wrong = [v for v in self.rejected if v not in VERDICTS or v == "correct"]
        if wrong or not self.rejected or len(set(self.rejected)) != len(self.rejected):
            allowed = ", ".join(v for v in VERDICTS if v != "correct")
            raise FieldValueError("rejected", f"must be a non-empty list of distinct verdicts of {allowed}, got "
                                              f"{self.rejected!r}")


def candidates(record: dict) -> dict[str, dict]:
    """Stripped answer text -> {answer_kind, verdict} of the greedy and the sampled answers (the first of equal
    texts: equal texts are read and judged alike)."""
    out: dict[str, dict] = {}
    for a in [record] + list(record.get("samples") or []):
        text = (a.get("answer") or "").strip()
        if text and text not in out:
            out[text] = {"answer_kind": a["answer_kind"], "verdict": a["verdict"]}
    return out


def mine_answers(record: dict, cfg: VqaMineConfig, *, boxes: list | None = None) -> list[dict]:
    """The mined pairs of one ask record (see the module docstring); `boxes` of the image's detections, if known."""
    judged = candidates(record)
    chosen = sorted(t for t, j in judged.items() if j["verdict"] == "correct")
    rank = {v: i for i, v in enumerate(cfg.rejected)}
    rejected = sorted((t for t, j in judged.items() if j["verdict"] in rank),
                      key=lambda t: (rank[judged[t]["verdict"]], t))
    if not chosen:
        return []
    grounded = record["prompt"] != record["question"]
    kept = [(chosen[i % len(chosen)], r) for i, r in enumerate(rejected[: cfg.max_pairs_per_question])]
    return [make_pair(image_id=record["image_id"], image=record["file"], prompt=record["prompt"], chosen=c,
                      rejected=r, source="mined", kind=f"vqa_mined_{judged[r]['verdict']}", task="vqa",
                      grounding=record.get("grounding") if grounded else None, boxes=boxes,
                      scores={"chosen": judged[c], "rejected": judged[r]})
            for c, r in kept]


def read_answers(path: str | Path, root: Path) -> list[dict]:
    """The records of an ask stage's file, each an ask record whose image is a file under `root`. Anything else is
    an error naming the file and record: answers about another image folder would otherwise drop out one pair at
    a time as skipped rows, and a run would train without them unnoticed."""
    records = []
    for i, rec in enumerate(read_jsonl(path), start=1):
        where = f"{path}:{i} (question {rec.get('qid', '?')})"
        missing = [f for f in RECORD_FIELDS if f not in rec]
        if missing:
            raise RecordError(f"{where}: lacks {missing}; not a record of `vlm-dpo ask`")
        image = resolve_image(rec["file"], root)
        if image is None or not image.is_file():
            raise DataError(f"{where}: image {rec['file']!r} is not a file under the image root {root} "
                            "(pairs.image_root): answers asked about another image folder?")
        records.append(rec)
    return records
