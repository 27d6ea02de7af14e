"""Short answers read into what they claim, and judged against the question's expected answer.

Written here rather than taken from a library because the rules are the toolkit's judgement: POPE's reference
script reads yes/no only, and a robot's questions also need numbers, colours, sides, object lists and refusals.

Reading (`parse_answer`), in order:
    refusal   the answer denies the asked object: the judge's parser finds it under "no"/"not" as absent
              ("There is no phone.", "I don't see a phone") or a stock refusal ("I can't see that", "not in the
              image"). For an existence question a denial is the answer "no", not a refusal.
    yes / no  the first word, or POPE's rule on the first sentence ("no"/"not" -> no, else yes)
    number    a digit or number word ("three", "3"); "none" / "zero" -> 0
    colour    the first colour word (grey = gray)
    list      the labels the caption parser finds affirmed (synonyms and plurals as for captions)
Judging (`judge_answer`) gives one verdict:
    correct
    wrong                   a real answer, but not the expected one
    refused_wrongly         refused although the object is there
    accepted_false_premise  answered (a colour, a place, ...) a question about an absent object
    unparsed                nothing of the asked kind in the answer
A premise control (vqa/control.py: a false-premise phrasing about a kind that is there) is correct when answered
with anything but a refusal.
A list is correct when it names exactly the present kinds; `list_scores` gives its precision and recall.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..judge import Vocabulary, parse_caption
from ..judge.lexicon import _COLOR_ALIASES, BASIC_COLORS, NUMBER_WORDS

VERDICTS = ("correct", "wrong", "refused_wrongly", "accepted_false_premise", "unparsed")
_NUMBERS = {w: i for i, w in enumerate(NUMBER_WORDS)} | {"none": 0, "no": 0}  # the caption judge's, to twenty
_COLOURS = {c: _COLOR_ALIASES.get(c, c) for c in BASIC_COLORS}  # grey = gray, as the caption judge reads them
_REFUSALS = re.compile(
    r"\b(?:i (?:do not|don't|cannot|can't|can not) see|(?:is|are) not (?:in|on) (?:the|this) (?:image|picture|table)"
    r"|there (?:is|are) (?:no|not any)|there isn't|there aren't|no such|not present|doesn't exist|does not exist)\b")
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class Answer:
    kind: str  # refusal | yes | no | number | colour | side | list | unknown
    value: object = None


def _first_sentence(text: str) -> str:
    return re.split(r"[.!?\n]", text.strip(), maxsplit=1)[0]


def _denies(text: str, label: str, vocab: Vocabulary) -> bool:
    parsed = parse_caption(text, vocab)
    if label and any(m.label == label and m.claims_absent for m in parsed.mentions):
        return True
    return bool(_REFUSALS.search(text.lower()))


def _yes_no(text: str) -> str:
    words = _WORD.findall(_first_sentence(text).lower())
    if words and words[0] in ("yes", "no"):
        return words[0]
    return "no" if ("no" in words or "not" in words) else "yes"


def parse_answer(text: str, question: dict, vocab: Vocabulary) -> Answer:
    family, label = question["family"], question.get("label", "")
    low = text.lower()
    words = _WORD.findall(low)
    if family == "existence":
        return Answer(_yes_no(text)) if words else Answer("unknown")
    if _denies(text, label, vocab):
        return Answer("refusal")
    if not words:
        return Answer("unknown")
    if family == "spatial":
        return Answer(_yes_no(text))
    if family == "counting":
        for w in words:
            if w.isdigit():
                return Answer("number", int(w))
            if w in _NUMBERS:
                return Answer("number", _NUMBERS[w])
        return Answer("unknown")
    if family in ("colour", "false_premise", "premise_control"):
        for w in words:
            if w in _COLOURS:
                return Answer("colour", _COLOURS[w])
        if family == "colour":
            return Answer("unknown")
        # a premise asked "where" / "how big": any content that is not a refusal accepts the premise
        return Answer("claim", text.strip())
    if family == "listing":
        labels = parse_caption(text, vocab).labels()
        return Answer("list", sorted(labels)) if labels else Answer("unknown")
    raise ValueError(f"unknown question family {family!r}")


def judge_answer(question: dict, answer: Answer) -> str:
    """The verdict on `answer` (see the module docstring)."""
    expected = question["expected"]
    if question["family"] == "false_premise":
        return "correct" if answer.kind == "refusal" else "accepted_false_premise"
    if answer.kind == "refusal":
        return "refused_wrongly"
    if answer.kind == "unknown":
        return "unparsed"
    if question["family"] == "premise_control":  # a true premise (vqa/control.py): any answer but a refusal
        return "correct"
    if question["family"] in ("existence", "spatial"):
        return "correct" if answer.kind == expected else "wrong"
    if question["family"] == "listing":
        return "correct" if answer.value == sorted(expected) else "wrong"
    return "correct" if answer.value == expected else "wrong"


def judged(question: dict, text: str, vocab: Vocabulary) -> dict:
    """The fields a judged answer adds to its question's record: the answer, what it was read as, the verdict."""
    answer = parse_answer(text, question, vocab)
    return {"answer": text, "answer_kind": answer.kind, "verdict": judge_answer(question, answer)}


def list_scores(question: dict, answer: Answer) -> dict:
    """Precision and recall of a listing answer against the present kinds (0 / 0 for a non-list answer)."""
    if answer.kind != "list":
        return {"precision": 0.0, "recall": 0.0}
    said, truth = set(answer.value), set(question["expected"])
    hit = len(said & truth)
    return {"precision": hit / len(said) if said else 0.0, "recall": hit / len(truth) if truth else 0.0}
