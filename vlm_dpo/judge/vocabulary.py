"""Vocabularies: the classes a judge knows and the words that name them.

Two are built in, both hand-curated data:
    * "world": the embedded tabletop world's eight kinds and what captioners call them ("mug", "cube",
      "smartphone"), for pair mining and evaluation on the world;
    * "coco": the 80 COCO classes with the CHAIR metric's synonym table and two-word rules, verbatim, so CHAIR
      numbers stay comparable with the reference evaluation.
A third, "detections", is built from whatever labels a detector reported (`Vocabulary.from_labels`).
`resolve_vocabulary` is the one place a vocabulary name becomes a `Vocabulary`.

A vocabulary compiles once into a token n-gram table (singular and plural forms of every name and synonym ->
class), which is all the parser (`parse.py`) and the scorer (`score.py`) look names up in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from ..plurals import IRREGULAR_PLURALS, plural_forms
from ..records import MAPPING_FILE_SUFFIXES, read_mapping_file
from .lexicon import BASIC_COLORS, _split_words

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
            for form in plural_forms(" ".join(key), self.plurals):
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
    from ..world.scenes import KINDS

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
VOCABULARY_FILE_SUFFIXES = MAPPING_FILE_SUFFIXES


def resolve_vocabulary(name: str, detection_records: list[dict] | None = None) -> Vocabulary:
    """The one place a vocabulary name becomes a Vocabulary: "world" (the embedded world's kinds), "coco"
    (CHAIR's 80 classes and synonyms), "detections" (the labels the detector reported in `detection_records`),
    or the path of a .json/.yaml/.yml file mapping each class to the words captions may use for it (see
    `vocabulary_from_file`). An unknown name is an error, never a silent fallback."""
    if name == "world":
        return Vocabulary.world()
    if name == "coco":
        return Vocabulary.coco()
    if name == "detections":
        if detection_records is None:
            raise ValueError("vocabulary 'detections' needs detection records")
        labels = sorted({d["label"] for r in detection_records for d in r["detections"]})
        return Vocabulary.from_labels(labels)
    if str(name).lower().endswith(VOCABULARY_FILE_SUFFIXES):
        return vocabulary_from_file(name)
    raise ValueError(f"unknown vocabulary {name!r}; known: {', '.join(VOCABULARIES)}, or the path of a "
                     f"{'/'.join(VOCABULARY_FILE_SUFFIXES)} file mapping each class to a list of synonyms")


def vocabulary_from_file(path: str | Path) -> Vocabulary:
    """A vocabulary from a JSON or YAML file of class -> list of synonyms (plural forms are derived; the class
    name always names itself), e.g. data/vocabulary.example.yaml. A missing file, a file that does not parse,
    is not a non-empty mapping of str -> list[str], or names one synonym for two classes is an error that names
    the file and the problem."""
    path = Path(path)
    data = read_mapping_file(path, "vocabulary", "class -> list of synonyms", "classes")
    owner: dict[str, str] = {}  # normalised phrase -> the class that claims it
    for cls_name, synonyms in data.items():
        if not isinstance(cls_name, str) or not _split_words(cls_name):
            raise ValueError(f"vocabulary file {str(path)!r}: class {cls_name!r} is not a non-empty string")
        if not isinstance(synonyms, list) or not all(isinstance(p, str) for p in synonyms):
            raise ValueError(f"vocabulary file {str(path)!r}: the synonyms of {cls_name!r} must be a list of "
                             f"strings, not {synonyms!r}")
        for phrase in [cls_name, *synonyms]:
            key = " ".join(_split_words(phrase))
            # Silently letting the later class win would make the judge read one word two ways by file order.
            if key and owner.setdefault(key, cls_name) != cls_name:
                raise ValueError(f"vocabulary file {str(path)!r}: {phrase!r} names both {owner[key]!r} and "
                                 f"{cls_name!r}")
    return Vocabulary.from_labels(list(data), synonyms=data, name=str(path))
