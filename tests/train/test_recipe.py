
import pytest
import torch

from vlm_dpo.keys import key as stage_key
from vlm_dpo.models import load_model_and_processor
from vlm_dpo.records import read_jsonl
from vlm_dpo.train import recipe as recipe_mod
from vlm_dpo.train.recipe import TrainConfig, stage_settings, train_dpo


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


def train_until_interrupted(cfg, at_step: int) -> None:
    """Run `train_dpo` and stop it with KeyboardInterrupt at its `at_step`-th loss computation (1-based)."""
    calls = {"n": 0}
    real = recipe_mod.preference_loss

    def dies(*a, **k):
        calls["n"] += 1
        if calls["n"] == at_step:
            raise KeyboardInterrupt
        return real(*a, **k)

    recipe_mod.preference_loss = dies
    try:
        with pytest.raises(KeyboardInterrupt):
            train_dpo(cfg, progress=False)
    finally:
        recipe_mod.preference_loss = real


def test_resume_reproduces_the_uninterrupted_run(tiny_policy, pair_root, tmp_path):
    full = cfg_for(tiny_policy, pair_root, tmp_path / "a", max_steps=6, save_every=3, reference="precomputed")
    train_dpo(full, progress=False)
    ref_losses = [r["loss"] for r in read_jsonl(tmp_path / "a" / "dpo" / "metrics.jsonl") if "loss" in r]

    part = cfg_for(tiny_policy, pair_root, tmp_path / "b", max_steps=6, save_every=3, reference="precomputed")
    train_until_interrupted(part, at_step=5)
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


# ------------------------------------------------------------------------------------------------------------
# numerics the recipe must get right on real checkpoints


def test_bf16_mixed_precision_really_autocasts(tiny_policy, pair_root, tmp_path, monkeypatch):
    """accelerate autocasts the forward of the module it prepares: the training forward (and the reference
    precompute) must run inside it, with fp32 master weights (CPU autocast supports bf16)."""
    seen = {"setup": set(), "train": set()}
    phase = {"now": "setup"}
    real_setup = recipe_mod.DPORecipe.setup

    def setup(self):
        out = real_setup(self)
        phase["now"] = "train"
        return out

    real_load = recipe_mod.precompute_reference

    def hooked(model, *a, **k):  # the reference model: record the dtype its Linear layers compute in
        hooks = [m.register_forward_hook(lambda m, i, o: seen["setup"].add(o.dtype))
                 for m in model.modules() if isinstance(m, torch.nn.Linear)]
        try:
            return real_load(model, *a, **k)
        finally:
            for h in hooks:
                h.remove()

    monkeypatch.setattr(recipe_mod.DPORecipe, "setup", setup)
    monkeypatch.setattr(recipe_mod, "precompute_reference", hooked)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # one process, one mixed-precision setting: the other tests ran "no"
    cfg = cfg_for(tiny_policy, pair_root, tmp_path, max_steps=1, reference="precomputed", mixed_precision="bf16")
    recipe = recipe_mod.DPORecipe(cfg, progress=False).setup()
    policy = recipe.policy
    hooks = [m.register_forward_hook(lambda m, i, o: seen["train"].add(o.dtype))
             for m in policy.modules() if isinstance(m, torch.nn.Linear)]
    rec = recipe.train_step(0)
    for h in hooks:
        h.remove()
    assert seen["train"] == {torch.bfloat16}, seen
    assert seen["setup"] == {torch.bfloat16}, seen
    assert all(p.dtype == torch.float32 for p in policy.parameters())  # master weights stay fp32
    assert torch.isfinite(torch.tensor(rec["loss"]))
    AcceleratorState._reset_state()


def test_corrupted_image_is_keyed_by_pair_not_batch(pair_root):
    """mDPO's crop is the same for a pair whatever batch it falls in (reference precompute, training, eval)."""
    from tests.tiny_models import tiny_idefics3
    from vlm_dpo.pairs.dataset import load_pairs
    from vlm_dpo.train.batches import make_batch

    _, processor = tiny_idefics3()
    pairs = load_pairs(pair_root / "pairs.parquet")
    kw = dict(image_root=pair_root, model_type="idefics3", max_length=0, corruption="crop", seed=3)
    alone = make_batch(pairs[2:3], processor, **kw)
    mixed = make_batch([pairs[0], pairs[2], pairs[1]], processor, **kw)
    torch.testing.assert_close(alone.corrupt.inputs["pixel_values"][0], mixed.corrupt.inputs["pixel_values"][1],
                               rtol=0, atol=0)
    other_seed = make_batch(pairs[2:3], processor, **(kw | {"seed": 4}))
    assert not torch.equal(alone.corrupt.inputs["pixel_values"], other_seed.corrupt.inputs["pixel_values"])


def test_reference_cache_keys_on_pair_content_and_settings(tiny_policy, pair_root, tmp_path):
    """Same pair ids with other text, or another max_length, never reuse a precomputed reference."""
    from vlm_dpo.models import load_model_and_processor
    from vlm_dpo.pairs.dataset import load_pairs
    from vlm_dpo.train.reference import reference_key

    model, processor = load_model_and_processor(tiny_policy)
    pairs = load_pairs(pair_root / "pairs.parquet")
    cfg = cfg_for(tiny_policy, pair_root, tmp_path)
    base = reference_key(model, processor, pairs, cfg, pair_root)
    assert reference_key(model, processor, pairs, cfg, pair_root) == base
    edited = [dict(p) for p in pairs]
    edited[0]["chosen"] = edited[0]["chosen"] + " and a phone"
    assert reference_key(model, processor, edited, cfg, pair_root) != base
    assert reference_key(model, processor, pairs, cfg_for(tiny_policy, pair_root, tmp_path, max_length=40),
                         pair_root) != base
    processor.tokenizer.chat_template = processor.tokenizer.chat_template + " "
    processor.chat_template = (processor.chat_template or "") + " "
    assert reference_key(model, processor, pairs, cfg, pair_root) != base


def test_stale_reference_is_recomputed_with_a_message(tiny_policy, pair_root, tmp_path):
    """A cache whose token counts disagree with the batch is detected at lookup and computed again; the run then
    equals one that never had the stale file."""
    from safetensors.torch import load_file, save_file

    fresh = cfg_for(tiny_policy, pair_root, tmp_path / "fresh", max_steps=2, reference="precomputed")
    want = train_dpo(fresh, progress=False)["last"]["loss"]
    cfg = cfg_for(tiny_policy, pair_root, tmp_path / "stale", max_steps=2, reference="precomputed")
    recipe_mod.DPORecipe(cfg, progress=False).setup()  # writes the cache
    (path,) = (tmp_path / "stale" / "dpo" / "reference").glob("ref-*.safetensors")
    values = load_file(str(path))
    values["chosen_tokens"] = values["chosen_tokens"] + 1  # as if tokenised differently
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(values, str(path), metadata=meta)
    with pytest.warns(UserWarning, match="reference is stale.*chosen tokens"):
        got = train_dpo(cfg, progress=False)["last"]["loss"]
    assert got == pytest.approx(want, abs=1e-6)


# ------------------------------------------------------------------------------------------------------------
# reliability: torn checkpoints, runs under other settings


def test_resume_skips_a_torn_checkpoint(tiny_policy, pair_root, tmp_path):
    """A process killed while writing step-6 leaves step-6.tmp (or a step-6 without trainer.json): the rerun
    resumes from the newest complete checkpoint and ends where the uninterrupted run ends."""
    full = cfg_for(tiny_policy, pair_root, tmp_path / "a", max_steps=8, save_every=3, reference="precomputed")
    want = train_dpo(full, progress=False)["last"]["loss"]
    cfg = cfg_for(tiny_policy, pair_root, tmp_path / "b", max_steps=8, save_every=3, reference="precomputed")
    train_until_interrupted(cfg, at_step=7)
    ck = tmp_path / "b" / "dpo" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step-3", "step-6"]
    # what kill -9 during the writing of step-6 leaves: a half-written folder under either name
    (ck / "step-6").rename(ck / "step-6.tmp")
    (ck / "step-6.tmp" / "model.safetensors").write_bytes(b"torn")
    assert [p.name for p in recipe_mod.list_checkpoints(tmp_path / "b" / "dpo")] == ["step-3"]
    assert train_dpo(cfg, progress=False)["last"]["loss"] == pytest.approx(want, abs=1e-6)


def test_a_run_folder_moved_mid_training_resumes_there(tiny_policy, pair_root, tmp_path):
    """Pairs inside a run folder (as the pipeline keeps them), training interrupted, the folder moved: the rerun
    in the new place resumes from its checkpoint (the settings count paths as where the run was made) and ends
    where an uninterrupted run ends."""
    import shutil

    from vlm_dpo.run import RunFolder

    want = train_dpo(cfg_for(tiny_policy, pair_root, tmp_path / "full", max_steps=8, save_every=3,
                             reference="precomputed"), progress=False)["last"]["loss"]
    first = RunFolder(tmp_path / "first")
    first.pairs_dir.mkdir(parents=True)
    first.record_origin()
    shutil.copy(pair_root / "pairs.parquet", first.pairs)

    def in_run(run):
        return cfg_for(tiny_policy, pair_root, run.root, max_steps=8, save_every=3, reference="precomputed",
                       pairs=str(run.pairs))

    train_until_interrupted(in_run(first), at_step=7)
    moved = RunFolder(tmp_path / "moved")
    first.root.rename(moved.root)
    assert [p.name for p in recipe_mod.list_checkpoints(moved.dpo)] == ["step-3", "step-6"]
    assert train_dpo(in_run(moved), progress=False)["last"]["loss"] == pytest.approx(want, abs=1e-6)
    # other settings in the moved folder are still refused
    with pytest.raises(ValueError, match="other settings"):
        train_dpo(cfg_for(tiny_policy, pair_root, moved.root, max_steps=8, save_every=3, reference="precomputed",
                          pairs=str(moved.pairs), lr=1e-3), progress=False)


def test_a_train_config_built_in_python_is_range_checked_before_any_work(tmp_path):
    from vlm_dpo.checks import FieldValueError

    for bad, match in ((dict(batch_size=0), "batch_size must be >= 1, got 0"), (dict(lr=0.0), "lr must be a positive"),
                       (dict(max_grad_norm=-1.0), "max_grad_norm must be >= 0")):
        cfg = TrainConfig(model=str(tmp_path / "no-model"), pairs=str(tmp_path / "no-pairs.parquet"),
                          output_dir=str(tmp_path / "dpo"), **bad)
        with pytest.raises(FieldValueError, match=match):
            train_dpo(cfg, progress=False)
    assert not (tmp_path / "dpo").exists()  # refused before anything was written


def test_other_settings_in_the_same_folder_are_refused(tiny_policy, pair_root, tmp_path):
    cfg = cfg_for(tiny_policy, pair_root, tmp_path, max_steps=2, reference="precomputed")
    train_dpo(cfg, progress=False)
    model = tmp_path / "dpo" / "model" / "model.safetensors"
    before = model.read_bytes()
    changed = cfg_for(tiny_policy, pair_root, tmp_path, max_steps=2, reference="precomputed", lr=1e-3)
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.005 -> 0.001\)"):
        train_dpo(changed, progress=False)
    assert model.read_bytes() == before  # the finished run is untouched
    # logging / saving cadence is not a different run
    train_dpo(cfg_for(tiny_policy, pair_root, tmp_path, max_steps=2, reference="precomputed", log_every=2),
              progress=False)


def test_the_stage_key_ignores_what_does_not_change_the_weights():
    base = TrainConfig(model="m", pairs="p.parquet", output_dir="runs/x/dpo")
    assert stage_key(stage_settings(base)) == stage_key(base)  # runs made at the defaults keep their key
    same = TrainConfig(model="m", pairs="p.parquet", output_dir="runs/x/dpo", selective_recompute=False,
                       gradient_checkpointing=True, eval_every=7, save_every=3, log_every=5, keep_checkpoints=9)
    assert stage_key(stage_settings(same)) == stage_key(base)
    for other in (TrainConfig(model="m", pairs="p.parquet", output_dir="runs/x/dpo", lr=3e-4),
                  TrainConfig(model="m", pairs="p.parquet", output_dir="runs/y/dpo")):
        assert stage_key(stage_settings(other)) != stage_key(base)
