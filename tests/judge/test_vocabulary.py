"""Vocabularies: the world's and COCO's (CHAIR) names, custom label sets, plural forms, `resolve_vocabulary`."""

from __future__ import annotations

import pytest

from vlm_dpo.judge import (
    COCO_CLASSES, VOCABULARIES, Vocabulary, parse_caption, pluralize, resolve_vocabulary,
)
from vlm_dpo.world.scenes import KINDS

WORLD = Vocabulary.world()
COCO = Vocabulary.coco()


def test_world_vocabulary_matches_world():
    assert WORLD.classes == tuple(KINDS)
    assert Vocabulary.world() is WORLD  # cached, so it is compiled once
    assert WORLD._index is WORLD._index
    for word, label in [("mug", "cup"), ("coffee cup", "cup"), ("cube", "block"), ("smartphone", "phone"),
                        ("cell phone", "phone"), ("mobile phones", "phone"), ("cupboard", None)]:
        assert WORLD.canonical(word) == label


def test_coco_vocabulary():
    assert COCO.classes == COCO_CLASSES and len(COCO.classes) == 80
    for word, label in [("motorbike", "motorcycle"), ("doughnut", "donut"), ("sofa", "couch"),
                        ("people", "person"), ("kids", "person"), ("cell_phone", "cell phone"),
                        ("teddybear", "teddy bear"), ("televisions", "tv"), ("puppies", "dog"),
                        ("ball", "sports ball"), ("fridge", "refrigerator"), ("home plate", None)]:
        assert COCO.canonical(word) == label


def test_from_labels():
    v = Vocabulary.from_labels(["Traffic Light", "dog"], synonyms={"puppy": "dog", "dog": ["hound"]}, colors=())
    assert v.classes == ("traffic light", "dog")
    assert mentions_of(v, "two traffic lights, a puppy and hounds") == [
        ("traffic light", 2), ("dog", 1), ("dog", None)]
    assert parse_caption("a red dog", v).mentions[0].color is None  # no colour words
    with pytest.raises(ValueError):
        Vocabulary.from_labels(["dog"], synonyms={"kitten": "cat"})


def mentions_of(vocab, text):
    return [(m.label, m.count) for m in parse_caption(text, vocab).mentions]


@pytest.mark.parametrize("phrase,plural", [
    ("cup", "cups"), ("bus", "buses"), ("bench", "benches"), ("pony", "ponies"), ("toy", "toys"),
    ("teddy bear", "teddy bears"), ("policeman", "policemen"), ("knife", "knives"), ("sheep", "sheep"),
])
def test_pluralize(phrase, plural):
    assert plural in pluralize(phrase)



# ------------------------------------------------------------------------------------------------ resolve_vocabulary

def test_resolve_vocabulary_builtin():
    assert resolve_vocabulary("world") is WORLD  # the cached instances, not copies
    assert resolve_vocabulary("coco") is COCO
    assert resolve_vocabulary("world", detection_records=[]) is WORLD  # records only matter for "detections"


def test_resolve_vocabulary_from_detections():
    records = [
        {"image": "a.png", "detections": [{"label": "dog", "score": 0.9, "box": [0, 0, 1, 1]},
                                          {"label": "Traffic Light", "score": 0.4, "box": [0, 0, 1, 1]}]},
        {"image": "b.png", "detections": []},
        {"image": "c.png", "detections": [{"label": "dog", "score": 0.7, "box": [0, 0, 1, 1]},
                                          {"label": "cat", "score": 0.2, "box": [0, 0, 1, 1]}]},
    ]
    v = resolve_vocabulary("detections", records)
    # every reported label, whatever its score, sorted (as reported, then normalised), once each
    assert v.classes == ("traffic light", "cat", "dog")
    assert v.name == "custom"
    assert v.canonical("dogs") == "dog" and v.canonical("traffic lights") == "traffic light"
    assert v.canonical("cup") is None
    assert resolve_vocabulary("detections", []).classes == ()


def test_resolve_vocabulary_detections_need_records():
    with pytest.raises(ValueError, match="needs detection records"):
        resolve_vocabulary("detections")


def test_resolve_vocabulary_unknown_name():
    with pytest.raises(ValueError) as e:
        resolve_vocabulary("imagenet")
    msg = str(e.value)
    assert "'imagenet'" in msg
    assert all(name in msg for name in VOCABULARIES)
    assert VOCABULARIES == ("world", "coco", "detections")
