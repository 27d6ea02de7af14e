"""Reference log-probs for DPO: a frozen copy, the policy with its LoRA adapter disabled, a precomputed
cache on disk, or none (reference-free losses).

The precomputed cache holds, per pair id, the reference's summed log-probs of chosen, rejected (and chosen
under the corrupted image for mDPO), in one safetensors file named by the model's fingerprint and the pairs'
ids, so training holds no reference model at all and a changed model or pair set never reuses stale numbers.
"""

from __future__ import annotations

import copy
import hashlib
import json
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..keys import key

REFERENCE_KINDS = ("frozen", "lora_disabled", "precomputed", "none")


def model_fingerprint(model) -> str:
    """Hash of the config and every parameter's shape plus a strided sample of its values: cheap even for
    billions of parameters, and any training step changes it."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 257)][:257].float().cpu()
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def frozen_copy(model):
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def adapter_disabled(model):
    """Context in which a PEFT model runs as its base model (the reference, with no second copy)."""
    if not hasattr(model, "disable_adapter"):
        raise ValueError("reference='lora_disabled' needs a PEFT model: set train.lora.enabled=true")
    return model.disable_adapter()


class ReferenceCache:
    """Precomputed reference log-probs keyed by pair id, stored as safetensors."""

    def __init__(self, values: dict[str, torch.Tensor], pair_ids: list[str]):
        self.values = values
        self.index = {pid: i for i, pid in enumerate(pair_ids)}

    @staticmethod
    def path_for(cache_dir: str | Path, fingerprint: str, pair_ids: list[str], corrupt: bool) -> Path:
        return Path(cache_dir) / f"ref-{fingerprint}-{key(sorted(pair_ids))}{'-mdpo' if corrupt else ''}.safetensors"

    def lookup(self, pair_ids: list[str], device) -> dict[str, torch.Tensor]:
        missing = [p for p in pair_ids if p not in self.index]
        if missing:
            raise KeyError(f"reference cache has no log-probs for pairs {missing[:5]}")
        rows = torch.tensor([self.index[p] for p in pair_ids])
        return {k: v[rows].to(device) for k, v in self.values.items()}

    def save(self, path: Path, fingerprint: str, pair_ids: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in self.values.items()}, str(tmp),
                  metadata={"pair_ids": json.dumps(pair_ids), "model": fingerprint})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "ReferenceCache":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        return cls(load_file(str(path)), json.loads(meta["pair_ids"]))


def no_grad_ctx(kind: str, model):
    return adapter_disabled(model) if kind == "lora_disabled" else nullcontext()
