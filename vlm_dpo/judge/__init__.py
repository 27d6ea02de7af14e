"""The caption judge: what a caption claims about the objects in an image, and how well that matches detections.

What it is for
    * Mining preference pairs: with a detector (or the world's ground truth) as judge, sampled captions of the
      same image are ranked by `score_caption`, and the best and worst become a DPO pair.
    * Evaluation: `parse_caption` turns a caption into object mentions in a detector's (or COCO's) vocabulary,
      which is what CHAIR-style hallucination metrics count; `score_caption` adds recall, counts, relations,
      colours, vagueness and length.

How it reads a caption
    The parser is a small, deterministic, rule-based reader, not a syntactic parser. It tokenises the caption,
    finds vocabulary names longest-match first on whole words (so "hot dog" is not a dog and "cupboard" is not a
    cup), then looks a few words back from each name for colours, a count ("two", "3", "a pair of", "several")
    and a negation ("no", "without", "not a", "there isn't any"). Relations are read from two fixed shapes:
    "X (is) (to the) left of / right of / above / below Y" and "X on the left and Y on the right" (also top and
    bottom). Vague nouns ("objects", "things") and hedges ("maybe", "some kind of") are listed.

How it scores
    Detections at or above `min_score` are present. Those in the band [uncertain_low, min_score) make the judge
    abstain: a mention of such a label is neither right nor wrong (it is listed as `unknown`) and an unmentioned
    one is not missed. Lower ones are ignored. Labels the vocabulary does not know are never wrong, whether they
    come from the detector or the caption. The score is a weighted sum documented on `score_caption`.

Limits (on purpose: it must be fast, pure Python and predictable)
    * Negation is local: a cue must stand right before the noun phrase (or two words before with a bridging
      verb, "don't see any cups"), and it carries over only through "or"/"nor" ("no cups or balls").
    * "a"/"an" is a lower bound ("a cup" is true, if partial, of two cups); number words are exact. Counts of
      a label add up within a sentence ("a red cup and a blue cup" = 2); across sentences the largest sentence
      total counts, so re-descriptions do not add ("two cups. One cup is blue and one cup is red." = 2).
      Anaphora ("the cup", "it") is not resolved and adds nothing. Rule and limits: `score_caption`.
    * Relations are existential: "a cup left of a ball" holds when some cup's centre is left of some ball's.
      Relations between two objects of the same label are not scored.
    * Colours are scored only when the detections carry a "color" (ground truth does, detectors usually not).
    * Unknown nouns are a heuristic (the last content word after a determiner); they are informational only.
    * Of the CHAIR reference rules, the one that drops "seat" from any caption that mentions a toilet is not
      reproduced; "toilet seat" as a phrase is.

Layout
    lexicon.py     the hand-written word lists (colours, numbers, quantifiers, negators, hedges, relation
                   shapes) and the tokeniser; plural forms come from `vlm_dpo.plurals`
    vocabulary.py  `Vocabulary` (classes, synonyms, compiled name table); the world and COCO/CHAIR data;
                   `resolve_vocabulary` (also of a JSON/YAML file: `vocabulary_from_file`)
    parse.py       `parse_caption` -> `ParsedCaption` (mentions, relations, vague words, unknown nouns)
    score.py       `score_caption` -> `JudgeResult`, with `JudgeConfig`'s thresholds and weights
This package re-exports the public names, so callers import from `vlm_dpo.judge`.
"""

from __future__ import annotations

from ..plurals import IRREGULAR_PLURALS
from ..plurals import plural_forms as pluralize  # the judge's name for it, kept for callers
from .lexicon import BASIC_COLORS, RELATIONS
from .parse import Mention, ParsedCaption, Relation, parse_caption
from .score import ColorError, CountError, JudgeConfig, JudgeResult, score_caption
from .vocabulary import COCO_CLASSES, VOCABULARIES, Vocabulary, resolve_vocabulary, vocabulary_from_file

__all__ = [
    "BASIC_COLORS", "COCO_CLASSES", "ColorError", "CountError", "IRREGULAR_PLURALS", "JudgeConfig", "JudgeResult",
    "Mention", "ParsedCaption", "Relation", "RELATIONS", "VOCABULARIES", "Vocabulary", "parse_caption", "pluralize",
    "resolve_vocabulary", "score_caption", "vocabulary_from_file",
]
