"""Reference log-probs for DPO: a frozen copy, the policy with its LoRA adapter disabled, a precomputed
cache on disk, or none (reference-free losses).

The precomputed cache holds, per pair id, the reference's summed log-probs of chosen, rejected (and chosen
under the corrupted image for mDPO) and their token counts, in one safetensors file named by a key of everything
those numbers depend on (`reference_key`: the model's weights, the tokenizer / processor / chat template, the
pairs' text, boxes and image bytes, max_length, dtype and mixed precision, the forward's levers, the corruption),
so training holds no reference model at all and a changed input never reuses stale numbers. The token counts are
checked again at every lookup against the batch being trained (`StaleReferenceError`): a cache that disagrees
is recomputed, with a message, rather than trusted.
"""

from __future__ import annotations

import copy
import hashlib
import json
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..keys import file_fingerprint, key

REFERENCE_KINDS = ("frozen", "lora_disabled", "precomputed", "none")


class StaleReferenceError(ValueError):
    """The precomputed reference does not match what is being trained."""


def processor_fingerprint(processor) -> str:
    """Hash of what turns a pair into tokens and pixels: the tokenizer (vocabulary, merges, special tokens), the
    chat template, and the image processor's settings."""
    tok = getattr(processor, "tokenizer", processor)
    backend = getattr(tok, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    image = getattr(processor, "image_processor", None)
    return key(vocab, getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None),
               image.to_dict() if image is not None else None, getattr(tok, "eos_token", None))


def pairs_fingerprint(pairs: list[dict], image_root: Path) -> str:
    """Hash of the pairs' content, in order: ids, prompts, completions, boxes, and the bytes of each image (an
    imported pair keeps its id when its text or image changes; its reference log-probs must not)."""
    from ..images import resolve_image

    h = hashlib.sha256()
    images: dict[str, str] = {}
    for p in pairs:
        img = p["image"]
        if img not in images:
            path = resolve_image(img, image_root)
            images[img] = file_fingerprint(path) if path is not None and path.exists() else "missing"
        h.update(key(p["pair_id"], p["prompt"], p["chosen"], p["rejected"], p.get("boxes"), images[img]).encode())
    return h.hexdigest()[:16]


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
    def path_for(cache_dir: str | Path, reference_key: str, corrupt: bool) -> Path:
        return Path(cache_dir) / f"ref-{reference_key}{'-mdpo' if corrupt else ''}.safetensors"

    def lookup(self, pair_ids: list[str], device, *, chosen_tokens: torch.Tensor | None = None,
               rejected_tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Cached log-probs of these pairs; with the batch's token counts given, a pair whose counts differ from
        the cached ones raises StaleReferenceError (the numbers were computed on other tokens)."""
        missing = [p for p in pair_ids if p not in self.index]
        if missing:
            raise StaleReferenceError(f"reference cache has no log-probs for pairs {missing[:5]}")
        rows = torch.tensor([self.index[p] for p in pair_ids])
        for name, given in (("chosen_tokens", chosen_tokens), ("rejected_tokens", rejected_tokens)):
            if given is None or name not in self.values:
                continue
            cached = self.values[name][rows].long()
            bad = (cached != given.detach().cpu().long()).nonzero().flatten().tolist()
            if bad:
                i = bad[0]
                raise StaleReferenceError(f"pair {pair_ids[i]}: {int(given[i])} {name.replace('_', ' ')} in this "
                                          f"batch, {int(cached[i])} when the reference was computed")
        return {k: v[rows].to(device) for k, v in self.values.items() if not k.endswith("_tokens")}

    def save(self, path: Path, reference_key: str, pair_ids: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in self.values.items()}, str(tmp),
                  metadata={"pair_ids": json.dumps(pair_ids), "key": reference_key})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "ReferenceCache":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        return cls(load_file(str(path)), json.loads(meta["pair_ids"]))


def no_grad_ctx(kind: str, model):
    return adapter_disabled(model) if kind == "lora_disabled" else nullcontext()
