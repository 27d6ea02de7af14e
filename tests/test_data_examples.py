"""The shipped example files in data/ load through the same code users will use."""

from pathlib import Path

import yaml

from vlm_dpo.pairs.dataset import Rejections
from vlm_dpo.pairs.io import import_pairs, pairs_from_judgements
from vlm_dpo.records import read_jsonl

DATA = Path(__file__).resolve().parents[1] / "data"


def test_example_pairs_import_with_their_images():
    rejections = Rejections()
    pairs = import_pairs(DATA / "pairs.example.jsonl", DATA, rejections=rejections)
    assert len(pairs) == 5 and not rejections.to_dict()["skipped"]
    assert all((DATA / p["image"]).is_file() for p in pairs)
    assert pairs[-1]["prompt"] == "Describe the objects on the table." and pairs[-1]["rejected"] == "a red cup."


def test_example_judgements_become_pairs():
    rejections = Rejections()
    judgements = list(read_jsonl(DATA / "judgements.example.jsonl"))
    pairs = pairs_from_judgements(judgements, rejections)
    assert len(judgements) == 4 and not rejections.to_dict()["skipped"]
    assert [p["kind"] for p in pairs] == ["human", "human", "human_edit", "human_edit"]
    assert all((DATA / p["image"]).is_file() for p in pairs)


def test_example_vocabulary_is_class_to_synonyms():
    vocab = yaml.safe_load((DATA / "vocabulary.example.yaml").read_text())
    assert isinstance(vocab, dict) and vocab
    assert all(isinstance(k, str) and isinstance(v, list) and v and all(isinstance(s, str) for s in v)
               for k, v in vocab.items())
