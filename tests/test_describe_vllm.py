"""describe.backend: `hf` (default) keeps the captions file and its settings as they were; `vllm` is a clear
error without the vllm package or a GPU, and on a GPU machine with vllm writes the same record fields."""

import importlib.util

import pytest

from vlm_dpo.config import ConfigError, load_config
from vlm_dpo.describe import DescribeConfig, describe_settings

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_an_unknown_backend_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="describe.backend"):
        load_config(None, ["describe.backend=tgi"])


def test_the_backend_is_part_of_the_settings_only_when_it_is_not_the_default():
    items = [{"image_id": "a", "file": "a.png", "path": "/nonexistent/a.png", "prompt": "p", "grounding": None}]
    hf = describe_settings("m", items, DescribeConfig())
    assert "backend" not in hf["generation"]  # files written before the setting existed are still reused
    assert describe_settings("m", items, DescribeConfig(backend="vllm"))["generation"]["backend"] == "vllm"


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed: the error for a missing package cannot happen")
def test_vllm_without_the_package_says_how_to_get_it_before_any_work(tmp_path, capsys):
    from vlm_dpo.cli import main

    out = tmp_path / "run"
    assert main(["describe", "--quiet", "describe.backend=vllm", f"cache_dir={tmp_path / 'cache'}",
                 f"out={out}"]) == 1
    err = capsys.readouterr().err
    assert "pip install vllm" in err and "GPU" in err and "Traceback" not in err
    assert not (tmp_path / "cache" / "worlds").exists() and not (out / "detections").exists()  # refused first


def test_vllm_generates_the_same_record_fields(tiny_cfg):
    if not HAS_VLLM:
        pytest.skip("vllm is not installed (pip install vllm, on a CUDA machine): the real vllm path is not run")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: vLLM runs on GPUs only")
    from vlm_dpo import describe
    from vlm_dpo.records import read_jsonl
    from vlm_dpo.run import RunFolder

    hf = list(read_jsonl(describe.run(tiny_cfg, RunFolder.setup(tiny_cfg), "val", progress=False)))
    tiny_cfg.describe.backend = "vllm"
    tiny_cfg.vlm.dtype = "float16"
    fast = list(read_jsonl(describe.run(tiny_cfg, RunFolder.setup(tiny_cfg), "val", progress=False,
                                        out_name="vllm.jsonl")))
    assert [r["image_id"] for r in fast] == [r["image_id"] for r in hf]
    assert all(set(a) == set(b) and len(a["samples"]) == len(b["samples"]) for a, b in zip(fast, hf))
