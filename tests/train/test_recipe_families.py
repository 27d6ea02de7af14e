"""Every family users run, as a tiny random model built from its transformers config class with its real chat
template (tests/tiny_models.py ALL_FAMILIES): one DPO step through the real loop (the policy changes, the frozen
reference does not, the saved model loads with from_pretrained), generation, a save / load round trip of model and
processor, and the shared-prefix lever: packed == plain per-token log-probs where the registry shares the prefix, a
one-time INFO line where it does not."""

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_models import ALL_FAMILIES
from vlm_dpo.families import family_for
from vlm_dpo.models import save_model
from vlm_dpo.train import logps as L
from vlm_dpo.train import pair_logps as P
from vlm_dpo.train import recipe as recipe_mod
from vlm_dpo.train.collate import render_prompts
from vlm_dpo.train.recipe import TrainConfig, train_dpo

FAMILIES = sorted(ALL_FAMILIES)
PROMPTS = ["Describe the image.", "How many cubes are there? Answer briefly."]
CHOSEN = ["a red cube sits left of a blue ball", "three"]
REJECTED = ["a dog", "There are two cubes and a ball near the wall"]


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(32, 32), (48, 16)]]


def _pairs(model, processor):
    return L.encode_pairs(processor, _images(), PROMPTS, CHOSEN, REJECTED, model_type=model.config.model_type)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_dpo_step_per_family(family, pair_root, tmp_path, monkeypatch):
    model, processor = ALL_FAMILIES[family].__wrapped__(0)
    path = save_model(model, processor, tmp_path / family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}
    real = recipe_mod.frozen_copy

    def spy(m):
        ref = real(m)
        seen["ref"], seen["ref_before"] = ref, {k: v.clone() for k, v in ref.state_dict().items()}
        return ref

    monkeypatch.setattr(recipe_mod, "frozen_copy", spy)
    cfg = TrainConfig(model=str(path), pairs=str(pair_root / "pairs.parquet"), image_root=str(pair_root),
                      output_dir=str(tmp_path / "dpo"), batch_size=2, max_steps=1, warmup_steps=1, lr=1e-2,
                      eval_every=0, save_every=0, reference="frozen")
    summary = train_dpo(cfg, progress=False)
    assert summary["last"]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1
    from transformers import AutoModelForImageTextToText

    trained = AutoModelForImageTextToText.from_pretrained(summary["model"])
    assert trained.config.model_type == model.config.model_type
    after = trained.state_dict()
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert changed, "the DPO step did not change the policy"
    ref_after = seen["ref"].state_dict()
    assert all(torch.equal(seen["ref_before"][k], ref_after[k]) for k in ref_after)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate(family):
    model, processor = ALL_FAMILIES[family]()
    inputs = processor(text=render_prompts(processor, PROMPTS[:1]), images=[_images()[:1]], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    n = inputs["input_ids"].shape[1]
    assert out.shape[0] == 1 and out.shape[1] > n  # at least one new token
    assert torch.equal(out[0, :n], inputs["input_ids"][0])


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip(family, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = ALL_FAMILIES[family]()
    path = save_model(model, processor, tmp_path / family)
    model2 = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor2 = AutoProcessor.from_pretrained(path)
    assert type(model2) is type(model) and type(processor2) is type(processor)
    assert processor2.chat_template == processor.chat_template
    a, b = _pairs(model, processor), _pairs(model2, processor2)
    assert a.inputs.keys() == b.inputs.keys()
    for k in a.inputs:
        assert torch.equal(a.inputs[k], b.inputs[k]), k
    assert torch.equal(a.labels, b.labels)
    with torch.no_grad():
        got, want = P.pair_logps(model2, b), P.pair_logps(model, a)
    for x, y in zip(got[0].per_token + got[1].per_token, want[0].per_token + want[1].per_token):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_or_visible_fallback(family, monkeypatch, caplog):
    model, processor = ALL_FAMILIES[family]()
    batch = _pairs(model, processor)
    fam = family_for(model.config.model_type)
    assert fam.tested
    monkeypatch.setattr(P, "_warned", set())
    with caplog.at_level("INFO", logger=P.__name__):
        parity = P.pair_parity(model, batch)
        with torch.no_grad():
            P.pair_logps(model, batch)
    assert parity < 1e-5
    said = [r.getMessage() for r in caplog.records if "not sharing the prompt prefix" in r.getMessage()]
    if fam.shared_prefix:
        assert P.shared_prefix_problem(model, batch) is None and not said
    else:
        assert len(said) == 1 and said[0].startswith(f"{fam.model_type}: not sharing the prompt prefix (family")
