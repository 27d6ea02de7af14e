"""Selective recomputation (vlm_dpo/train/recompute.py): the same gradients as storing every activation, with
fewer activations held (counted by torch's MemTracker, which attributes every tensor alive at the peak), for every
family's tiny model; full checkpointing wins when both are on; a model that cannot checkpoint keeps its
activations (logged)."""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.tiny_models import ALL_FAMILIES, BUILDERS  # noqa: E402
from tests.train.test_recipe_families import _pairs as family_pairs  # noqa: E402
from tests.train.test_pair_logps import _assert_grads_close, _pairs, _param_grads  # noqa: E402
from vlm_dpo.train import pair_logps as P  # noqa: E402
from vlm_dpo.train.recompute import enable_recompute  # noqa: E402


@pytest.mark.parametrize("family", sorted(ALL_FAMILIES))
def test_same_gradients_as_stored_activations(family):
    model, processor = ALL_FAMILIES[family].__wrapped__(0)  # a fresh model: the cached one must not change
    model.train()
    batch = family_pairs(model, processor)
    stored = _param_grads(model, batch)
    assert enable_recompute(model, full=False, selective=True) == "selective"
    layers = [n for n, m in model.named_modules() if getattr(m, "gradient_checkpointing", False)]
    assert any(n.startswith(("model.vision", "model.visual")) for n in layers), layers  # the vision tower's
    assert any(not n.startswith(("model.vision", "model.visual")) for n in layers), layers  # the decoder's
    _assert_grads_close(_param_grads(model, batch), stored, rel=1e-6)


def _peak(model, batch) -> dict:
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        chosen, rejected = P.pair_logps(model, batch)
        (chosen.sum - 0.5 * rejected.mean).sum().backward()
    peak = next(v for device, v in tracker.get_tracker_snapshot("peak").items() if str(device) == "cpu")
    return {str(getattr(k, "value", k)): v for k, v in peak.items()}


def test_fewer_activations_at_the_peak():
    stored_model, processor = BUILDERS["idefics3"]()
    stored_model, recomputed_model = copy.deepcopy(stored_model), copy.deepcopy(stored_model)
    enable_recompute(recomputed_model, full=False, selective=True)
    for m in (stored_model, recomputed_model):
        m.train()
    batch = _pairs(processor, stored_model)
    stored, recomputed = _peak(stored_model, batch), _peak(recomputed_model, batch)
    assert recomputed["Activation"] <= 0.85 * stored["Activation"], (recomputed, stored)
    assert recomputed["Total"] < stored["Total"], (recomputed, stored)


def test_full_checkpointing_wins_and_none_is_none():
    model = copy.deepcopy(BUILDERS["idefics3"]()[0])
    assert enable_recompute(model, full=False, selective=False) == "none"
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert enable_recompute(model, full=True, selective=True) == "full"
    assert model.config.use_cache is False
    assert any(getattr(m, "gradient_checkpointing", False) for n, m in model.named_modules() if "vision" in n)


def test_model_without_checkpointing_keeps_activations(caplog):
    with caplog.at_level(logging.INFO, logger="vlm_dpo.train.recompute"):
        assert enable_recompute(torch.nn.Linear(2, 2), full=False, selective=True) == "none"
    assert "does not support checkpointing" in caplog.text


def test_a_folder_whose_settings_still_name_recompute_keys_resumes(tiny_policy, pair_root, tmp_path):
    """Runs recorded before the recomputation settings left the run key are not 'other settings'."""
    import json

    from vlm_dpo.train.recipe import DPORecipe, TrainConfig

    cfg = TrainConfig(model=tiny_policy, pairs=str(pair_root / "pairs.parquet"), image_root=str(pair_root),
                      output_dir=str(tmp_path / "out"), max_steps=1, batch_size=2, eval_every=0, save_every=0)
    DPORecipe(cfg, progress=False).setup()
    path = tmp_path / "out" / "settings.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"gradient_checkpointing": False}))
    DPORecipe(cfg, progress=False).setup()  # no "other settings" error


@pytest.mark.parametrize("selective", [False, True])
def test_recipe_applies_the_setting(tiny_policy, pair_root, tmp_path, selective):
    from vlm_dpo.train.recipe import DPORecipe, TrainConfig

    cfg = TrainConfig(model=tiny_policy, pairs=str(pair_root / "pairs.parquet"), image_root=str(pair_root),
                      output_dir=str(tmp_path / "out"), max_steps=1, batch_size=2, eval_every=0, save_every=0,
                      selective_recompute=selective)
    recipe = DPORecipe(cfg, progress=False).setup()
    assert recipe.recompute == ("selective" if selective else "none")
    assert torch.isfinite(torch.tensor(recipe.train_step(0)["loss"]))


def test_frozen_layers_are_not_checkpointed():
    from vlm_dpo.train.recompute import skip_frozen_layers

    model = copy.deepcopy(BUILDERS["idefics3"]()[0])
    enable_recompute(model, full=False, selective=True)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("model.vision_model"))  # a frozen vision tower
    assert skip_frozen_layers(model) > 0
    layers = {n: m.gradient_checkpointing for n, m in model.named_modules() if hasattr(m, "gradient_checkpointing")
              and hasattr(m, "_gradient_checkpointing_func")}
    assert not any(on for n, on in layers.items() if n.startswith("model.vision_model")), layers
    assert any(on for n, on in layers.items() if not n.startswith("model.vision_model")), layers


@pytest.mark.parametrize("full", [False, True])
def test_a_frozen_vision_tower_stays_out_of_autograd(full):
    """transformers' checkpointing hook makes the patch embeddings' output require grad; with a frozen tower that
    made autograd save the tower's activations and run its backward. After skip_frozen_layers nothing in the tower
    requires grad, the decoder still trains, and the gradients are those of storing every activation."""
    from vlm_dpo.train.recompute import skip_frozen_layers

    model, processor = BUILDERS["idefics3"]()
    model = copy.deepcopy(model)
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("model.vision_model"))
    batch = _pairs(processor, model)
    stored = _param_grads(model, batch)
    enable_recompute(model, full=full, selective=not full)
    seen = []
    hook = model.model.vision_model.encoder.layers[-1].register_forward_hook(
        lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).requires_grad))
    skip_frozen_layers(model)
    grads = _param_grads(model, batch)
    hook.remove()
    assert seen and not any(seen)
    assert grads.keys() == stored.keys() and not any(k.startswith("model.vision_model") for k in grads)
    _assert_grads_close(grads, stored, rel=1e-6)
