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
    * Counts of a label are summed over its mentions that state a number ("a red cup and a blue cup" = 2);
      anaphora ("the cup", "it") is not resolved and adds nothing.
    * Relations are existential: "a cup left of a ball" holds when some cup's centre is left of some ball's.
      Relations between two objects of the same label are not scored.
    * Colours are scored only when the detections carry a "color" (ground truth does, detectors usually not).
    * Unknown nouns are a heuristic (the last content word after a determiner); they are informational only.
    * Of the CHAIR reference rules, the one that drops "seat" from any caption that mentions a toilet is not
      reproduced; "toilet seat" as a phrase is.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "BASIC_COLORS", "COCO_CLASSES", "ColorError", "CountError", "JudgeConfig", "JudgeResult", "Mention",
    "ParsedCaption", "Relation", "RELATIONS", "Vocabulary", "parse_caption", "pluralize", "score_caption",
]

# ---------------------------------------------------------------------------------------------------------------
# Word lists
# ---------------------------------------------------------------------------------------------------------------

BASIC_COLORS = (
    "red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white", "gray", "grey",
    "violet", "teal", "beige", "cyan", "magenta", "turquoise", "silver", "gold", "golden", "maroon", "navy",
)
# Both spellings are colour words in captions; compare them as one.
_COLOR_ALIASES = {"grey": "gray", "golden": "gold"}

RELATIONS = ("left_of", "right_of", "above", "below")

# Irregular plurals of single words (singular -> plural forms). A word that maps to itself is invariant
# ("sheep"), so its number comes from the count or determiner, not from its form.
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

_NUMBER_WORDS = (
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


for _n, _w in enumerate(_NUMBER_WORDS):
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

# ---------------------------------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------------------------------

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)

# The synonym table of the CHAIR metric (Rohrbach et al., 2018, "Object Hallucination in Image Captioning"),
# one row per COCO class: "class: synonyms". Kept verbatim, typos included ("televison", "solider"), since
# they are what the reference evaluation matches and CHAIR numbers stay comparable.
_CHAIR_SYNONYMS = """
person: girl, boy, man, woman, kid, child, chef, baker, people, adult, rider, children, baby, worker, passenger,
 sister, biker, policeman, cop, officer, lady, cowboy, bride, groom, male, female, guy, traveler, mother, father,
 gentleman, pitcher, player, skier, snowboarder, skater, skateboarder, foreigner, caller, offender, coworker,
 trespasser, patient, politician, soldier, grandchild, serviceman, walker, drinker, doctor, bicyclist, thief,
 buyer, teenager, student, camper, driver, solider, hunter, shopper, villager
bicycle: bike, unicycle, minibike, trike
car: automobile, van, minivan, sedan, suv, hatchback, cab, jeep, coupe, taxicab, limo, taxi
motorcycle: scooter, motor bike, motor cycle, motorbike, moped
airplane: jetliner, plane, air plane, monoplane, aircraft, jet, airbus, biplane, seaplane
bus: minibus, trolley
train: locomotive, tramway, caboose
truck: pickup, lorry, hauler, firetruck
boat: ship, liner, sailboat, motorboat, dinghy, powerboat, speedboat, canoe, skiff, yacht, kayak, catamaran,
 pontoon, houseboat, vessel, rowboat, trawler, ferryboat, watercraft, tugboat, schooner, barge, ferry, sailboard,
 paddleboat, lifeboat, freighter, steamboat, riverboat, battleship, steamship
traffic light: street light, traffic signal, stop light, streetlight, stoplight
fire hydrant: hydrant
stop sign:
parking meter:
bench: pew
bird: ostrich, owl, seagull, goose, duck, parakeet, falcon, robin, pelican, waterfowl, heron, hummingbird,
 mallard, finch, pigeon, sparrow, seabird, osprey, blackbird, fowl, shorebird, woodpecker, egret, chickadee,
 quail, bluebird, kingfisher, buzzard, willet, gull, swan, bluejay, flamingo, cormorant, parrot, loon, gosling,
 waterbird, pheasant, rooster, sandpiper, crow, raven, turkey, oriole, cowbird, warbler, magpie, peacock,
 cockatiel, lorikeet, puffin, vulture, condor, macaw, peafowl, cockatoo, songbird
cat: kitten, feline, tabby
dog: puppy, beagle, pup, chihuahua, schnauzer, dachshund, rottweiler, canine, pitbull, collie, pug, terrier,
 poodle, labrador, doggie, doberman, mutt, doggy, spaniel, bulldog, sheepdog, weimaraner, corgi, cocker,
 greyhound, retriever, brindle, hound, whippet, husky
horse: colt, pony, racehorse, stallion, equine, mare, foal, palomino, mustang, clydesdale, bronc, bronco
sheep: lamb, ram, goat, ewe
cow: cattle, oxen, ox, calf, holstein, heifer, buffalo, bull, zebu, bison
elephant:
bear: panda
zebra:
giraffe:
backpack: knapsack
umbrella:
handbag: wallet, purse, briefcase
tie: bow, bow tie
suitcase: suit case, luggage
frisbee:
skis: ski
snowboard:
sports ball: ball
kite:
baseball bat:
baseball glove:
skateboard:
surfboard: longboard, skimboard, shortboard, wakeboard
tennis racket: racket
bottle:
wine glass:
cup:
fork:
knife: pocketknife, knive
spoon:
bowl: container
banana:
apple:
sandwich: burger, sub, cheeseburger, hamburger
orange:
broccoli:
carrot:
hot dog:
pizza:
donut: doughnut, bagel
cake: cheesecake, cupcake, shortcake, coffeecake, pancake
chair: seat, stool
couch: sofa, recliner, futon, loveseat, settee, chesterfield
potted plant: houseplant
bed:
dining table: table, desk
toilet: urinal, commode, lavatory, potty
tv: monitor, televison, television
laptop: computer, notebook, netbook, lenovo, macbook, laptop computer
mouse:
remote:
keyboard:
cell phone: mobile phone, phone, cellphone, telephone, phon, smartphone, iphone
microwave:
oven: stovetop, stove, stove top oven
toaster:
sink:
refrigerator: fridge, freezer
book:
clock:
vase:
scissors:
teddy bear: teddybear
hair drier: hairdryer
toothbrush:
"""

# The CHAIR script's two-word rules: a qualifier that would otherwise fire a wrong class ("baby bird" is a bird,
# not a person; "passenger jet" is a plane) and phrases that name no COCO object at all (None).
_CHAIR_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")


def _chair_extra_phrases() -> dict[str, str | None]:
    extra: dict[str, str | None] = {}
    for a in _CHAIR_ANIMALS:
        extra[f"baby {a}"] = a
        extra[f"adult {a}"] = a
    for w in ("animal", "cub"):  # not COCO classes: the qualifier must not fire "person" either
        extra[f"baby {w}"] = None
        extra[f"adult {w}"] = None
    extra.update({"passenger jet": "airplane", "passenger train": "train", "toilet seat": "toilet",
                  "home plate": None})
    return extra


# The embedded world's synonyms: what captioners call its eight kinds.
_WORLD_SYNONYMS = {
    "cup": ("mug", "coffee cup", "coffee mug", "tea cup", "teacup", "beaker"),
    "bottle": ("water bottle", "flask", "soda bottle"),
    "ball": ("sphere", "beach ball", "bouncy ball", "rubber ball"),
    "block": ("cube", "brick", "toy block", "building block", "wooden block"),
    "book": ("notebook", "textbook", "novel", "hardcover"),
    "apple": (),
    "bowl": ("basin", "salad bowl", "cereal bowl"),
    "phone": ("smartphone", "cellphone", "cell phone", "mobile phone", "mobile", "telephone", "iphone", "handset"),
}


def _regular_plural(word: str) -> str:
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def pluralize(phrase: str, irregular: Mapping[str, tuple[str, ...]] = IRREGULAR_PLURALS) -> tuple[str, ...]:
    """Plural forms of a (possibly multi-word) name: the last word is inflected ("teddy bear" -> "teddy bears")."""
    head, _, last = phrase.rpartition(" ")
    prefix = head + " " if head else ""
    if last in irregular:
        forms = irregular[last]
    elif last == "man" or (last.endswith("man") and len(last) > 3 and last not in _NOT_MAN_COMPOUNDS):
        forms = (last[:-3] + "men",)
    else:
        forms = (_regular_plural(last),)
    return tuple(prefix + f for f in forms)


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


@dataclass(frozen=True)
class _Index:
    """A vocabulary compiled for matching: token n-gram -> (class or None, plural flag)."""

    phrases: Mapping[tuple[str, ...], tuple[str | None, bool | None]]
    first_words: frozenset[str]
    max_len: int
    colors: frozenset[str]


@dataclass(frozen=True)
class Vocabulary:
    """The classes a judge knows, and the words that name them.

    classes: canonical class names (lower case), e.g. the detector's label set.
    synonyms: phrase -> class. A phrase may have several words ("cell phone"); mapping it to None makes the
        phrase consume its words without naming anything (CHAIR's "home plate", so "plate" never fires).
        Class names always name themselves and win over a synonym that would point elsewhere.
    plurals: irregular plurals of single words (singular -> forms); regular ones are derived.
        A word listed with itself as its plural ("sheep") is invariant.
    colors: colour words read as attributes of the following noun.

    Matching is compiled once per vocabulary into a token n-gram table (cached on the instance, and the
    `world()`/`coco()` constructors return one cached instance), so parsing a caption is one regex pass plus
    dictionary look-ups. Treat instances as immutable.
    """

    classes: tuple[str, ...]
    synonyms: Mapping[str, str | None] = field(default_factory=dict)
    plurals: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: IRREGULAR_PLURALS)
    colors: tuple[str, ...] = BASIC_COLORS
    name: str = "custom"

    # ----------------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_labels(
        cls,
        labels: Iterable[str],
        synonyms: Mapping[str, Any] | None = None,
        colors: Iterable[str] | None = None,
        name: str = "custom",
    ) -> Vocabulary:
        """A vocabulary for any detector's label names.

        synonyms: either phrase -> class ({"mug": "cup"}), or class -> phrases ({"cup": ["mug", "beaker"]});
        None as a class makes a blocking phrase. colors: None for `BASIC_COLORS`, () for none.
        """
        classes: list[str] = []
        for label in labels:
            c = " ".join(_split_words(str(label)))
            if c and c not in classes:
                classes.append(c)
        table: dict[str, str | None] = {}
        for key, value in (synonyms or {}).items():
            if value is None or isinstance(value, str):
                pairs = [(key, value)]
            else:  # class -> iterable of phrases
                pairs = [(p, key) for p in value]
            for phrase, target in pairs:
                p = " ".join(_split_words(phrase))
                t = None if target is None else " ".join(_split_words(target))
                if t is not None and t not in classes:
                    raise ValueError(f"synonym {phrase!r} points to {target!r}, which is not a class")
                if p:
                    table[p] = t
        cols = BASIC_COLORS if colors is None else tuple(c.lower() for c in colors)
        return cls(tuple(classes), MappingProxyType(table), IRREGULAR_PLURALS, cols, name)

    @classmethod
    def world(cls) -> Vocabulary:
        """The embedded tabletop world: its eight kinds, everyday synonyms, basic colours."""
        return _world_vocab()

    @classmethod
    def coco(cls) -> Vocabulary:
        """The 80 COCO classes with the CHAIR synonym list and its two-word rules."""
        return _coco_vocab()

    # ------------------------------------------------------------------------------------------------ matching
    @cached_property
    def _index(self) -> _Index:
        singular: dict[tuple[str, ...], str | None] = {}
        for c in self.classes:
            singular[tuple(c.split())] = c
        for phrase, target in self.synonyms.items():
            key = tuple(_split_words(phrase))
            if key and key not in singular:  # a class name keeps naming itself
                singular[key] = target
        table: dict[tuple[str, ...], tuple[str | None, bool | None]] = {k: (v, False) for k, v in singular.items()}
        for key, target in singular.items():
            for form in pluralize(" ".join(key), self.plurals):
                pkey = tuple(form.split())
                if pkey == key:  # invariant ("sheep"): number from the determiner, not the form
                    table[key] = (target, None)
                elif pkey in singular:
                    if singular[pkey] == target:  # listed as a synonym but really a plural ("people")
                        table[pkey] = (target, True)
                elif pkey not in table:
                    table[pkey] = (target, True)
        return _Index(
            phrases=MappingProxyType(table),
            first_words=frozenset(k[0] for k in table),
            max_len=max((len(k) for k in table), default=1),
            colors=frozenset(self.colors),
        )

    def canonical(self, label: str) -> str | None:
        """The class a label (class name, synonym or plural; any case) names, or None outside the vocabulary."""
        hit = self._index.phrases.get(tuple(_split_words(str(label))))
        return hit[0] if hit else None

    def __contains__(self, label: object) -> bool:
        return isinstance(label, str) and self.canonical(label) is not None


@lru_cache(maxsize=1)
def _world_vocab() -> Vocabulary:
    # Imported here so the judge itself stays free of the world's imaging dependencies.
    from .world.scenes import KINDS

    return Vocabulary.from_labels(KINDS, synonyms=_WORLD_SYNONYMS, colors=BASIC_COLORS, name="world")


@lru_cache(maxsize=1)
def _coco_vocab() -> Vocabulary:
    table: dict[str, str | None] = {}
    rows = re.sub(r"\n ", " ", _CHAIR_SYNONYMS.strip())  # continuation lines start with a space
    for row in rows.splitlines():
        cls_name, _, rest = row.partition(":")
        for phrase in rest.split(","):
            phrase = phrase.strip().lower()
            if phrase and phrase != cls_name:
                table.setdefault(phrase, cls_name)
    table.update(_chair_extra_phrases())
    return Vocabulary.from_labels(COCO_CLASSES, synonyms=table, colors=BASIC_COLORS, name="coco")


VOCABULARIES = ("world", "coco", "detections")


def resolve_vocabulary(name: str, detection_records: list[dict] | None = None) -> Vocabulary:
    """The one place a vocabulary name becomes a Vocabulary: "world" (the embedded world's kinds), "coco"
    (CHAIR's 80 classes and synonyms), "detections" (the labels the detector reported in `detection_records`).
    An unknown name is an error, never a silent fallback."""
    if name == "world":
        return Vocabulary.world()
    if name == "coco":
        return Vocabulary.coco()
    if name == "detections":
        if detection_records is None:
            raise ValueError("vocabulary 'detections' needs detection records")
        labels = sorted({d["label"] for r in detection_records for d in r["detections"]})
        return Vocabulary.from_labels(labels)
    raise ValueError(f"unknown vocabulary {name!r}; known: {', '.join(VOCABULARIES)}")


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    """One object mention. count: the stated number, None if unspecified ("cups", "several cups").
    negated: the phrase is under a negation ("no cups", "not a cup"). claims_absent: the caption asserts the object
    is not there ("no cups", "without a ball"), as opposed to "the ball is not a cup". span/phrase: the matched
    name in the caption (character offsets, end exclusive)."""

    label: str
    count: int | None
    plural: bool
    color: str | None
    negated: bool
    span: tuple[int, int]
    phrase: str
    claims_absent: bool = False


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
    return w.isdigit() or w in _NUMBER_WORDS


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

    Returns (count, plural_hint, negated, claims_absent, colors, has_quantifier, phrase_start)."""
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
    has_q = False
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
    return count, plural_hint, negated, absent, colors, has_q, phrase_start


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
        count, hint, negated, absent, colors, has_q, p_start = _analyse_prefix(tk, s, lower, idx)
        # "no cups or balls": negation carries over "or"/"nor" to a phrase with no determiner of its own.
        if not negated and mentions and (not has_q or words[p_start] == "any"):
            prev = mentions[-1]
            between = words[positions[-1][2]:p_start]
            if prev.negated and all(w in ("or", "nor") for w in between) \
                    and not any(tk.sent[positions[-1][2]:p_start + 1]):
                negated, absent = True, prev.claims_absent
        if count == 1 and flag is True and not words[p_start].isdigit() and words[p_start] != "one":
            # "a table holding cups": the article belongs to another noun the look-back walked past.
            count, hint = None, None
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


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeConfig:
    """Thresholds and weights of `score_caption` (see its docstring for the formula)."""

    min_score: float = 0.5  # detections at or above this are present
    uncertain_low: float = 0.3  # [uncertain_low, min_score): the judge abstains; below: ignored
    w_recall: float = 1.0
    w_halluc: float = 1.0  # per hallucinated label
    w_count: float = 0.5  # per label whose stated count is wrong
    w_relation: float = 0.5  # per contradicted relation
    w_color: float = 0.25  # per mention whose colour fits no detection of its label
    w_negation: float = 1.0  # per label said to be absent but detected
    w_vague: float = 0.25  # per vague noun or hedge
    w_length: float = 0.02  # per word beyond target_words
    target_words: int = 20  # the longest world reference caption has 19 words

    def __post_init__(self) -> None:
        if self.uncertain_low > self.min_score:
            raise ValueError("uncertain_low must not exceed min_score")


@dataclass(frozen=True)
class CountError:
    label: str
    stated: int  # the sum of the numbers the caption gives for this label
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
        return not (self.hallucinated or self.missed or self.count_errors or self.relation_errors
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
      a count error is a label whose stated numbers (summed over its mentions that give one) fall outside
        [confident, confident + uncertain] detections;
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

    count_errors: list[CountError] = []
    stated: dict[str, int] = {}
    for m in affirmed:
        if m.count is not None:
            stated[m.label] = stated.get(m.label, 0) + m.count
    for label, k in stated.items():
        if label in confident:
            n_conf, n_unc = len(confident[label]), len(uncertain.get(label, ()))
            if not n_conf <= k <= n_conf + n_unc:
                count_errors.append(CountError(label, k, n_conf))

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
        - cfg.w_relation * len(relation_errors)
        - cfg.w_color * len(color_errors)
        - cfg.w_negation * len(negation_errors)
        - cfg.w_vague * n_vague
        - cfg.w_length * max(0, parsed.n_words - cfg.target_words)
    )
    return JudgeResult(
        hallucinated=hallucinated, covered=covered, missed=missed, count_errors=count_errors,
        relation_errors=relation_errors, color_errors=color_errors, negation_errors=negation_errors,
        vague=n_vague, vague_phrases=list(parsed.vague), unknown=unknown, unknown_nouns=list(parsed.unknown_nouns),
        n_words=parsed.n_words, n_tokens=_count_tokens(tokenizer, parsed.text), precision=precision,
        recall=recall, score=score,
    )
