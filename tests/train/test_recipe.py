
import pytest
import torch

from vlm_dpo.models import load_model_and_processor
from vlm_dpo.records import read_jsonl
from vlm_dpo.train import recipe as recipe_mod
from vlm_dpo.train.recipe import TrainConfig, train_dpo


def cfg_for(tiny_policy, pair_root, tmp_path, **kw):
    cfg = TrainConfig(model=tiny_policy, pairs=str(pair_root / "pairs.parquet"), image_root=str(pair_root),
                      output_dir=str(tmp_path / "dpo"), batch_size=4, max_steps=4, warmup_steps=1, lr=5e-3,
                      eval_every=0, save_every=0, reference="frozen")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _params(path):
    m, _ = load_model_and_processor(path)
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_training_moves_policy_and_raises_reward_accuracy(tiny_policy, pair_root, tmp_path):
    cfg = cfg_for(tiny_policy, pair_root, tmp_path, max_steps=12, reference="frozen")
    summary = train_dpo(cfg, progress=False)
    before, after = _params(tiny_policy), _params(summary["model"])
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = [r for r in read_jsonl(tmp_path / "dpo" / "metrics.jsonl") if "loss" in r]
    assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1: log 2
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert sum(r["rewards/accuracies"] for r in rows[-4:]) / 4 > 0.8
    assert summary["eval"]["eval/rewards/accuracies"] > 0.6
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "kl/implicit", "grad_norm", "pairs_per_s",
                "tokens_per_s", "lr"):
        assert key in rows[-1]
    # the final model loads like any checkpoint
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(summary["model"])


def test_frozen_reference_stays_frozen(tiny_policy, pair_root, tmp_path, monkeypatch):
    seen = {}
    real = recipe_mod.frozen_copy

    def spy(model):
        ref = real(model)
        seen["ref"] = ref
        seen["before"] = {k: v.clone() for k, v in ref.state_dict().items()}
        return ref

    monkeypatch.setattr(recipe_mod, "frozen_copy", spy)
    train_dpo(cfg_for(tiny_policy, pair_root, tmp_path, max_steps=2), progress=False)
    after = seen["ref"].state_dict()
    assert all(torch.equal(seen["before"][k], after[k]) for k in after)


def test_resume_reproduces_the_uninterrupted_run(tiny_policy, pair_root, tmp_path):
    full = cfg_for(tiny_policy, pair_root, tmp_path / "a", max_steps=6, save_every=3, reference="precomputed")
    train_dpo(full, progress=False)
    ref_losses = [r["loss"] for r in read_jsonl(tmp_path / "a" / "dpo" / "metrics.jsonl") if "loss" in r]

    part = cfg_for(tiny_policy, pair_root, tmp_path / "b", max_steps=6, save_every=3, reference="precomputed")
    calls = {"n": 0}
    real = recipe_mod.preference_loss

    def dies_at_step_5(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    recipe_mod.preference_loss = dies_at_step_5
    try:
        with pytest.raises(KeyboardInterrupt):
            train_dpo(part, progress=False)
    finally:
        recipe_mod.preference_loss = real
    assert (tmp_path / "b" / "dpo" / "checkpoints" / "step-3" / "trainer.json").exists()
    train_dpo(part, progress=False)
    resumed = [r["loss"] for r in read_jsonl(tmp_path / "b" / "dpo" / "metrics.jsonl") if "loss" in r]
    assert resumed == pytest.approx(ref_losses, abs=1e-6)
    assert len(resumed) == 6


def test_precomputed_and_lora_disabled_references_match_frozen(tiny_policy, pair_root, tmp_path):
    first = {}
    for kind, lora in (("frozen", False), ("precomputed", False), ("lora_disabled", True), ("frozen", True)):
        cfg = cfg_for(tiny_policy, pair_root, tmp_path / f"{kind}{lora}", max_steps=1, reference=kind)
        cfg.lora.enabled = lora
        cfg.lora.r = 4
        train_dpo(cfg, progress=False)
        row = next(r for r in read_jsonl(tmp_path / f"{kind}{lora}" / "dpo" / "metrics.jsonl") if "loss" in r)
        first[(kind, lora)] = row
    base = first[("frozen", False)]
    for key, row in first.items():
        # at step 1 every reference equals the policy: the same loss and zero margins
        assert row["loss"] == pytest.approx(base["loss"], abs=1e-5), key
        assert row["logps/chosen"] == pytest.approx(base["logps/chosen"], abs=1e-4), key
        assert row["rewards/margins"] == pytest.approx(0.0, abs=1e-5), key
    cache = list((tmp_path / "precomputedFalse" / "dpo" / "reference").glob("ref-*.safetensors"))
    assert len(cache) == 1


def test_reference_free_loss_needs_no_reference(tiny_policy, pair_root, tmp_path):
    cfg = cfg_for(tiny_policy, pair_root, tmp_path, max_steps=2, reference="none")
    cfg.loss.weights = {"simpo": 1.0}
    cfg.loss.beta = 2.0
    s = train_dpo(cfg, progress=False)
    assert s["last"]["loss"] > 0
    cfg2 = cfg_for(tiny_policy, pair_root, tmp_path / "x", reference="none")
    with pytest.raises(ValueError, match="need a reference"):
        train_dpo(cfg2, progress=False)


def test_mdpo_image_term_trains(tiny_policy, pair_root, tmp_path):
    cfg = cfg_for(tiny_policy, pair_root, tmp_path, max_steps=2, reference="precomputed")
    cfg.loss.mixture = "mdpo"
    s = train_dpo(cfg, progress=False)
    assert "loss/mdpo_image" in s["last"] and s["last"]["loss/mdpo_image"] == pytest.approx(0.6931, abs=0.05)


def test_nan_loss_stops_with_checkpoint_and_pair_ids(tiny_policy, pair_root, tmp_path, monkeypatch):
    real = recipe_mod.preference_loss

    def nan_loss(*a, **k):
        loss, m = real(*a, **k)
        return loss * float("nan"), m

    monkeypatch.setattr(recipe_mod, "preference_loss", nan_loss)
    with pytest.raises(FloatingPointError, match=r"step 0 on pairs \['[0-9a-f]+'"):
        train_dpo(cfg_for(tiny_policy, pair_root, tmp_path), progress=False)
    assert (tmp_path / "dpo" / "checkpoints" / "nan-step-0").exists()


def test_bad_pair_files_and_too_long_pairs(tiny_policy, pair_root, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no pairs"):
        train_dpo(cfg_for(tiny_policy, pair_root, tmp_path, pairs=str(empty)), progress=False)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="broken.parquet: not a readable parquet"):
        train_dpo(cfg_for(tiny_policy, pair_root, tmp_path, pairs=str(broken)), progress=False)
    from vlm_dpo.train.collate import ExampleTooLongError

    with pytest.raises(ExampleTooLongError, match="pair [0-9a-f]+: prompt is"):
        train_dpo(cfg_for(tiny_policy, pair_root, tmp_path, max_length=10, reference="frozen"), progress=False)
