from pathlib import Path

import pytest

from vlm_dpo.config import Config, ConfigError, load_config
from vlm_dpo.models import TinyVLMSpec

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


def test_defaults_yaml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("out: runs/x\ndescribe:\n  n_samples: 6\nvlm:\n  spec:\n    text_layers: 2\n")
    cfg = load_config(y, ["describe.n_samples=8", "world.seed=3"])
    assert isinstance(cfg, Config) and isinstance(cfg.vlm.spec, TinyVLMSpec)
    assert (cfg.out, cfg.describe.n_samples, cfg.vlm.spec.text_layers, cfg.world.seed) == ("runs/x", 8, 2, 3)


@pytest.mark.parametrize("override,match", [
    ("describe.n_sample=4", "unknown config key.*n_sample"),
    ("nope.x=1", "unknown config key"),
    ("describe.n_samples=lots", "invalid value for describe.n_samples"),
    ("justaword", "key=value"),
    ("ground.fallback_score=0.6", "ground.fallback_score must not exceed min_score"),
    ("ground.fallback_score=-0.1", r"ground.fallback_score must lie in \[0, 1\]"),
])
def test_bad_overrides_are_rejected(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    y = tmp_path / "typo.yaml"
    y.write_text("describe:\n  temprature: 0.7\n")
    with pytest.raises(ConfigError, match=r"typo.yaml.*temprature"):
        load_config(y)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_are_valid(path):
    load_config(path)


ACCELERATE = sorted(Path(__file__).resolve().parents[1].joinpath("scripts", "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE, ids=[p.name for p in ACCELERATE])
def test_shipped_accelerate_configs_parse(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1 and str(cfg.distributed_type).split(".")[-1] in (
        "MULTI_GPU", "FSDP", "DEEPSPEED")


def test_real_checkpoint_configs_name_real_models():
    for name in ("smolvlm_256m.yaml", "smolvlm_256m_lora.yaml"):
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
        assert cfg.train.model == "HuggingFaceTB/SmolVLM-256M-Instruct"
        assert cfg.train.reference in ("precomputed", "lora_disabled")
    lora = load_config(Path(__file__).resolve().parents[1] / "configs" / "smolvlm_256m_lora.yaml")
    assert lora.train.lora.enabled and lora.train.reference == "lora_disabled"


def test_base_file_is_merged_under_the_config(tmp_path):
    (tmp_path / "parent.yaml").write_text("out: runs/p\ndescribe:\n  n_samples: 6\n  temperature: 0.7\n")
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("base: ../parent.yaml\ndescribe:\n  n_samples: 2\n")
    cfg = load_config(child, ["world.seed=4"])
    assert (cfg.out, cfg.describe.n_samples, cfg.describe.temperature, cfg.world.seed) == ("runs/p", 2, 0.7, 4)
    (tmp_path / "parent.yaml").write_text("base: sub/child.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(child)
    child.write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml.*not found"):
        load_config(child)


def test_see_dont_copy_is_the_demo_plus_variants():
    root = Path(__file__).resolve().parents[1] / "configs"
    demo, see = load_config(root / "demo.yaml"), load_config(root / "see_dont_copy.yaml")
    assert see.variants == ["no_context", "mdpo"] and see.vlm == demo.vlm and see.train == demo.train
