"""The training forward as one module, so that `accelerator.prepare` wraps the code that really runs."""

from __future__ import annotations

import torch

from .batches import TrainBatch
from .logps import completion_logps, logps_from_logits
from .pair_logps import pair_logps


class PairForward(torch.nn.Module):
    """The training forward as a module: (chosen, rejected, chosen under the corrupted image or None) log-probs
    of a batch. `accelerator.prepare` wraps this module, so DDP / FSDP / DeepSpeed hooks and autocast run."""

    def __init__(self, model, *, shared_vision: bool = True, shared_prefix: bool = True, full_logits: bool = False):
        super().__init__()
        self.model = model
        self.shared_vision, self.shared_prefix, self.full_logits = shared_vision, shared_prefix, full_logits

    @classmethod
    def of(cls, model, cfg) -> "PairForward":
        """From a TrainConfig's levers."""
        return cls(model, shared_vision=cfg.shared_vision, shared_prefix=cfg.shared_prefix,
                   full_logits=cfg.full_logits)

    # What accelerate's FSDP2 preparation asks of the module it wraps, answered by the model: the layer classes to
    # shard one by one (TRANSFORMER_BASED_WRAP), and re-tying embeddings and LM head after CPU-RAM-efficient
    # loading has moved the non-main copies to meta (untied, each rank would train two separate matrices).
    @property
    def _no_split_modules(self):
        return getattr(self.model, "_no_split_modules", None)

    def tie_weights(self, *args, **kwargs):
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights(*args, **kwargs)

    def forward(self, batch: TrainBatch):
        chosen, rejected = pair_logps(self.model, batch.encoded, shared_vision=self.shared_vision,
                                      shared_prefix=self.shared_prefix, full_logits=self.full_logits)
        corrupt = None
        if batch.corrupt is not None:
            c = batch.corrupt
            corrupt = (logps_from_logits(self.model(**c.inputs, use_cache=False).logits, c.labels)
                       if self.full_logits else completion_logps(self.model, c.inputs, c.labels))
        return chosen, rejected, corrupt
