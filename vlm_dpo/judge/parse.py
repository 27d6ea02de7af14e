"""Caption parsing: what a caption claims, as object mentions in a vocabulary's classes.

`parse_caption` is a small, deterministic, rule-based reader, not a syntactic parser:
    1. `_Tokens` splits the caption into lower-cased words with character spans, and marks clause (punctuation)
       and sentence boundaries between them; names, counts and negations never reach across a boundary.
    2. `_match_names` finds vocabulary names longest-match first on whole words, so "hot dog" is not a dog and
       "cupboard" is not a cup; a colour that is also a class ("orange") is a colour when a noun follows.
    3. `_analyse_prefix` looks a few words back from each name for colours, adjectives, a count ("two", "3",
       "a pair of", "several") and a negation ("no", "without", "not a", "there isn't any").
    4. `_find_relations` reads two fixed shapes between neighbouring mentions: "X (is) (to the) left of / right
       of / above / below Y" and "X on the left and Y on the right" (also top and bottom).
    5. `_find_vague` lists vague nouns and hedges ("objects", "some kind of"); `_find_unknown_nouns` guesses
       nouns the vocabulary does not know (informational only).
The word lists these steps use are in `lexicon.py`. The result, `ParsedCaption`, is what CHAIR-style metrics
count and what `score.score_caption` judges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .lexicon import (
    _CLAUSE_RE, _COLOR_ALIASES, _COPULAS, _FUNCTION_WORDS, _MAX_Q, _MAX_VAGUE, _META_NOUNS, _NEG_BRIDGE,
    _NEGATORS, NUMBER_WORDS, _QUANT_WORDS, _QUANTIFIERS, _REL_FILLERS, _REL_PATTERNS, _SENTENCE_RE, _SIDE_FILLERS,
    _SIDES, _VAGUE_SET, _VAGUE_WORDS, _WORD_RE, _norm,
)
from .vocabulary import Vocabulary, _Index

@dataclass(frozen=True)
class Mention:
    """One object mention. count: the stated number, None if unspecified ("cups", "several cups").
    negated: the phrase is under a negation ("no cups", "not a cup"). claims_absent: the caption asserts the object
    is not there ("no cups", "without a ball"), as opposed to "the ball is not a cup". span/phrase: the matched
    name in the caption (character offsets, end exclusive). at_least: the count is a lower bound, not an exact
    number: an indefinite article ("a cup") says a cup is there, not that only one is, so "a cup" is true, if
    partial, of two cups; number words ("one cup", "two cups") stay exact. sentence: the index of the sentence
    the mention is in (sentences end at . ; ! ? or a newline), which `score_caption` uses to add counts up."""

    label: str
    count: int | None
    plural: bool
    color: str | None
    negated: bool
    span: tuple[int, int]
    phrase: str
    claims_absent: bool = False
    at_least: bool = False
    sentence: int = 0


@dataclass(frozen=True)
class Relation:
    """A spatial claim: `subject` is `relation` (left_of, right_of, above, below) `object`. The indices point
    into the parsed caption's mentions."""

    subject: str
    relation: str
    object: str
    subject_index: int = -1
    object_index: int = -1


@dataclass
class ParsedCaption:
    text: str
    mentions: list[Mention]
    relations: list[Relation]
    vague: list[str]  # vague nouns and hedges, as matched (lower case), in order
    unknown_nouns: list[str]  # likely object nouns the vocabulary does not know (heuristic, informational)
    n_words: int

    def labels(self, negated: bool = False) -> list[str]:
        """Distinct labels in order of first mention; affirmed ones, or negated ones with negated=True."""
        out: list[str] = []
        for m in self.mentions:
            if m.negated == negated and m.label not in out:
                out.append(m.label)
        return out

    def to_dict(self) -> dict:
        return asdict(self)


class _Tokens:
    __slots__ = ("words", "starts", "ends", "brk", "sent")

    def __init__(self, text: str):
        self.words: list[str] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.brk: list[bool] = []  # punctuation between this token and the previous one (clause boundary)
        self.sent: list[bool] = []  # sentence boundary before this token
        prev = 0
        for m in _WORD_RE.finditer(text):
            w, dropped = _norm(m.group())
            gap = text[prev:m.start()]
            self.words.append(w)
            self.starts.append(m.start())
            self.ends.append(m.end() - dropped)  # a stripped possessive is not part of the name
            self.brk.append(bool(_CLAUSE_RE.search(gap)))
            self.sent.append(bool(_SENTENCE_RE.search(gap)))
            prev = m.end()


def _is_number(w: str) -> bool:
    return w.isdigit() or w in NUMBER_WORDS


def _is_content(w: str) -> bool:
    """A word that can be an adjective or a noun: not a function word, quantifier, number or negator."""
    return (
        w not in _FUNCTION_WORDS and w not in _QUANT_WORDS and w not in _NEGATORS
        and not _is_number(w) and any(ch.isalpha() for ch in w)
    )


def _match_names(tk: _Tokens, idx: _Index) -> list[tuple[int, int, str | None, bool | None]]:
    """Longest-match-first scan for vocabulary names: (first token, end token, class, plural flag)."""
    words, brk, n = tk.words, tk.brk, len(tk.words)
    found = []
    i = 0
    while i < n:
        if words[i] in idx.first_words:
            for length in range(min(idx.max_len, n - i), 0, -1):
                # A name never spans punctuation ("cell, phone" is not a cell phone).
                if length > 1 and any(brk[i + 1:i + length]):
                    continue
                hit = idx.phrases.get(tuple(words[i:i + length]))
                if hit is None:
                    continue
                if length == 1 and hit[1] is False and words[i] in idx.colors and _colour_use(tk, i, idx):
                    break  # "an orange cat": here the class word is a colour
                found.append((i, i + length, hit[0], hit[1]))
                i += length - 1
                break
        i += 1
    return found


def _colour_use(tk: _Tokens, i: int, idx: _Index) -> bool:
    """Whether a word that is both a colour and a class ("orange") is used as a colour: it is when a content word
    follows it, possibly after more colours ("orange and blue balls")."""
    words, brk, n = tk.words, tk.brk, len(tk.words)
    k = i + 1
    while k < n and not brk[k] and (words[k] in idx.colors or words[k] in ("and", "or")):
        if words[k] in idx.colors and k + 1 < n and not brk[k + 1] and _is_content(words[k + 1]):
            return True
        k += 1
    return k < n and not brk[k] and k == i + 1 and _is_content(words[k])


def _negation_kind(tk: _Tokens, k: int) -> bool:
    """For a negator at token k: True if it states absence ("there isn't a cup", "without a ball"), False if it
    denies an identity ("the ball is not a cup")."""
    words = tk.words
    w = words[k]
    if w == "not":
        if k >= 1 and words[k - 1] in _COPULAS and not tk.brk[k]:
            return k >= 2 and words[k - 2] == "there" and not tk.brk[k - 1]
        return True
    if w in ("isn't", "aren't", "wasn't", "weren't"):
        return k >= 1 and words[k - 1] == "there" and not tk.brk[k]
    return True


def _analyse_prefix(tk: _Tokens, start: int, lower: int, idx: _Index):
    """Look back from a name at token `start` (not below `lower`) for colours, a count and a negation.

    Returns (count, plural_hint, negated, claims_absent, colors, has_quantifier, phrase_start, at_least)."""
    words, brk = tk.words, tk.brk
    colors: list[str] = []
    j = start - 1
    modifiers = 0
    while j >= lower and not brk[j + 1]:
        w = words[j]
        if w in idx.colors:
            colors.append(_COLOR_ALIASES.get(w, w))
        elif w in ("and", "or") and colors and j - 1 >= lower and words[j - 1] in idx.colors and not brk[j]:
            pass  # "red and blue balls"
        elif modifiers < 3 and _is_content(w) and not w.endswith("ing"):
            # An adjective: "two small cups". Caption "-ing" words are mostly verbs ("a man holding cups"),
            # and walking past one would take another noun's article or colour.
            modifiers += 1
        else:
            break
        j -= 1
    count: int | None = None
    plural_hint: bool | None = None
    negated = absent = False
    has_q = at_least = False
    phrase_start = j + 1
    if j >= lower and not brk[j + 1]:
        if words[j].isdigit():
            count, plural_hint, has_q, phrase_start = int(words[j]), int(words[j]) != 1, True, j
            negated = absent = count == 0
        else:
            for length in range(min(_MAX_Q, j - lower + 1), 0, -1):
                s = j - length + 1
                if length > 1 and any(brk[s + 1:j + 1]):
                    continue
                q = _QUANTIFIERS.get(tuple(words[s:j + 1]))
                if q is not None:
                    count, plural_hint, negated = q
                    absent = negated
                    has_q, phrase_start = True, s
                    at_least = words[s:j + 1] in (["a"], ["an"])  # "a cup" = at least one; "a single cup" = one
                    break
        # "twenty one" (hyphenated or not) reads as 21.
        if count is not None and 1 <= count <= 9 and phrase_start - 1 >= lower and not brk[phrase_start] \
                and words[phrase_start - 1] == "twenty":
            count += 20
            phrase_start -= 1
    if not negated:
        k = phrase_start - 1
        if k >= lower and not brk[k + 1]:
            if words[k] in _NEGATORS:
                negated, absent = True, _negation_kind(tk, k)
            elif words[k] in _NEG_BRIDGE and k - 1 >= lower and not brk[k] and words[k - 1] in _NEGATORS:
                negated, absent = True, _negation_kind(tk, k - 1)
    return count, plural_hint, negated, absent, colors, has_q, phrase_start, at_least


def parse_caption(text: str, vocab: Vocabulary) -> ParsedCaption:
    """Read a caption into object mentions (in `vocab`'s classes), spatial relations, vague words and unknown
    nouns. Deterministic and pure; see the module docstring for what it does and does not understand."""
    idx = vocab._index
    tk = _Tokens(text)
    words, brk, n = tk.words, tk.brk, len(tk.words)
    names = _match_names(tk, idx)
    covered = [False] * n
    for s, e, _, _ in names:
        for k in range(s, e):
            covered[k] = True

    mentions: list[Mention] = []
    positions: list[tuple[int, int, int]] = []  # (phrase start, name start, name end) per mention
    lower = 0
    for s, e, label, flag in names:
        if label is None:  # a blocking phrase: names nothing, but bounds the next look-back
            lower = e
            continue
        count, hint, negated, absent, colors, has_q, p_start, at_least = _analyse_prefix(tk, s, lower, idx)
        # "no cups or balls": negation carries over "or"/"nor" to a phrase with no determiner of its own.
        if not negated and mentions and (not has_q or words[p_start] == "any"):
            prev = mentions[-1]
            between = words[positions[-1][2]:p_start]
            if prev.negated and all(w in ("or", "nor") for w in between) \
                    and not any(tk.sent[positions[-1][2]:p_start + 1]):
                negated, absent = True, prev.claims_absent
        if count == 1 and flag is True and not words[p_start].isdigit() and words[p_start] != "one":
            # "a table holding cups": the article belongs to another noun the look-back walked past.
            count, hint, at_least = None, None, False
        if count is not None and count > 0:
            plural = count > 1
        elif hint is not None:
            plural = hint
        else:
            plural = bool(flag)
        distinct = list(dict.fromkeys(colors))
        span = (tk.starts[s], tk.ends[e - 1])
        mentions.append(Mention(
            label=label, count=count, plural=plural, color=distinct[0] if len(distinct) == 1 else None,
            negated=negated, span=span, phrase=text[span[0]:span[1]], claims_absent=absent,
            at_least=at_least and count == 1, sentence=sum(tk.sent[1:s + 1]),
        ))
        positions.append((p_start, s, e))
        lower = e

    relations = _find_relations(tk, mentions, positions)
    vague = _find_vague(words, brk, covered)
    unknown = _find_unknown_nouns(words, brk, covered, idx)
    return ParsedCaption(text, mentions, relations, vague, unknown, n)


def _find_relations(tk: _Tokens, mentions: list[Mention], positions: list[tuple[int, int, int]]) -> list[Relation]:
    words, n = tk.words, len(tk.words)
    out: list[Relation] = []
    for a in range(len(mentions) - 1):
        b = a + 1
        a_end, (b_start, _, b_end) = positions[a][2], positions[b]
        if any(tk.sent[a_end:b_start + 1]):
            continue  # relations do not cross sentences
        between = words[a_end:b_start]
        # "X (is) (to the) left of Y"
        core = tuple(w for w in between if w not in _REL_FILLERS)
        rel = _REL_PATTERNS.get(core)
        if rel is None and "of" not in between:
            # "X on the left and Y on the right"
            side = [w for w in between if w not in _SIDE_FILLERS]
            if len(side) == 1 and side[0] in _SIDES:
                opposite, rel_name = _SIDES[side[0]]
                stop = positions[b + 1][0] if b + 1 < len(mentions) else n
                after = []
                for k in range(b_end, stop):
                    if tk.sent[k]:
                        break
                    after.append(words[k])
                tail = [w for w in after if w not in _SIDE_FILLERS]
                if tail[:1] == [opposite] and tail[1:2] != ["of"]:
                    rel = rel_name
        if rel is not None:
            out.append(Relation(mentions[a].label, rel, mentions[b].label, a, b))
    return out


def _find_vague(words: list[str], brk: list[bool], covered: list[bool]) -> list[str]:
    out: list[str] = []
    i, n = 0, len(words)
    while i < n:
        step = 1
        if not covered[i]:
            for length in range(min(_MAX_VAGUE, n - i), 0, -1):
                key = tuple(words[i:i + length])
                if key in _VAGUE_SET and not any(covered[i:i + length]) and not any(brk[i + 1:i + length]):
                    out.append(" ".join(key))
                    step = length
                    break
        i += step
    return out


def _find_unknown_nouns(words: list[str], brk: list[bool], covered: list[bool], idx: _Index) -> list[str]:
    """After a determiner or number, the last of a run of content words that reaches no vocabulary name is
    probably an object the vocabulary does not know ("a banana", "an empty table")."""
    out: list[str] = []
    n = len(words)
    for i, w in enumerate(words):
        if covered[i] or not (w in _QUANT_WORDS or w.isdigit()):
            continue
        k = i + 1
        while k < n and not brk[k] and not covered[k] and _is_content(words[k]):
            k += 1
        if k == i + 1 or (k < n and covered[k] and not brk[k]):
            continue  # nothing, or adjectives of a known name
        last = words[k - 1]
        if last in idx.colors or last in _META_NOUNS or last in _VAGUE_WORDS or last in out:
            continue
        out.append(last)
    return out

