"""Two processes with 2 pairs each train exactly like one process with 4 pairs.

`accelerate launch` starts 2 CPU processes (gloo) running `train_dpo` (tests/train/dist_train.py) with
batch_size=2 per process for 3 steps and a precomputed reference (each process computes every other pair,
both gather the table, the main process writes it); the same config with batch_size=4 then runs in this process. The global batches are the same
(data order is a pure function of seed and step, sliced per process), so every logged metric, the gradient norm,
the learning rate, the final evaluation and the final weights must agree up to float rounding (per-process
batches pad to other widths). Each process also reports a digest of the weights it ended with: they must be
identical, which fails if gradients are not averaged across processes.

On CPU, `accelerate launch --cpu --num_processes 2` starts a single process unless MPI is set up; two CPU
processes come from the torchrun-based launcher (`--multi_gpu`) with ACCELERATE_USE_CPU=1, which makes
accelerate pick MULTI_CPU with the gloo backend. CUDA_VISIBLE_DEVICES is emptied so a GPU machine runs the same.
"""

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.launch_util import accelerate_launch
from vlm_dpo.records import read_jsonl
from vlm_dpo.train.recipe import TrainConfig, train_dpo

SCRIPT = Path(__file__).with_name("dist_train.py")
STEPS = 3
TOL = 1e-5


def _config(tiny_policy, pair_root, out: Path, batch_size: int, mixture: str = "") -> TrainConfig:
    cfg = TrainConfig(model=tiny_policy, pairs=str(pair_root / "pairs.parquet"), image_root=str(pair_root),
                      output_dir=str(out), reference="precomputed", batch_size=batch_size, max_steps=STEPS,
                      warmup_steps=1, lr=1e-3, eval_every=0, save_every=0, seed=0)
    cfg.loss.mixture = mixture
    return cfg


def _launch(cfg: TrainConfig, tmp_path: Path, timeout: float = 150.0, config_file: str = "") -> None:
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(asdict(cfg)))
    accelerate_launch([str(SCRIPT), str(cfg_path)], timeout=timeout, config_file=config_file)


def _steps(out: Path) -> list[dict]:
    return [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(f)))
    assert state, f"no weights under {model_dir}"
    return state


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mixture", ["", "mpo"])
def test_two_processes_match_one_process_with_the_global_batch(tiny_policy, pair_root, tmp_path, mixture):
    """Plain DPO, and MPO whose BCO term keeps a running reward shift: gathered over the ranks, it is the one
    process's shift (a per-rank shift would differ)."""
    two = tmp_path / "two"
    _launch(_config(tiny_policy, pair_root, two, batch_size=2, mixture=mixture), tmp_path)
    one = tmp_path / "one"
    train_dpo(_config(tiny_policy, pair_root, one, batch_size=4, mixture=mixture), progress=False)

    # the launch really ran 2 gloo processes, and they ended on identical weights
    ranks = [json.loads((two / f"rank-{i}.json").read_text()) for i in range(2)]
    for r in ranks:
        assert (r["num_processes"], r["distributed_type"], r["backend"]) == (2, "DistributedType.MULTI_CPU", "gloo")
    assert ranks[0]["digest"] == ranks[1]["digest"], "processes diverged: gradients were not averaged"

    # the same metrics at every step (loss, rewards, grad norm, lr ...)
    rows2, rows1 = _steps(two), _steps(one)
    assert [r["step"] for r in rows2] == [r["step"] for r in rows1] == list(range(1, STEPS + 1))
    skip = {"step", "pairs_per_s", "tokens_per_s", "data_s"}  # timings
    for r2, r1 in zip(rows2, rows1):
        assert set(r2) == set(r1)
        for k in sorted(set(r1) - skip):
            assert r2[k] == pytest.approx(r1[k], rel=1e-6, abs=TOL), f"step {r1['step']}: {k}"
    assert rows1[-1]["loss"] != pytest.approx(rows1[0]["loss"], abs=1e-3)  # it trained: a real comparison

    # the final evaluation on the val pairs
    ev2 = [r for r in read_jsonl(two / "metrics.jsonl") if "eval/loss" in r]
    ev1 = [r for r in read_jsonl(one / "metrics.jsonl") if "eval/loss" in r]
    assert len(ev2) == len(ev1) == 1
    for k in ev1[0]:
        assert ev2[0][k] == pytest.approx(ev1[0][k], rel=1e-6, abs=TOL), k

    # the saved models
    w2, w1, w0 = _weights(two / "model"), _weights(one / "model"), _weights(Path(tiny_policy))
    assert w2.keys() == w1.keys()
    diff = max((w2[k].float() - w1[k].float()).abs().max().item() for k in w1)
    assert diff < TOL, f"final weights differ by {diff}"
    moved = max((w1[k].float() - w0[k].float()).abs().max().item() for k in w1 if k in w0)
    assert moved > 100 * TOL


@pytest.mark.timeout(300)
def test_fsdp2_shards_and_matches_one_process(tiny_policy, pair_root, tmp_path):
    """scripts/accelerate/fsdp.yaml (FSDP2, transformer-layer wrapping, CPU-RAM-efficient loading: accelerate
    moves the non-main copies to meta and sends the main process's weights at prepare; the reference table is
    computed by the main process and sent) on 2 CPU processes (see dist_train.force_fsdp_on_cpu): parameters
    really are sharded DTensors, and the per-step metrics and the consolidated saved model equal one process
    with the global batch."""
    two = tmp_path / "two"
    sharded = _config(tiny_policy, pair_root, two, batch_size=2)
    sharded.save_every = 2  # a sharded checkpoint at step 2, resumed below
    _launch(sharded, tmp_path, config_file="scripts/accelerate/fsdp.yaml")
    one = tmp_path / "one"
    train_dpo(_config(tiny_policy, pair_root, one, batch_size=4), progress=False)
    ranks = [json.loads((two / f"rank-{i}.json").read_text()) for i in range(2)]
    for r in ranks:
        assert (r["num_processes"], r["distributed_type"], r["backend"]) == (2, "DistributedType.FSDP", "gloo")
        assert r["sharded"] == ["DTensor"] and r["start"] == 0, r
    rows2, rows1 = _steps(two), _steps(one)
    assert len(rows2) == len(rows1) == STEPS
    for r2, r1 in zip(rows2, rows1):
        for k in ("loss", "rewards/margins", "rewards/accuracies", "grad_norm", "lr"):
            assert r2[k] == pytest.approx(r1[k], rel=1e-5, abs=TOL), f"step {r1['step']}: {k}"
    w2, w1 = _weights(two / "model"), _weights(one / "model")
    assert w2.keys() == w1.keys()
    diff = max((w2[k].float() - w1[k].float()).abs().max().item() for k in w1)
    assert diff < TOL, f"final weights differ by {diff}"

    # resume from the sharded checkpoint (each process loads its shards): the last step and the model again
    assert (two / "checkpoints" / "step-2").is_dir()
    shutil.rmtree(two / "model")
    _launch(sharded, tmp_path, config_file="scripts/accelerate/fsdp.yaml")
    assert [json.loads((two / f"rank-{i}.json").read_text())["start"] for i in range(2)] == [2, 2]
    again = _steps(two)
    assert [r["step"] for r in again] == [1, 2, 3]
    assert again[-1]["loss"] == pytest.approx(rows1[-1]["loss"], rel=1e-5, abs=TOL)
    w3 = _weights(two / "model")
    assert max((w3[k].float() - w1[k].float()).abs().max().item() for k in w1) < TOL
