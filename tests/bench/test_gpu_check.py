"""scripts/gpu_check.sh dry-run on CPU (GPU_CHECK_DEVICE=cpu): every part (the ours-vs-TRL benchmark, one bf16 DPO
step per family, the mixed-precision check) runs at tiny size and reports ok; without CUDA the real run fails fast."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(tmp_path, **env):
    e = dict(os.environ, OUT=str(tmp_path), OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE", **env)
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=e, capture_output=True, text=True, timeout=420)


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu_reports_every_part_ok(tmp_path):
    proc = _run(tmp_path, GPU_CHECK_DEVICE="cpu")
    logs = list(tmp_path.glob("gpu_check-*-cpu/gpu_check.log"))
    assert len(logs) == 1, (proc.stdout, proc.stderr)
    log = logs[0].read_text()
    assert proc.returncode == 0, log
    for part in ("bench", "families", "autocast"):
        assert f"PART {part}: ok" in log, log
        report = json.loads((logs[0].parent / f"{part}.json").read_text())
        assert report, part
    fam = json.loads((logs[0].parent / "families.json").read_text())
    from tests.tiny_models import ALL_FAMILIES

    assert set(fam["families"]) == set(ALL_FAMILIES) and all(r["ok"] for r in fam["families"].values())
    auto = json.loads((logs[0].parent / "autocast.json").read_text())
    assert auto["linear_output_dtypes"] == ["torch.bfloat16"] and auto["param_dtypes"] == ["torch.float32"]
    engine = json.loads((logs[0].parent / "fsdp.json").read_text())  # launched; on CPU accelerate runs it as 1 process
    assert "PART fsdp: ok" in log and engine["ok"] and engine["checkpoints"] == ["step-1"], engine
    for part in ("zero2", "zero3"):
        assert f"PART {part}: ok" in log or f"PART {part}: skipped" in log, log
    bench = json.loads((logs[0].parent / "bench.json").read_text())
    assert bench["size"] == "tiny" and bench["dtype"] == "bf16" and bench["device"] == "cpu"
    assert "GPU CHECK OK" in log


def test_gpu_check_fails_fast_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = _run(tmp_path, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stdout
