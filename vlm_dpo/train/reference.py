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
from tqdm.auto import tqdm
from safetensors.torch import load_file, save_file

from ..keys import file_fingerprint, key
from .batches import make_batch
from .forward import PairForward
from .losses import needs_corrupt

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


def reference_key(model, processor, pairs: list[dict], cfg, image_root: Path) -> str:
    """Everything precomputed reference log-probs depend on (see reference.py)."""
    corrupt = needs_corrupt(cfg.loss.weights)
    numerics = {"max_length": cfg.max_length, "template_tail": cfg.template_tail, "dtype": cfg.dtype, "mixed_precision": cfg.mixed_precision,
                "shared_vision": cfg.shared_vision, "shared_prefix": cfg.shared_prefix, "full_logits": cfg.full_logits,
                "corruption": cfg.loss.corruption if corrupt else None,
                "corrupt_seed": cfg.seed if corrupt and cfg.loss.corruption == "crop" else None}
    return key(model_fingerprint(model), processor_fingerprint(processor), pairs_fingerprint(pairs, image_root),
               numerics)


def precompute_reference(model, processor, pairs: list[dict], cfg, image_root: Path, cache_dir: Path,
                         progress: bool = True, autocast=nullcontext, accelerator=None) -> ReferenceCache:
    """Reference log-probs (and token counts) of every pair under `model` (the initial policy), cached on disk.
    `autocast`: the training forward's mixed-precision context, so the reference has the policy's numerics.
    With an `accelerator` of several processes, each computes every N-th pair and all gather the whole table
    (every rank must call this); the main process writes the file."""
    corrupt = needs_corrupt(cfg.loss.weights)
    ids = [p["pair_id"] for p in pairs]
    ref_key = reference_key(model, processor, pairs, cfg, image_root)
    path = ReferenceCache.path_for(cache_dir, ref_key, corrupt)
    if path.exists():
        return ReferenceCache.load(path)
    ranks = accelerator.num_processes if accelerator is not None else 1
    if ranks > 1:
        import torch.distributed as dist

        rank = accelerator.process_index
        mine = reference_values(model, processor, pairs[rank::ranks], cfg, image_root, progress, autocast)
        shards = [None] * ranks
        dist.all_gather_object(shards, mine)
        values = {k: torch.stack([shards[i % ranks][k][i // ranks] for i in range(len(pairs))]) for k in mine}
        cache = ReferenceCache(values, ids)
        if accelerator.is_main_process:
            cache.save(path, ref_key, ids)
        accelerator.wait_for_everyone()
        return cache
    cache = ReferenceCache(reference_values(model, processor, pairs, cfg, image_root, progress, autocast), ids)
    cache.save(path, ref_key, ids)
    return cache


def reference_values(model, processor, pairs: list[dict], cfg, image_root: Path, progress: bool,
                     autocast) -> dict[str, torch.Tensor]:
    """Per pair: summed reference log-probs of chosen and rejected (and chosen under the corrupted image), and
    their token counts, in `pairs` order (CPU tensors)."""
    corrupt = needs_corrupt(cfg.loss.weights)
    model_type = getattr(model.config, "model_type", "")
    forward = PairForward.of(model, cfg)
    out = {"chosen": [], "rejected": [], "chosen_tokens": [], "rejected_tokens": []}
    out |= {"chosen_corrupt": []} if corrupt else {}
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast():
        for start in tqdm(range(0, len(pairs), cfg.batch_size), desc="reference", disable=not progress):
            rows = pairs[start:start + cfg.batch_size]
            batch = make_batch(rows, processor, image_root=image_root, model_type=model_type,
                               max_length=cfg.max_length, corruption=cfg.loss.corruption if corrupt else None,
                               seed=cfg.seed, template_tail=cfg.template_tail)
            c, r, cc = forward(batch.to(model.device))
            out["chosen"].append(c.sum.float().cpu())
            out["rejected"].append(r.sum.float().cpu())
            out["chosen_tokens"].append(c.n_tokens.cpu())
            out["rejected_tokens"].append(r.n_tokens.cpu())
            if corrupt:
                out["chosen_corrupt"].append(cc.sum.float().cpu())
    model.train(was_training)
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}
