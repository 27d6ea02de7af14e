"""Scoring: how well a caption's claims match an image's detections.

Detections at or above `JudgeConfig.min_score` are present. Those in the band [uncertain_low, min_score) make
the judge abstain: a mention of such a label is neither right nor wrong (it is listed as `unknown`) and an
unmentioned one is not missed. Lower ones are ignored. Labels the vocabulary does not know are never wrong,
whether they come from the detector or the caption. `score_caption` turns hallucinations, misses, wrong counts,
relations, colours and negations, partial counts, vagueness and length into one weighted score (the formula is on the function);
pair mining ranks captions by it, and its parts are the evaluation's metrics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from .lexicon import _COLOR_ALIASES
from .parse import ParsedCaption, Relation, parse_caption
from .vocabulary import Vocabulary

@dataclass(frozen=True)
class JudgeConfig:
    """Thresholds and weights of `score_caption` (see its docstring for the formula)."""

    min_score: float = 0.5  # detections at or above this are present
    uncertain_low: float = 0.3  # [uncertain_low, min_score): the judge abstains; below: ignored
    w_recall: float = 1.0
    w_halluc: float = 1.0  # per hallucinated label
    w_count: float = 0.5  # per label whose stated count is wrong
    # A true but partial caption ("a cup" of two cups) loses at most this share of each such label's recall
    # credit; kept <= w_recall so that partial-but-true still ranks above saying nothing.
    w_partial: float = 0.5
    w_relation: float = 0.5  # per contradicted relation
    w_color: float = 0.25  # per mention whose colour fits no detection of its label
    w_negation: float = 1.0  # per label said to be absent but detected
    w_vague: float = 0.25  # per vague noun or hedge
    w_length: float = 0.02  # per word beyond target_words
    target_words: int = 20  # the longest world reference caption has 19 words

    def __post_init__(self) -> None:
        if self.uncertain_low > self.min_score:
            raise ValueError("uncertain_low must not exceed min_score")
        if not 0 <= self.w_partial <= self.w_recall:
            raise ValueError("w_partial must be in [0, w_recall]: a true but partial caption must not score below "
                             "an empty one")


@dataclass(frozen=True)
class CountError:
    label: str
    stated: int  # the number the caption states for this label (see `score_caption` on how mentions add up)
    detected: int  # confident detections of the label


@dataclass(frozen=True)
class ColorError:
    label: str
    stated: str  # the colour the caption gives
    detected: tuple[str, ...]  # colours of the detections of the label


@dataclass
class JudgeResult:
    hallucinated: list[str]  # labels affirmed but not detected (distinct, in caption order)
    covered: list[str]  # detected labels the caption affirms
    missed: list[str]  # detected labels the caption does not affirm (detection order)
    partial: list[str]  # covered labels stated only as "at least" fewer than detected ("a cup" of two cups)
    count_errors: list[CountError]
    relation_errors: list[Relation]
    color_errors: list[ColorError]
    negation_errors: list[str]  # labels the caption says are absent but are detected
    vague: int  # number of vague nouns and hedges
    vague_phrases: list[str]
    unknown: list[str]  # affirmed labels with only uncertain detections: the judge abstains
    unknown_nouns: list[str]  # nouns outside the vocabulary: never wrong
    n_words: int
    n_tokens: int | None
    precision: float
    recall: float
    score: float

    @property
    def perfect(self) -> bool:
        """Nothing wrong, nothing missed, nothing vague (length is not part of it)."""
        return not (self.hallucinated or self.missed or self.partial or self.count_errors or self.relation_errors
                    or self.color_errors or self.negation_errors or self.vague)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["color_errors"] = [{**e, "detected": list(e["detected"])} for e in d["color_errors"]]
        d["perfect"] = self.perfect
        return d


def _count_tokens(tokenizer: Any, text: str) -> int | None:
    if tokenizer is None:
        return None
    encode = getattr(tokenizer, "encode", None)
    if encode is not None:
        try:
            ids = encode(text, add_special_tokens=False)
        except TypeError:
            ids = encode(text)
    else:
        ids = tokenizer(text)
    if isinstance(ids, Mapping) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    ids = getattr(ids, "ids", ids)  # a `tokenizers.Encoding`
    return len(ids)


def _centre(box: Sequence[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


_REL_TEST = {
    "left_of": lambda s, o: s[0] < o[0],
    "right_of": lambda s, o: s[0] > o[0],
    "above": lambda s, o: s[1] < o[1],  # image y grows downwards
    "below": lambda s, o: s[1] > o[1],
}


def score_caption(
    caption: str | ParsedCaption,
    detections: Sequence[Mapping[str, Any]],
    vocab: Vocabulary,
    cfg: JudgeConfig | None = None,
    tokenizer: Any = None,
) -> JudgeResult:
    """Judge a caption against an image's detections ({label, score, box[, color]}; score defaults to 1.0).

    score = w_recall   * recall
          - w_halluc   * len(hallucinated)
          - w_count    * len(count_errors)
          - w_partial  * sum over partial labels of (1 - stated / confident) / |present|
          - w_relation * len(relation_errors)
          - w_color    * len(color_errors)
          - w_negation * len(negation_errors)
          - w_vague    * vague
          - w_length   * max(0, n_words - target_words)

    where, over labels the vocabulary knows (detections with unknown labels are ignored):
      present     = labels with a detection scoring >= min_score;
      uncertain   = labels with detections in [uncertain_low, min_score) only; the judge abstains on them;
      recall      = |covered| / |present| (1.0 when nothing is present);
      precision   = |covered| / (|covered| + |hallucinated|) (1.0 when the caption affirms nothing);
      stated      = per label, the numbers its mentions give, added up within a sentence ("a red cup and a blue
        cup" = 2, "two cups and a red cup" = 3); across sentences the largest sentence total counts, not the
        sum, because a later sentence mostly re-describes objects already counted: definite mentions state no
        number ("a cup. The cup is red." = 1) and itemising ones re-count ("two cups. One cup is blue and one
        cup is red." = 2). Limits of that rule: objects added in a later sentence are not added ("a cup on the
        left. A cup on the right." = 1, at worst partial since "a" is a lower bound), and itemising within one
        sentence still adds up ("two cups, one cup red and one cup blue" = 4);
      the stated number is exact when any of the label's counting mentions uses a number word, and only a lower
        bound when all of them are indefinite articles ("a cup": at least one, see `Mention.at_least`);
      a count error is a label whose stated number is above confident + uncertain detections, or, when exact,
        below the confident ones;
      a partial label is one whose lower-bound number is below its confident detections ("a cup and a ball"
        of two cups and a ball): true, so no error, but less complete than "two cups and a ball". Its penalty is
        below its recall credit (w_partial <= w_recall), so partial-but-true ranks between complete and empty;
      a relation error is a relation between two present, affirmed, different labels that holds for no pair
        of their box centres;
      a colour error is a mention whose colour fewer detections of its label have than it claims
        (only when every such detection has a "color");
      a negation error is a label the caption says is absent ("no cups", "without a ball") though present.
    `tokenizer` (callable, or object with .encode) only fills n_tokens.
    """
    cfg = cfg or JudgeConfig()
    parsed = caption if isinstance(caption, ParsedCaption) else parse_caption(caption, vocab)

    confident: dict[str, list[Mapping[str, Any]]] = {}
    uncertain: dict[str, list[Mapping[str, Any]]] = {}
    for det in detections:
        label = vocab.canonical(det["label"])
        if label is None:
            continue  # outside the vocabulary: the caption cannot be judged on it
        s = det.get("score")
        s = 1.0 if s is None else float(s)
        if s >= cfg.min_score:
            confident.setdefault(label, []).append(det)
        elif s >= cfg.uncertain_low:
            uncertain.setdefault(label, []).append(det)

    affirmed = [m for m in parsed.mentions if not m.negated]
    covered: list[str] = []
    hallucinated: list[str] = []
    unknown: list[str] = []
    for m in affirmed:
        bucket = covered if m.label in confident else unknown if m.label in uncertain else hallucinated
        if m.label not in bucket:
            bucket.append(m.label)
    missed = [label for label in confident if label not in covered]

    # Counts: summed within a sentence, the largest sentence total across sentences (see the docstring).
    per_sentence: dict[str, dict[int, int]] = {}
    exact: dict[str, bool] = {}
    for m in affirmed:
        if m.count is not None:
            sums = per_sentence.setdefault(m.label, {})
            sums[m.sentence] = sums.get(m.sentence, 0) + m.count
            exact[m.label] = exact.get(m.label, False) or not m.at_least
    count_errors: list[CountError] = []
    partial: list[str] = []
    partial_loss = 0.0  # summed share of instances the partial labels leave out
    for label, sums in per_sentence.items():
        if label not in confident:
            continue
        k = max(sums.values())
        n_conf, n_unc = len(confident[label]), len(uncertain.get(label, ()))
        if k > n_conf + n_unc or (exact[label] and k < n_conf):
            count_errors.append(CountError(label, k, n_conf))
        elif k < n_conf:  # "at least k" and k is true: nothing wrong, but not all of them
            partial.append(label)
            partial_loss += 1 - k / n_conf

    color_errors: list[ColorError] = []
    for m in affirmed:
        if m.color is None or m.label not in confident:
            continue
        dets = confident[m.label] + uncertain.get(m.label, [])
        cols = [d.get("color") for d in dets]
        if any(c is None for c in cols):
            continue  # the detector does not see colour: unscored
        cols = [_COLOR_ALIASES.get(str(c).lower(), str(c).lower()) for c in cols]
        need = max(1, min(m.count or 1, len(cols)))  # a wrong count is already a count error
        if sum(c == m.color for c in cols) < need:
            color_errors.append(ColorError(m.label, m.color, tuple(cols)))

    negation_errors: list[str] = []
    for m in parsed.mentions:
        if not (m.negated and m.claims_absent and m.label in confident) or m.label in negation_errors:
            continue
        cols = [d.get("color") for d in confident[m.label]]
        if m.color is not None:
            if any(c is None for c in cols):
                continue  # "no red cups" cannot be checked without colours
            if m.color not in {_COLOR_ALIASES.get(str(c).lower(), str(c).lower()) for c in cols}:
                continue
        negation_errors.append(m.label)

    relation_errors: list[Relation] = []
    for r in parsed.relations:
        ms, mo = parsed.mentions[r.subject_index], parsed.mentions[r.object_index]
        if ms.negated or mo.negated or r.subject == r.object:
            continue
        if r.subject not in confident or r.object not in confident:
            continue  # a relation with an absent side is not scored (the absence already is)
        subj = [_centre(d["box"]) for d in confident[r.subject] + uncertain.get(r.subject, [])]
        obj = [_centre(d["box"]) for d in confident[r.object] + uncertain.get(r.object, [])]
        test = _REL_TEST[r.relation]
        if not any(test(s, o) for s in subj for o in obj):
            relation_errors.append(r)

    recall = len(covered) / len(confident) if confident else 1.0
    precision = len(covered) / (len(covered) + len(hallucinated)) if covered or hallucinated else 1.0
    n_vague = len(parsed.vague)
    score = (
        cfg.w_recall * recall
        - cfg.w_halluc * len(hallucinated)
        - cfg.w_count * len(count_errors)
        - cfg.w_partial * (partial_loss / len(confident) if confident else 0.0)
        - cfg.w_relation * len(relation_errors)
        - cfg.w_color * len(color_errors)
        - cfg.w_negation * len(negation_errors)
        - cfg.w_vague * n_vague
        - cfg.w_length * max(0, parsed.n_words - cfg.target_words)
    )
    return JudgeResult(
        hallucinated=hallucinated, covered=covered, missed=missed, partial=partial, count_errors=count_errors,
        relation_errors=relation_errors, color_errors=color_errors, negation_errors=negation_errors,
        vague=n_vague, vague_phrases=list(parsed.vague), unknown=unknown, unknown_nouns=list(parsed.unknown_nouns),
        n_words=parsed.n_words, n_tokens=_count_tokens(tokenizer, parsed.text), precision=precision,
        recall=recall, score=score,
    )
