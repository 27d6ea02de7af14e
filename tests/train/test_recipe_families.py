"""One DPO step through the real loop for each supported family (tiny random models from their configs):
the policy changes, the frozen reference does not, and the saved model loads with from_pretrained."""

import pytest
import torch

from tests.tiny_models import BUILDERS
from vlm_dpo.models import save_model
from vlm_dpo.train import recipe as recipe_mod
from vlm_dpo.train.recipe import TrainConfig, train_dpo


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_one_dpo_step_per_family(family, pair_root, tmp_path, monkeypatch):
    model, processor = BUILDERS[family].__wrapped__(0)
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
    after = trained.state_dict()
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert changed, "the DPO step did not change the policy"
    ref_after = seen["ref"].state_dict()
    assert all(torch.equal(seen["ref_before"][k], ref_after[k]) for k in ref_after)
