"""The model-family registry: each tested family's tiny model splits into vision tower / connector / language
model as its entry says, unknown model types get the generic entry, and wrappers are seen through."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import BUILDERS
from vlm_dpo.families import FAMILIES, GENERIC, family_for, family_of, model_type_of
from vlm_dpo.train.recipe import TrainConfig, freeze, param_groups

# Where each family keeps its tower and connector in transformers 5 (what the entries must pick out).
TOWER = {"idefics3": "model.vision_model.", "qwen2_vl": "model.visual.", "llava": "model.vision_tower.",
         "smolvlm": "model.vision_model.", "qwen2_5_vl": "model.visual."}
CONNECTOR = {"idefics3": "model.connector.", "qwen2_vl": "model.visual.merger.",
             "llava": "model.multi_modal_projector.", "smolvlm": "model.connector.",
             "qwen2_5_vl": "model.visual.merger."}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_entry_splits_the_real_parameter_names(name):
    model, _ = BUILDERS[name]()
    fam = family_of(model)
    assert fam.model_type == name and fam.tested
    names = [n for n, _ in model.named_parameters()]
    vision = {n for n in names if fam.is_vision(n)}
    connector = {n for n in names if fam.is_connector(n)}
    assert vision == {n for n in names if n.startswith(TOWER[name]) and not n.startswith(CONNECTOR[name])}
    assert connector == {n for n in names if n.startswith(CONNECTOR[name])}
    assert vision and connector and not vision & connector
    assert any(n.startswith("lm_head") or ".language_model." in n or ".text_model." in n
               for n in set(names) - vision - connector)


def test_qwen_merger_is_connector_not_vision():
    """The merger sits inside `visual`: freezing the tower keeps it trainable, and it gets the connector's LR."""
    model, _ = BUILDERS["qwen2_vl"].__wrapped__(0)
    cfg = TrainConfig(freeze_vision=True, lr=1.0, lr_projector=0.5)
    freeze(model, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("model.visual.") and ".merger." not in n for n in trainable)
    assert any(n.startswith("model.visual.merger.") for n in trainable)
    groups = param_groups(model, cfg)
    assert [g["lr"] for g in groups] == [1.0, 0.5]  # no vision group left: it is frozen
    merger = {id(p) for n, p in model.named_parameters() if ".merger." in n}
    assert merger == {id(p) for p in groups[1]["params"]}


def test_unknown_type_is_generic_and_shares_nothing():
    fam = family_for("some_future_vlm")
    assert fam is GENERIC and not fam.shared_vision and not fam.shared_prefix
    assert fam.is_vision("model.vision_tower.layers.0.w") and fam.is_connector("model.multi_modal_projector.w")
    assert family_for("") is GENERIC


def test_wrappers_are_seen_through():
    from peft import LoraConfig, get_peft_model

    model, _ = BUILDERS["llava"].__wrapped__(0)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert model_type_of(peft_model) == "llava"

    class DistributedDataParallel(torch.nn.Module):  # the name is what the unwrapper checks
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert family_of(DistributedDataParallel(peft_model)) is FAMILIES["llava"]


def test_entries_are_consistent():
    for mt, fam in FAMILIES.items():
        assert fam.model_type == mt
        assert not fam.shared_prefix or fam.shared_vision, mt  # packed rows take each image once
        assert not fam.mrope or fam.shared_prefix, mt
        assert fam.logit_rule is None or fam.logit_rule[0] in ("div", "mul"), mt
