"""Smoke tests of the benchmarks: they run end to end at the tiny shape, print their JSON report as the last line,
and our first-batch DPO loss equals TRL's; the GPU shape (SmolVLM-256M) builds on the meta device."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

DPO_KEYS = {
    "ours_pairs_per_s", "trl_pairs_per_s", "speedup", "ours_peak_mb", "trl_peak_mb", "memory_ratio", "loss_abs_diff",
    "image_tokens_per_pair", "mode", "size", "device", "dtype", "params", "ours_reference_precompute_s",
    "model_flops_per_step", "flops_formula",
}
SAMPLING_KEYS = {"batched_samples_per_s", "sequential_samples_per_s", "ratio", "images", "n", "vision_images_encoded"}


def _last_json(script: str, args: list[str], timeout: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-4000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{script} printed nothing:\n{proc.stderr[-2000:]}"
    return json.loads(lines[-1])


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_dpo_step", BENCH / "dpo_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dpo_step_tiny_reports_json_and_matches_trl_loss():
    out = _last_json("dpo_step.py", ["--size", "tiny", "--steps", "2", "--warmup", "1", "--rounds", "2",
                                     "--threads", "2"], timeout=85)
    assert DPO_KEYS <= out.keys(), DPO_KEYS - out.keys()
    assert out["size"] == "tiny" and out["device"] == "cpu" and out["dtype"] == "fp32"
    assert "precomputed" in out["mode"] and out["loss_comparable"] is True
    assert out["loss_abs_diff"] < 1e-5
    # The policy is perturbed from the reference, so the compared loss is not log 2 on both sides by construction.
    assert abs(out["ours_loss_first_batch"] - math.log(2)) > 1e-4
    for k in ("ours_pairs_per_s", "trl_pairs_per_s", "speedup", "ours_peak_mb", "trl_peak_mb", "memory_ratio"):
        assert out[k] > 0, k
    assert out["speedup"] == pytest.approx(out["ours_pairs_per_s"] / out["trl_pairs_per_s"], rel=1e-2)
    assert len(out["ours_step_s_all"]) == len(out["trl_step_s_all"]) == 2
    assert out["image_tokens_per_pair"] == 16 and out["ours_reference_precompute_s"] > 0


def test_sampling_tiny_reports_json():
    out = _last_json("sampling.py", ["--size", "tiny", "--images", "2", "--n", "3", "--max-new-tokens", "6",
                                     "--repeats", "1", "--threads", "2"], timeout=60)
    assert SAMPLING_KEYS <= out.keys(), SAMPLING_KEYS - out.keys()
    assert out["batched_samples_per_s"] > 0 and out["sequential_samples_per_s"] > 0
    assert out["ratio"] == pytest.approx(out["batched_samples_per_s"] / out["sequential_samples_per_s"], rel=1e-2)
    assert out["vision_images_encoded"]["sequential"] == 2 * 3  # one vision pass per sample when not batched


def test_smolvlm_256m_shape_parses_and_builds_on_meta():
    """The real shape (SmolVLM-256M-Instruct's published dimensions), built on the meta device: no weights, no run."""
    bench = _bench_module()
    args = bench.parse_args(["--device", "cuda", "--dtype", "bf16", "--size", "smolvlm-256m"])
    assert (args.device, args.dtype, args.size, args.mode) == ("cuda", "bf16", "smolvlm-256m", "precomputed")
    assert args.freeze_vision and args.image_size == 2048 and args.batch_size == 8  # the released processor
    assert bench.parse_args(["--size", "256m"]).size == "smolvlm-256m"  # the old name is an alias
    cpu = bench.parse_args(["--size", "smolvlm-256m"])
    assert (cpu.image_size, cpu.batch_size, cpu.steps, cpu.warmup) == (512, 2, 3, 1) and cpu.freeze_vision
    assert not bench.parse_args(["--size", "small"]).freeze_vision
    model, processor, spec = bench.build_model("smolvlm-256m", device="meta", corpus_scenes=60, image_size=2048)
    assert all(p.is_meta for p in model.parameters())
    tc, vc = model.config.text_config, model.config.vision_config
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads,
            tc.intermediate_size, tc.vocab_size) == (576, 30, 9, 3, 1536, 49280)
    assert (vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads, vc.intermediate_size, vc.image_size,
            vc.patch_size, model.config.scale_factor) == (768, 12, 12, 3072, 512, 16, 4)
    assert model.config.tie_word_embeddings
    assert spec.image_seq_len == 64 and processor.image_seq_len == 64
    info = bench.shape_info(model, processor, spec, 2048)
    # the released processor: resize to 2048 px, 512 px tiles -> 16 tiles + the global view, 64 tokens each
    assert info["processor"] == {"do_image_splitting": True, "resize_longest_edge": 2048, "tile": 512,
                                 "image_seq_len": 64}
    assert info["tiles_per_image"] == 17 and info["image_tokens_per_pair"] == 17 * 64
    assert info["vision_patches_per_image"] == 17 * 1024
    assert 200e6 < info["params"] < 300e6  # SmolVLM-256M's shape (embeddings tied here)
    pb = info["params_by_part"]
    flops = bench.model_flops(pb, 880, 144, 8, 1024, 64, train_images=8, ref_images=8,
                              ref=True)  # 6*N*D trained + 2*N*D reference forward
    nd = pb["text_body"] * 880 + pb["head"] * 144 + (pb["vision"] * 1024 + pb["connector"] * 64) * 8
    assert flops == pytest.approx(8 * nd)
    frozen = bench.model_flops(pb, 880, 144, 8, 1024, 64, train_images=8, ref_images=8, ref=True, vision_frozen=True)
    assert flops - frozen == pytest.approx(2 * 2 * pb["vision"] * 1024 * 8)  # no vision backward when frozen
