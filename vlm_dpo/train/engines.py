"""What the training recipe must tell accelerate's engines (DDP, FSDP2, DeepSpeed ZeRO) that they cannot infer.

- DeepSpeed sizes its engine from `train_micro_batch_size_per_gpu`, which accelerate fills from a prepared
  dataloader; the recipe prepares none (its batches come from batches.DataOrder), so an "auto" micro-batch would
  make `prepare(model, optimizer)` raise. The TrainConfig states it: micro-batch = train.batch_size, accumulation
  = train.grad_accum, clipping = train.max_grad_norm (the engine clips in its step; accelerate's clip_grad_norm_,
  which the recipe calls, then only reports the engine's norm).
- ZeRO-3 with `zero3_init_flag` partitions weights while transformers loads them, before the recipe has
  fingerprinted the model and precomputed the reference log-probs; the recipe loads full weights (on CPU) and lets
  `prepare` partition them. Saving gathers them again (`zero3_save_16bit_model` in the config).
- FSDP2 with `cpu_ram_efficient_loading`: `prepare` moves the non-main copies to meta and sends the main
  process's weights to the others, so only the main process's copy counts before then.
"""

from __future__ import annotations

from contextlib import nullcontext


def kind(accelerator) -> str:
    """"DEEPSPEED", "FSDP", "MULTI_GPU", "MULTI_CPU", "NO", ... (accelerate's DistributedType value)."""
    return accelerator.distributed_type.value


def fill_deepspeed_config(accelerator, cfg) -> None:
    """Replace the "auto" entries a DeepSpeed engine needs before `prepare` with the TrainConfig's values; an
    explicit value that disagrees with the TrainConfig is an error naming both (the engine would silently train
    another batch size)."""
    if kind(accelerator) != "DEEPSPEED":
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    wanted = {"train_micro_batch_size_per_gpu": cfg.batch_size, "gradient_accumulation_steps": cfg.grad_accum,
              "gradient_clipping": cfg.max_grad_norm}
    for name, value in wanted.items():
        have = ds.get(name, "auto")
        if have == "auto":
            ds[name] = value
        elif float(have) != float(value):
            raise ValueError(f"DeepSpeed config has {name}={have} but the training config asks for {value} "
                             f"(train.batch_size / train.grad_accum / train.max_grad_norm): make them agree")
    ds["train_batch_size"] = cfg.batch_size * cfg.grad_accum * accelerator.num_processes


def full_weights_at_load(accelerator):
    """A context in which transformers loads whole weights even under ZeRO-3 with zero3_init_flag (see above)."""
    if kind(accelerator) != "DEEPSPEED":
        return nullcontext()
    return accelerator.state.deepspeed_plugin.zero3_init_context_manager(enable=False)


def weights_on_main_only(accelerator) -> bool:
    """FSDP with cpu_ram_efficient_loading: until `prepare`, only the main process's weights are the model."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return kind(accelerator) == "FSDP" and bool(getattr(plugin, "cpu_ram_efficient_loading", False))
