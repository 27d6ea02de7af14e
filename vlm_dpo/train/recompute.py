"""Trading compute for activation memory: full or selective recomputation in the backward pass.

- `gradient_checkpointing` (full): every layer keeps only its input and reruns its whole forward in backward
  (about one extra forward per step).
- `selective_recompute` (the default): every layer transformers can checkpoint and that has trainable weights (the
  language model's decoder layers, an unfrozen vision tower's encoder layers) keeps the outputs of its matrix
  multiplications and of attention, and recomputes everything else in backward: norms, RoPE, the K/V head
  repetition of grouped-query attention, the MLP's activation and product, residual adds ("selective activation
  checkpointing", as torchtitan applies it per op). Measured with bench/dpo_step.py (bench/README.md): at the
  small shape 14% less peak memory for ~10% more step time; at SmolVLM-256M's shape (frozen vision tower) 4%
  less (3180 -> 3045 MB) at the same speedup over TRL.

transformers' checkpointing hook also makes the output of every sub-model's input embeddings require grad
(`enable_input_require_grads`, for reentrant checkpointing and adapters), the vision tower's patch embeddings
included: with a frozen tower, autograd then saved the whole tower's activations and ran its backward for a gradient
nobody reads (at SmolVLM-256M's shape 25% more peak memory and a 1.6x slower step). Our checkpointing is
non-reentrant, which needs no input that requires grad, so `skip_frozen_layers` removes those hooks.

The numbers do not change: recomputed ops are rerun on the same inputs (dropout's RNG state is restored by
torch.utils.checkpoint), so losses and gradients equal the stored-activation run (tests/train/test_recompute.py).
Both go through transformers' own checkpointing hook (`GradientCheckpointingLayer`), with torch's selective
checkpoint context as the `context_fn`; written here is only the policy: which ops are worth keeping.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)


def _kept_ops() -> frozenset:
    aten = torch.ops.aten
    names = ["mm", "addmm", "bmm", "baddbmm", "convolution", "_scaled_dot_product_flash_attention_for_cpu",
             "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_flash_attention_forward", "_efficient_attention_forward"]
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


def keep_matmul_and_attention(ctx, op, *args, **kwargs):
    """Selective-checkpoint policy: keep the outputs of matmuls and fused attention, recompute the rest."""
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in _KEPT else CheckpointPolicy.PREFER_RECOMPUTE


_KEPT = _kept_ops()


def _checkpoint_layers(module, **kwargs) -> None:
    """transformers >= 5.x names it activation_checkpointing_enable (the old name warns); older ones do not."""
    enable = getattr(module, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def enable_recompute(model, *, full: bool, selective: bool) -> str:
    """Switch on full checkpointing or selective recomputation of every checkpointable layer; returns what applies:
    "full", "selective" or "none". Full wins when both are asked for (it already recomputes everything)."""
    if full:
        _checkpoint_layers(model, use_reentrant=False)
        model.config.use_cache = False
        return "full"
    if not selective:
        return "none"
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    if not getattr(model, "supports_gradient_checkpointing", False):
        log.info("selective recompute: %s does not support checkpointing; storing activations", type(model).__name__)
        return "none"
    _checkpoint_layers(model, use_reentrant=False,
                       context_fn=functools.partial(create_selective_checkpoint_contexts, keep_matmul_and_attention))
    return "selective"


def skip_frozen_layers(model) -> int:
    """Switch checkpointing off again in layers with no trainable parameter (a frozen vision tower): nothing flows
    back through them, so there is nothing to save memory for, while the checkpoint would still hold its cache of
    their outputs for the whole step. Also remove transformers' input-require-grad hooks (see the module
    docstring): they would pull a frozen tower into autograd. Call after freezing (and after wrapping in adapters,
    which may add the hooks again). Returns how many layers were switched off."""
    for module in model.modules():
        if getattr(module, "_require_grads_hooks", None):
            module.disable_input_require_grads()
    off = 0
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) and not any(p.requires_grad for p in module.parameters()):
            module.gradient_checkpointing = False
            off += 1
    return off
