"""Shared fixtures of the training tests: a tiny policy (real Idefics3, saved and loaded via from_pretrained), a
small separable pair set, and the tiny model of each family with shared-vision / shared-prefix support
(`family` parametrises a test over them, `built` gives (family, model, processor))."""

import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.tiny_models import BUILDERS  # noqa: E402
from vlm_dpo.models import TinyVLMSpec, build_tiny_idefics3, save_model  # noqa: E402
from vlm_dpo.pairs.dataset import make_pair, save_pairs  # noqa: E402
from vlm_dpo.world.captions import CorruptionRates, corrupted_caption, reference_caption  # noqa: E402
from vlm_dpo.world.scenes import render_scene, sample_scene  # noqa: E402

FAMILIES = list(BUILDERS)

SPEC = TinyVLMSpec(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, text_width=64,
                   text_layers=2, text_heads=2, text_kv_heads=1, text_mlp=128, vocab_size=350)


def make_pairs(root, n=24, seed=0):
    """Chosen: the reference caption; rejected: the same with a co-occurring absent object or vague."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pairs = []
    i = 0
    while len(pairs) < n:
        s = sample_scene(seed, "train", i, image_size=64)
        i += 1
        d = s.to_dict()
        rel = f"images/{s.image_id}.png"
        render_scene(s).save(root / rel)
        good = reference_caption(d["objects"], 64)
        bad, applied = corrupted_caption(d["objects"], 64, rng, CorruptionRates(cooccur=1.0, count=1.0, vague=0.3))
        if not applied or bad == good:
            continue
        pairs.append(make_pair(image_id=s.image_id, image=rel, prompt="Describe the objects on the table.",
                               chosen=good, rejected=bad, source="synthetic", kind=applied[0],
                               split="val" if len(pairs) % 6 == 5 else "train",
                               boxes=[o["box"] for o in d["objects"]]))
    return pairs


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    corpus = [reference_caption(sample_scene(0, "sft", i).to_dict()["objects"], 128) for i in range(60)]
    corpus += ["Describe the objects on the table.", "some objects on a table."]
    model, processor = build_tiny_idefics3(corpus, SPEC, seed=0)
    return str(save_model(model, processor, tmp_path_factory.mktemp("policy") / "tiny"))


@pytest.fixture(scope="session")
def pair_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    pairs = make_pairs(root)
    save_pairs(pairs, root / "pairs.parquet")
    return root


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def built(family):
    model, processor = BUILDERS[family]()
    return family, model, processor
