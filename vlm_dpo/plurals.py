"""English plurals of object names: the one form the toolkit writes, and every form the caption judge reads.

Writing and reading differ on purpose:
    * `plural(word)` is the single form put into text the toolkit writes: grounding contexts ("2 cups"),
      the world's reference captions ("two red cups"), synthetic pair edits ("two mugs"). Those strings are
      model inputs and training targets, so the form must never drift: changing it changes prompts, captions
      and every number downstream. It knows only the irregular nouns it has always known (`_WRITTEN`).
    * `plural_forms(phrase)` is every form a caption may use for a name ("people" and "persons"), so the judge
      (`vlm_dpo.judge`) counts a mention however a captioner inflects it; missing a form would make the judge
      blind to a mention, which pair mining and CHAIR would then read as an omission.
Both share the irregular table `IRREGULAR_PLURALS` and the regular English rule.

Known gaps of the written form, kept because fixing them changes model inputs (decide that as its own change):
"scissors" -> "scissorses", and irregular nouns outside `_WRITTEN` take the regular rule ("child" -> "childs").
No world kind is affected; the judge reads only "scissors" and "children" for those.

Plain Python, no imports from the rest of the toolkit, so anything (the world, the judge, grounding) can use it.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

__all__ = ["IRREGULAR_PLURALS", "plural", "plural_forms"]

# Irregular plurals of single words (singular -> plural forms, the usual one first). A word that maps to itself
# is invariant ("sheep"), so its number comes from the count or determiner, not from its form.
_IRREGULAR = {
    "person": ("people", "persons"), "child": ("children",), "grandchild": ("grandchildren",),
    "mouse": ("mice",), "goose": ("geese",), "ox": ("oxen",), "foot": ("feet",), "tooth": ("teeth",),
    "knife": ("knives",), "pocketknife": ("pocketknives",), "knive": ("knives",), "calf": ("calves",),
    "leaf": ("leaves",), "shelf": ("shelves",), "loaf": ("loaves",), "wolf": ("wolves",), "thief": ("thieves",),
    "scarf": ("scarves", "scarfs"), "potato": ("potatoes",), "tomato": ("tomatoes",),
    "buffalo": ("buffalo", "buffaloes", "buffalos"),
    "cactus": ("cacti", "cactuses"),
}
_INVARIANT = (
    "sheep", "deer", "fish", "bison", "moose", "cattle", "aircraft", "watercraft", "hovercraft", "spacecraft",
    "skis", "scissors", "series", "species", "offspring", "police", "glasses", "pants", "shorts", "jeans",
)
IRREGULAR_PLURALS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {**_IRREGULAR, **{w: (w,) for w in _INVARIANT}}
)
# "-man" compounds (policeman, snowman) take "-men"; these look like them but are not.
_NOT_MAN_COMPOUNDS = frozenset({"human", "german", "shaman", "caiman", "talisman", "ottoman", "walkman", "roman"})

# The whole labels `plural` inflects irregularly (their usual form from the table above). Only these: the
# written form of anything else has always been regular, and it must not change under existing prompts.
_WRITTEN = {w: IRREGULAR_PLURALS[w][0] for w in ("person", "mouse", "knife", "sheep", "skis")}
# Endings that take "-es". Reading also accepts "-zes" ("waltzes"); writing has never produced it.
_WRITE_ES = ("s", "sh", "ch", "x")
_READ_ES = _WRITE_ES + ("z",)


def _regular_plural(word: str, es_endings: tuple[str, ...] = _READ_ES) -> str:
    if word.endswith(es_endings):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def plural(word: str) -> str:
    """The plural written in text the toolkit produces: "cup" -> "cups", "person" -> "people",
    "teddy bear" -> "teddy bears" (only a whole label is looked up in `_WRITTEN`; case is kept as given)."""
    if word in _WRITTEN:
        return _WRITTEN[word]
    return _regular_plural(word, _WRITE_ES)


def plural_forms(phrase: str, irregular: Mapping[str, tuple[str, ...]] = IRREGULAR_PLURALS) -> tuple[str, ...]:
    """Every plural form of a (possibly multi-word) name that a reader should accept; the last word is inflected
    ("teddy bear" -> "teddy bears", "policeman" -> "policemen", "person" -> "people", "persons")."""
    head, _, last = phrase.rpartition(" ")
    prefix = head + " " if head else ""
    if last in irregular:
        forms = irregular[last]
    elif last == "man" or (last.endswith("man") and len(last) > 3 and last not in _NOT_MAN_COMPOUNDS):
        forms = (last[:-3] + "men",)
    else:
        forms = (_regular_plural(last),)
    return tuple(prefix + f for f in forms)
