"""Vocabularies: the world's and COCO's (CHAIR) names, custom label sets, plural forms, `resolve_vocabulary`."""

from __future__ import annotations

import json
from pathlib import Path

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


# ------------------------------------------------------------------------------------------- vocabulary files
EXAMPLE = Path(__file__).resolve().parents[2] / "data" / "vocabulary.example.yaml"


def test_resolve_vocabulary_from_the_example_yaml():
    v = resolve_vocabulary(str(EXAMPLE))
    assert v.classes == ("screwdriver", "wrench", "gripper", "cable", "mug", "laptop", "box")
    assert v.canonical("spanners") == "wrench" and v.canonical("Robot Hand") == "gripper"
    assert v.canonical("coffee cups") == "mug" and v.canonical("cup") == "mug" and v.canonical("ball") is None
    p = parse_caption("two spanners and a robot hand next to a coffee cup", v)
    assert [(m.label, m.count) for m in p.mentions] == [("wrench", 2), ("gripper", 1), ("mug", 1)]


@pytest.mark.parametrize("suffix, text", [
    (".json", json.dumps({"dog": ["puppy", "hound"], "traffic light": []})),
    (".yml", "dog: [puppy, hound]\ntraffic light: []\n"),
])
def test_resolve_vocabulary_from_json_and_yml(tmp_path, suffix, text):
    path = tmp_path / f"vocab{suffix}"
    path.write_text(text)
    v = resolve_vocabulary(str(path))
    assert v.classes == ("dog", "traffic light") and v.name == str(path)
    assert v.canonical("puppies") == "dog" and v.canonical("traffic lights") == "traffic light"


@pytest.mark.parametrize("text, problem", [
    ("", "empty"),
    ("{}", "empty"),
    ("- dog\n- cat\n", "must be a mapping of class -> list of synonyms, not list"),
    ("dog: puppy\n", "the synonyms of 'dog' must be a list of strings"),
    ("dog: [puppy, 3]\n", "the synonyms of 'dog' must be a list of strings"),
    ("1: [one]\n", "class 1 is not a non-empty string"),
    ("dog: [puppy\n", "not valid YAML"),
    ("dog: [pet]\ncat: [pet]\n", "'pet' names both 'dog' and 'cat'"),
])
def test_vocabulary_file_errors_name_the_file_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "vocab.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        resolve_vocabulary(str(path))
    assert str(path) in str(e.value) and problem in str(e.value)


def test_vocabulary_file_missing_or_not_json(tmp_path):
    with pytest.raises(ValueError, match=r"vocabulary file '.*nope\.yaml' does not exist"):
        resolve_vocabulary(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "vocab.json"
    bad.write_text("{dog: [puppy]}")
    with pytest.raises(ValueError, match=r"vocab\.json' cannot be read"):
        resolve_vocabulary(str(bad))


def test_unknown_vocabulary_names_the_known_ones_and_files():
    with pytest.raises(ValueError) as e:
        resolve_vocabulary("imagenet")
    msg = str(e.value)
    assert "unknown vocabulary 'imagenet'" in msg and "world, coco, detections" in msg
    assert ".json/.yaml/.yml" in msg
