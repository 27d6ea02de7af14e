"""The judge's lexicon: the English it reads, written out by hand, and how text becomes words.

Why hand-written
    The caption judge is the toolkit's own instrument: it ranks sampled captions into DPO pairs and counts
    hallucinations for CHAIR-style metrics, so its reading must be fast (it runs on every sample), pure Python,
    deterministic and reviewable. A tagger or parser model would make pair mining and metrics depend on that
    model's version and errors. Here every decision the judge makes traces back to a word in a list below, and a
    misreading is fixed by editing a list, with a test.

What is here
    colours, relation names, number words, determiners and quantifiers (with the count and number they state),
    negators, function words, vague nouns and hedges, the fixed relation shapes, and the tokeniser every
    other part of the judge shares (`_WORD_RE`, `_split_words`, `_norm`). Plural forms come from
    `vlm_dpo.plurals`, shared with the text the toolkit writes.
"""

from __future__ import annotations

import re

BASIC_COLORS = (
    "red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white", "gray", "grey",
    "violet", "teal", "beige", "cyan", "magenta", "turquoise", "silver", "gold", "golden", "maroon", "navy",
)
# Both spellings are colour words in captions; compare them as one.
_COLOR_ALIASES = {"grey": "gray", "golden": "gold"}

RELATIONS = ("left_of", "right_of", "above", "below")

NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)

# Determiners and quantifiers: words -> (count, plural hint, negation). count None = unspecified;
# plural hint None = take the number from the noun's form; negation "absent" = the caption says there is none.
_Q = tuple[int | None, bool | None, bool]
_QUANTIFIERS: dict[tuple[str, ...], _Q] = {}


def _q(phrases: str, count: int | None, plural: bool | None, negated: bool = False) -> None:
    for p in phrases.split("|"):
        _QUANTIFIERS[tuple(p.split())] = (count, plural, negated)


for _n, _w in enumerate(NUMBER_WORDS):
    _q(_w, _n, _n != 1, _n == 0)
_q("a|an|single|a single|one single|just one", 1, False)
_q("a pair of|pair of|a pair|both|a couple of|couple of|a couple", 2, True)
_q("a dozen|dozen", 12, True)
_q("half a dozen", 6, True)
_q("several|some|many|few|a few|quite a few|multiple|numerous|various|assorted|a lot of|lots of|a bunch of"
   "|bunch of|a number of|a group of|group of|a set of|a pile of|a stack of|a row of|a variety of|plenty of"
   "|a handful of|a collection of|a cluster of|a line of|a few of", None, True)
_q("the|each|every|another|any|its|their|his|her|my|our|your|this", None, None)
_q("these|those", None, True)
_q("no", None, None, True)
_q("none of the|none of", None, True, True)
_MAX_Q = max(len(k) for k in _QUANTIFIERS)
_QUANT_WORDS = frozenset(w for k in _QUANTIFIERS for w in k)

# Words that negate the noun phrase right after them.
_NEGATORS = frozenset({
    "not", "no", "without", "nor", "neither", "never", "isn't", "aren't", "wasn't", "weren't", "don't",
    "doesn't", "didn't", "can't", "cannot", "couldn't", "won't", "lacks", "lacking", "minus",
})
# A verb that may stand between a negator and the noun phrase: "don't see any cups", "doesn't contain a ball".
_NEG_BRIDGE = frozenset({
    "see", "seen", "have", "has", "contain", "contains", "show", "shows", "include", "includes", "there",
    "be", "appear", "appears", "seem", "seems", "find", "spot", "notice",
})
_COPULAS = frozenset({"is", "are", "was", "were", "be"})

# Function words: never skipped as adjectives when looking back from a noun, never taken as unknown nouns.
_FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every another no both all either neither several many few various
multiple numerous such its their his her our my your
on in at of to with without near next beside besides behind under above below over between by from into onto
around across along against among atop inside outside beneath underneath upon within toward towards for off up
down through about like than as
and or but nor while whereas plus also then so yet
it they there here which who what where i we you he she them itself
is are was were be been being am has have had do does did can could may might will would shall should must
sits sit sitting lies lie lying stands stand standing rests rest resting placed located positioned situated
shows show showing shown contains contain containing appears appear seems seem see seen visible
isn't aren't wasn't weren't don't doesn't didn't can't cannot couldn't won't
left right top bottom middle center centre side front back corner edge foreground background
just only very too not also directly slightly closely together alone even still really
""".split())

# Vague generic nouns and hedges. Listed as phrases; matched longest first.
_VAGUE = tuple(sorted(
    (tuple(p.split()) for p in (
        "object|objects|thing|things|stuff|item|items|something|maybe|possibly|might|perhaps|probably|various"
        "|some kind of|some sort of|some type of|kind of|sort of|could be|appears to be|appear to be"
        "|seems to be|seem to be|looks like|look like|unclear|unidentified|unidentifiable|miscellaneous"
        "|assorted").split("|")),
    key=len, reverse=True,
))
_VAGUE_SET = frozenset(_VAGUE)
_MAX_VAGUE = max(len(v) for v in _VAGUE)
_VAGUE_WORDS = frozenset(w for v in _VAGUE for w in v)
# Nouns about the picture itself, never an "unknown object".
_META_NOUNS = frozenset({"image", "picture", "photo", "photograph", "scene", "view", "shot", "frame", "caption"})

# Relation shapes. Words dropped before matching "X ... Y": verbs of position and articles carry no direction.
_REL_FILLERS = frozenset({
    "is", "are", "was", "were", "be", "being", "sits", "sit", "sitting", "lies", "lie", "lying", "stands",
    "stand", "standing", "rests", "resting", "placed", "located", "positioned", "situated", "set", "just",
    "directly", "slightly", "immediately", "somewhat", "to", "the", "on", "at", "side", "hand", "which", "that",
    "it", "both",
})
_REL_PATTERNS = {
    ("left", "of"): "left_of", ("right", "of"): "right_of", ("above",): "above", ("below",): "below",
    ("under",): "below", ("beneath",): "below", ("underneath",): "below",
}
# "X on the left and Y on the right": extra words allowed around the side words.
_SIDE_FILLERS = _REL_FILLERS | {"and", "while", "whereas", "with", "but", "in"}
_SIDES = {"left": ("right", "left_of"), "right": ("left", "right_of"), "top": ("bottom", "above"),
          "bottom": ("top", "below")}


# Tokens are runs of letters/digits, optionally joined by apostrophes ("isn't", "cup's"). Hyphens and underscores
# split words, so "cell-phone" and "cell_phone" read as "cell phone".
_WORD_RE = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_CLAUSE_RE = re.compile(r"[,;:.!?()\[\]\n\"\u201c\u201d]")
_SENTENCE_RE = re.compile(r"[;.!?\n]")


def _split_words(text: str) -> list[str]:
    return [_norm(m.group())[0] for m in _WORD_RE.finditer(text)]


def _norm(word: str) -> tuple[str, int]:
    """Lower-cased word and how many trailing characters of the original were dropped."""
    w = word.lower().replace("\u2019", "'")
    if w.endswith("'s") and len(w) > 2:  # possessive / "it's": the bare word matters here
        return w[:-2], 2
    return w, 0
