"""The caption parser: mentions (counts, plurals, negation, synonyms, colours), spans, relations, vague words.

Every expected value below was worked out by hand from the rules in `vlm_dpo/judge/parse.py`'s docstrings.
"""

from __future__ import annotations

import pytest

from vlm_dpo.judge import Vocabulary, parse_caption

WORLD = Vocabulary.world()
COCO = Vocabulary.coco()
VOCABS = {"world": WORLD, "coco": COCO}


def mentions(text, vocab="world"):
    p = parse_caption(text, VOCABS[vocab])
    return [(m.label, m.count, m.plural, m.color, m.negated) for m in p.mentions]


# (caption, vocabulary, [(label, count, plural, color, negated), ...])
PARSE_CASES = [
    # plurals and counts
    ("two cups", "world", [("cup", 2, True, None, False)]),
    ("cups", "world", [("cup", None, True, None, False)]),
    ("a cup", "world", [("cup", 1, False, None, False)]),
    ("one cup", "world", [("cup", 1, False, None, False)]),
    ("3 balls", "world", [("ball", 3, True, None, False)]),
    ("seven blocks", "world", [("block", 7, True, None, False)]),
    ("twelve cubes", "world", [("block", 12, True, None, False)]),
    ("a pair of books", "world", [("book", 2, True, None, False)]),
    ("a couple of apples", "world", [("apple", 2, True, None, False)]),
    ("both bowls", "world", [("bowl", 2, True, None, False)]),
    ("several bottles", "world", [("bottle", None, True, None, False)]),
    ("a few phones", "world", [("phone", None, True, None, False)]),
    ("some balls", "world", [("ball", None, True, None, False)]),
    ("two balls and one cup", "world", [("ball", 2, True, None, False), ("cup", 1, False, None, False)]),
    ("the two cups", "world", [("cup", 2, True, None, False)]),
    ("two sheep", "coco", [("sheep", 2, True, None, False)]),
    ("the sheep", "coco", [("sheep", None, False, None, False)]),
    ("two people", "coco", [("person", 2, True, None, False)]),
    ("three knives", "coco", [("knife", 3, True, None, False)]),
    # negation
    ("no cups on the table", "world", [("cup", None, True, None, True)]),
    ("a ball but no cup", "world", [("ball", 1, False, None, False), ("cup", None, False, None, True)]),
    ("there are no cups or balls", "world", [("cup", None, True, None, True), ("ball", None, True, None, True)]),
    ("there are no cups and a ball", "world", [("cup", None, True, None, True), ("ball", 1, False, None, False)]),
    ("a cup without a ball", "world", [("cup", 1, False, None, False), ("ball", 1, False, None, True)]),
    ("not a cup", "world", [("cup", 1, False, None, True)]),
    ("there isn't a single bowl", "world", [("bowl", 1, False, None, True)]),
    ("I don't see any mugs", "world", [("cup", None, True, None, True)]),
    ("the ball is not a cup", "world", [("ball", None, False, None, False), ("cup", 1, False, None, True)]),
    ("zero apples", "world", [("apple", 0, True, None, True)]),
    # synonyms and multi-word names
    ("a mug", "world", [("cup", 1, False, None, False)]),
    ("two coffee mugs", "world", [("cup", 2, True, None, False)]),
    ("a cell phone and a smartphone", "world", [("phone", 1, False, None, False), ("phone", 1, False, None, False)]),
    ("a teddy bear", "coco", [("teddy bear", 1, False, None, False)]),
    ("a hot dog and a dog", "coco", [("hot dog", 1, False, None, False), ("dog", 1, False, None, False)]),
    ("two hot dogs", "coco", [("hot dog", 2, True, None, False)]),
    ("a man on a motor bike", "coco", [("person", 1, False, None, False), ("motorcycle", 1, False, None, False)]),
    ("a baby bird", "coco", [("bird", 1, False, None, False)]),  # not a person
    ("a toilet seat", "coco", [("toilet", 1, False, None, False)]),  # not a chair
    ("a wooden dining table", "coco", [("dining table", 1, False, None, False)]),
    ("wine glasses", "coco", [("wine glass", None, True, None, False)]),
    # whole words only, any case, punctuation
    ("a cupboard", "world", []),
    ("a booklet and a football", "world", []),
    ("CUPS!!!", "world", [("cup", None, True, None, False)]),
    ("The Cup's handle.", "world", [("cup", None, False, None, False)]),
    ("a cell-phone", "world", [("phone", 1, False, None, False)]),
    # colours
    ("a red cup", "world", [("cup", 1, False, "red", False)]),
    ("two small red cups", "world", [("cup", 2, True, "red", False)]),
    ("red and blue balls", "world", [("ball", None, True, None, False)]),
    ("a grey bowl", "world", [("bowl", 1, False, "gray", False)]),
    ("an orange cat and an orange", "coco", [("cat", 1, False, "orange", False), ("orange", 1, False, None, False)]),
    ("an orange block", "world", [("block", 1, False, "orange", False)]),
    ("a man in an orange shirt holding oranges", "coco",
     [("person", 1, False, None, False), ("orange", None, True, None, False)]),
]


@pytest.mark.parametrize("text,vocab,expected", PARSE_CASES)
def test_parse_mentions(text, vocab, expected):
    assert mentions(text, vocab) == expected


def test_mention_span_and_phrase():
    p = parse_caption("I see a cell phone.", WORLD)
    (m,) = p.mentions
    assert m.span == (8, 18)
    assert m.phrase == "cell phone"
    p = parse_caption("The Cup's handle.", WORLD)
    assert p.mentions[0].phrase == "Cup"  # the possessive is not part of the name


def test_negation_kinds():
    # "no X" states absence; "the ball is not a cup" only denies an identity.
    assert parse_caption("no cups", WORLD).mentions[0].claims_absent
    assert parse_caption("there is not a cup", WORLD).mentions[0].claims_absent
    assert not parse_caption("the ball is not a cup", WORLD).mentions[1].claims_absent


RELATION_CASES = [
    ("a cup to the left of a ball", [("cup", "left_of", "ball")]),
    ("a cup is on the left side of a ball", [("cup", "left_of", "ball")]),
    ("the book is right of the apple", [("book", "right_of", "apple")]),
    ("a bowl above a phone", [("bowl", "above", "phone")]),
    ("a bowl sits under a phone", [("bowl", "below", "phone")]),
    ("a red cup on the left and a blue ball on the right.", [("cup", "left_of", "ball")]),
    ("a ball on the right and a cup on the left", [("ball", "right_of", "cup")]),
    ("a bowl at the top and an apple at the bottom", [("bowl", "above", "apple")]),
    ("a cup next to a ball", []),
    ("a cup on the left. a ball on the right.", []),  # not across sentences
]


@pytest.mark.parametrize("text,expected", RELATION_CASES)
def test_parse_relations(text, expected):
    p = parse_caption(text, WORLD)
    assert [(r.subject, r.relation, r.object) for r in p.relations] == expected


VAGUE_CASES = [
    ("some objects on a table.", ["objects"]),
    ("a few things on the table.", ["things"]),
    ("various items on a table.", ["various", "items"]),
    ("maybe a cup, possibly some kind of ball", ["maybe", "possibly", "some kind of"]),
    ("there might be something here", ["might", "something"]),
    ("two red cups and a blue ball.", []),
]


@pytest.mark.parametrize("text,expected", VAGUE_CASES)
def test_parse_vague(text, expected):
    assert parse_caption(text, WORLD).vague == expected


def test_unknown_nouns_and_word_count():
    p = parse_caption("a banana and a cup on an empty table.", WORLD)
    assert p.unknown_nouns == ["banana", "table"]
    assert [m.label for m in p.mentions] == ["cup"]
    assert p.n_words == 9
    assert parse_caption("two red cups, a blue ball and a green book.", WORLD).n_words == 10



@pytest.mark.parametrize("text, expected", [
    ("a cup", [(1, True, 0)]),  # an indefinite article: at least one
    ("an apple", [(1, True, 0)]),
    ("one cup", [(1, False, 0)]),  # a number word is exact
    ("a single cup", [(1, False, 0)]),
    ("a pair of books", [(2, False, 0)]),
    ("two cups. One cup is blue and one cup is red.", [(2, False, 0), (1, False, 1), (1, False, 1)]),
    ("a cup; the cup is red! A ball", [(1, True, 0), (None, False, 1), (1, True, 2)]),
])
def test_count_lower_bound_and_sentence(text, expected):
    p = parse_caption(text, VOCABS["world"])
    assert [(m.count, m.at_least, m.sentence) for m in p.mentions] == expected
