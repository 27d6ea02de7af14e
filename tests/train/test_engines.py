"""What the recipe tells accelerate's engines (vlm_dpo/train/engines.py), against accelerate's real DeepSpeed
plugin built from this project's ZeRO configs (scripts/accelerate/deepspeed_zero{2,3}.yaml). DeepSpeed itself is
not installed here (it needs a GPU to train): the DeepSpeed steps run in scripts/gpu_check.sh. FSDP2 runs for real
on CPU in test_distributed.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from accelerate.utils import DeepSpeedPlugin, DistributedType

from vlm_dpo.train import engines
from vlm_dpo.train.recipe import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _plugin(stage: int) -> DeepSpeedPlugin:
    """The plugin `accelerate launch --config_file scripts/accelerate/deepspeed_zero<stage>.yaml` builds."""
    ds = yaml.safe_load((ROOT / f"scripts/accelerate/deepspeed_zero{stage}.yaml").read_text())["deepspeed_config"]
    return DeepSpeedPlugin(zero_stage=ds["zero_stage"], gradient_accumulation_steps=ds["gradient_accumulation_steps"],
                           gradient_clipping=ds["gradient_clipping"], zero3_init_flag=ds["zero3_init_flag"],
                           zero3_save_16bit_model=ds.get("zero3_save_16bit_model", False),
                           offload_optimizer_device=ds["offload_optimizer_device"],
                           offload_param_device=ds["offload_param_device"])


def _accelerator(kind: DistributedType, plugin=None, processes: int = 8, fsdp=None):
    state = SimpleNamespace(deepspeed_plugin=plugin, fsdp_plugin=fsdp)
    return SimpleNamespace(distributed_type=kind, state=state, num_processes=processes)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_get_an_explicit_micro_batch(stage):
    plugin = _plugin(stage)
    assert plugin.is_auto("train_micro_batch_size_per_gpu")  # as shipped: prepare(model, optimizer) would raise
    cfg = TrainConfig(batch_size=4, grad_accum=2, max_grad_norm=0.5)
    engines.fill_deepspeed_config(_accelerator(DistributedType.DEEPSPEED, plugin), cfg)
    ds = plugin.deepspeed_config
    assert not plugin.is_auto("train_micro_batch_size_per_gpu")
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["gradient_clipping"],
            ds["train_batch_size"]) == (4, 2, 0.5, 4 * 2 * 8)
    assert ds["zero_optimization"]["stage"] == stage
    if stage == 3:  # the consolidated model at the end
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_an_explicit_deepspeed_value_that_disagrees_is_an_error():
    plugin = _plugin(2)
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 8
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=8 .* asks for 4"):
        engines.fill_deepspeed_config(_accelerator(DistributedType.DEEPSPEED, plugin), TrainConfig(batch_size=4))


def test_other_engines_are_left_alone():
    acc = _accelerator(DistributedType.MULTI_GPU)
    engines.fill_deepspeed_config(acc, TrainConfig())  # no plugin to touch: nothing happens
    with engines.full_weights_at_load(acc):
        pass
    assert not engines.weights_on_main_only(acc)
    fsdp = SimpleNamespace(cpu_ram_efficient_loading=True)
    assert engines.weights_on_main_only(_accelerator(DistributedType.FSDP, fsdp=fsdp))
    fsdp.cpu_ram_efficient_loading = False
    assert not engines.weights_on_main_only(_accelerator(DistributedType.FSDP, fsdp=fsdp))


def test_zero3_loads_whole_weights():
    plugin = _plugin(3)
    assert plugin.zero3_init_flag
    try:
        with engines.full_weights_at_load(_accelerator(DistributedType.DEEPSPEED, plugin)):
            assert plugin.zero3_init_flag is False  # transformers' is_deepspeed_zero3_enabled() reads this
    except ImportError as e:  # transformers' HfDeepSpeedConfig needs deepspeed
        pytest.skip(f"deepspeed is not installed ({e}); scripts/gpu_check.sh runs ZeRO-3")
    assert plugin.zero3_init_flag is True
