"""Chosen and rejected of a pair in one forward: one vision pass, and where the family allows it, one
prompt prefix (`pair_logps`). The completion-only head and the shared vision pass are in logps.py.

Shared prefix: one packed row per pair (`pack_pairs`, `pair_logps(..., shared_prefix=True)`, the default)
---------------------------------------------------------------------------------------------------------
Chosen and rejected also share every text-model activation of the image + prompt prefix (~90% of a row in a
captioning pair: 64-68 image tokens and a grounded prompt before a ~13-token caption), and the shared-vision path
still runs that prefix through the text model twice. Where the family allows it, `pair_logps` therefore runs
each pair as ONE row

    [ prefix_i (p_i tokens: the chosen row's first p_i columns) | chosen completion | rejected completion | pad ]

built by `pack_pairs` by gathering columns of the 2B-row PairBatch (right-padded to the longest pair), with
  * a block-causal 4-D `attention_mask` [B, 1, W, W]: every token sees the causal prefix; a chosen token sees the
    chosen tokens before it; a rejected token sees the rejected tokens before it and never a chosen one; nobody
    sees padding (a padding query sees only itself so that no softmax row is empty and no NaN reaches backward).
    Boolean for sdpa (what transformers' own sdpa mask is), additive 0 / finfo.min for eager; transformers passes
    a 4-D mask to the attention unchanged;
  * explicit `position_ids`: each token's position in its own original row, so the rejected completion continues
    at p_i, p_i + 1, ... exactly as if it followed the prefix alone: the column index for 1-D RoPE families, and
    for Qwen2-VL / 2.5-VL (families with `mrope`) the 3-D M-RoPE ids that the model's own `get_rope_index` builds for
    the plain 2B rows, gathered at the same (row, column) as the tokens;
  * the vision tensors of the B images passed as they are: each packed row holds its image tokens once, so the
    vision encoder also runs once per pair (the model scatters the features itself, as in a plain forward).
The completion targets keep their 2B-row order: the hidden state predicting a target is the packed position of the
token before it - for a rejected completion's first token, the prefix's last token (shared with the chosen
branch); for later rejected tokens, column t of the rejected row lives at n_c + (t - p_i) in the packed row. The
head then runs on those N rows only, as above. It is one ordinary forward of the model's base, so autograd is the
model's own: the prefix activations receive the gradients of both branches (summed, as in the plain path),
gradient checkpointing works unchanged, and log-probs and gradients equal the plain path's to float32 rounding
(tests/train/test_pair_logps.py: per-token log-probs within 1e-5, parameter gradients within 1e-5 relative).
The text model sees B*P + 2B*C real tokens instead of 2B*(P + C) (plus padding to the longest packed row).

Why a packed row and not a KV cache of the prefix: the cache route (prefix rows with `use_cache=True`, then the
2B completion rows with `past_key_values` repeated per branch) needs two forwards, a cache kept in the autograd
graph, its own causal-mask/position bookkeeping per family, and does not combine with gradient checkpointing
(transformers turns `use_cache` off under it); the packed row is one ordinary forward whose only changes are the
mask and the positions. Attention over a packed row costs (P + 2C)^2 instead of 2 (P + C)^2 score entries, smaller.

When it applies (`shared_prefix_problem(model, batch)` says why not; the fallback is the shared-vision path above):
  * `shared_prefix` and `shared_vision` are on (`shared_vision=False` stays the fully plain reference path);
  * the family's registry entry (vlm_dpo/families.py) has `shared_prefix` (a causal text decoder that takes a
    custom 4-D mask and explicit positions straight through; tested with tiny models: idefics3, smolvlm,
    qwen2_vl, qwen2_5_vl, llava, llava_next) and
    `shared_vision`. PaliGemma and
    Gemma 3 are not: they attend bidirectionally over the image / prefix, which a causal block mask would change.
    An unlisted family falls back silently;
  * the text model's attention implementation is sdpa or eager (flash-attention kernels take no 4-D mask and
    flex attention wants a BlockMask: those fall back, with a one-time warning), its layer types are full or
    sliding attention, and no row is longer than a sliding window (within it, the window masks nothing);
  * the batch is right-padded and each pair's two rows are equal on the prompt (what `encode_pairs` builds);
    otherwise a one-time warning and the fallback.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import dataclass

import torch

from ..families import family_of, model_type_of
from .logps import (LogpResult, PairBatch, _base_forward, _head_logps, _reduce, _repeat2, _targets, base_and_head,
                    completion_logps, logps_from_hidden, logps_from_logits, shared_image_features, supports_shared_vision, unwrap_model)

log = logging.getLogger(__name__)
PREFIX_ATTN_IMPLEMENTATIONS = frozenset({"sdpa", "eager"})
_warned: set[str] = set()


# ----------------------------------------------------------------------------------------------------------------
# Shared prefix: one packed row per pair [prefix, chosen, rejected] with a block-causal mask (see module docstring)


@dataclass
class PackedPairs:
    """B packed rows [prefix_i, chosen_i, rejected_i] and where each completion target's hidden state sits."""
    inputs: dict  # per-token model inputs for the B packed rows: input_ids, 4-D attention_mask, position_ids, ...
    index: torch.Tensor  # [N] flat index into the [B * width] hidden rows, one per target, in `_targets` order
    targets: torch.Tensor  # [N] target ids
    mask: torch.Tensor  # [2B, T-1] the `_targets` mask of the 2B-row labels (for `_reduce`)
    segments: torch.Tensor  # [B, width] 0 prefix, 1 chosen, 2 rejected, -1 padding
    width: int


def _text_config(model):
    cfg = unwrap_model(model).config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _prefix_layout_problem(batch: PairBatch) -> str | None:
    """Why the batch cannot be packed (None: it can): right padding, and each pair's rows equal on the prompt."""
    ids = batch.inputs.get("input_ids")
    am = batch.inputs.get("attention_mask")
    b = batch.n_pairs
    if not torch.is_tensor(ids) or not torch.is_tensor(am) or ids.dim() != 2 or ids.shape[0] != 2 * b:
        return "the batch has no [2B, T] input_ids / attention_mask"
    lens = am.sum(1)
    col = torch.arange(ids.shape[1], device=ids.device)[None]
    if not torch.equal(am.bool(), col < lens[:, None]):
        return "rows are not right-padded"
    p = batch.prompt_lengths[:b].to(ids.device)
    if not torch.equal(batch.prompt_lengths[b:].to(ids.device), p) or (lens[:b] < p).any() or (lens[b:] < p).any():
        return "prompt lengths differ between a pair's rows"
    in_prompt = col < p[:, None]
    for k in batch.row_keys:
        v = batch.inputs[k]
        if not bool(((v[:b] == v[b:]) | ~in_prompt).all()):
            return f"a pair's chosen and rejected rows differ on the prompt ({k})"
    return None


def shared_prefix_problem(model, batch: PairBatch | None = None) -> str | None:
    """Why `pair_logps` cannot share the prefix for this model (and batch); None when it can."""
    base, _ = base_and_head(model)
    if base is None:
        return "no separate base model"
    fam = family_of(model)
    if not fam.shared_prefix:
        return f"family {fam.model_type or model_type_of(model)!r} does not share the prefix (vlm_dpo/families.py)"
    if not fam.shared_vision:  # the packed rows take each image once, as the shared-vision path does
        return f"family {fam.model_type!r} does not share the vision pass (vlm_dpo/families.py)"
    text = _text_config(model)
    impl = getattr(text, "_attn_implementation", None) or "eager"
    if impl not in PREFIX_ATTN_IMPLEMENTATIONS:
        return f"attention implementation {impl!r} takes no custom 4-D mask (use sdpa or eager)"
    kinds = set(getattr(text, "layer_types", None) or ())
    if kinds - {"full_attention", "sliding_attention"}:
        return f"layer types {sorted(kinds)}"
    if batch is None:
        return None
    problem = _prefix_layout_problem(batch)
    if problem is not None:
        return problem
    window = getattr(text, "sliding_window", None)
    if window and getattr(text, "use_sliding_window", True) is not False:
        longest = int(batch.inputs["attention_mask"].sum(1).max())
        if longest > int(window):
            return f"rows of {longest} tokens exceed the sliding window ({window})"
    return None


def pack_pairs(batch: PairBatch, *, positions: torch.Tensor | None = None,
               float_mask_dtype: torch.dtype | None = None) -> PackedPairs:
    """One row per pair: [prompt_i (p_i tokens), chosen completion, rejected completion], right-padded.

    `attention_mask` is [B, 1, W, W]: a query sees the keys at or before it in the prefix and in its own segment
    (a rejected token never sees the chosen tokens), padding keys never (a padding query sees only itself, so no
    softmax row is empty). Boolean (True = attend, what sdpa takes), or additive 0 / finfo.min in
    `float_mask_dtype` (eager). `position_ids` are each token's position in its own original row, so the rejected
    completion continues from the prefix as if it followed it alone: its column (1-D RoPE), or, given the plain
    rows' `positions` ([2B, T] or [k, 2B, T], e.g. Qwen2-VL's 3-D M-RoPE ids), those gathered.
    """
    b = batch.n_pairs
    ids = batch.inputs["input_ids"]
    dev = ids.device
    lens = batch.inputs["attention_mask"].to(dev).sum(1)
    n_c, n_r = lens[:b], lens[b:]
    p = batch.prompt_lengths[:b].to(dev)
    total = n_c + n_r - p
    width = max(int(total.max()), 1)
    j = torch.arange(width, device=dev)[None]  # [1, W]
    pair = torch.arange(b, device=dev)[:, None]  # [B, 1]
    in_c = j < n_c[:, None]  # the prefix and the chosen completion: row i's own columns
    in_r = ~in_c & (j < total[:, None])  # the rejected completion: row B+i from column p_i on
    valid = in_c | in_r
    src_row = torch.where(in_r, pair + b, pair)
    src_col = torch.where(in_r, j - n_c[:, None] + p[:, None], torch.where(in_c, j, torch.zeros_like(j)))

    if batch.pad_token_id is not None:
        pad = batch.pad_token_id
    else:
        pads = ids[batch.inputs["attention_mask"].to(dev) == 0]
        pad = int(pads[0]) if pads.numel() else 0
    inputs = {}
    for k in batch.row_keys:
        if k == "attention_mask":
            continue
        inputs[k] = batch.inputs[k][src_row, src_col].masked_fill(~valid, pad if k == "input_ids" else 0)

    seg = torch.where(j < p[:, None], 0, torch.where(in_c, 1, torch.where(in_r, 2, -1)))
    seg_q, seg_k = seg[:, :, None], seg[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
    allowed = ((seg_k == 0) | (seg_k == seg_q)) & valid[:, None, :] & causal
    allowed |= torch.eye(width, dtype=torch.bool, device=dev)
    allowed = allowed[:, None]
    if float_mask_dtype is not None:
        allowed = torch.zeros(allowed.shape, dtype=float_mask_dtype, device=dev).masked_fill(
            ~allowed, torch.finfo(float_mask_dtype).min)
    inputs["attention_mask"] = allowed
    if positions is None:
        inputs["position_ids"] = src_col
    else:
        inputs["position_ids"] = positions.to(dev)[..., src_row, src_col].masked_fill(~valid, 0)

    mask, tgt = _targets(batch.labels.to(dev))
    r, t = mask.nonzero(as_tuple=True)
    rej = r >= b
    pr = torch.where(rej, r - b, r)
    col = torch.where(rej & (t >= p[pr]), t - p[pr] + n_c[pr], t)
    return PackedPairs(inputs=inputs, index=pr * width + col, targets=tgt, mask=mask, segments=seg, width=width)


def mrope_positions(model, batch: PairBatch) -> torch.Tensor:
    """The [3, 2B, T] M-RoPE position ids the plain forward would build for the 2B rows (the base's own
    `get_rope_index`, with the vision grids repeated for 2B rows as in the plain forward)."""
    base, _ = base_and_head(model)
    fn = base.get_rope_index
    params = inspect.signature(fn).parameters
    kwargs = {k: _repeat2(v) for k, v in batch.vision_inputs().items() if k in params}
    kwargs |= {k: v for k, v in batch.row_inputs().items() if k in params}
    return fn(**kwargs)[0]


def _shared_prefix_logps(model, batch: PairBatch, full_logits: bool = False) -> LogpResult:
    base, _ = base_and_head(model)
    impl = getattr(_text_config(model), "_attn_implementation", None) or "eager"
    positions = mrope_positions(model, batch) if family_of(model).mrope else None
    packed = pack_pairs(batch, positions=positions, float_mask_dtype=None if impl == "sdpa" else base.dtype)
    inputs = {**packed.inputs, **batch.vision_inputs()}
    if full_logits:  # the model's own forward and head: [B, W, vocab] logits over the packed rows
        logits = model(**inputs, use_cache=False).logits
        rows = logits.reshape(-1, logits.shape[-1])[packed.index].float()
        return _reduce(rows.log_softmax(-1).gather(-1, packed.targets.unsqueeze(-1)).squeeze(-1), packed.mask)
    hidden = _base_forward(base, inputs)
    rows = hidden.reshape(-1, hidden.shape[-1])[packed.index]
    return _reduce(_head_logps(model, rows, packed.targets), packed.mask)


def pair_logps(model, batch: PairBatch, *, shared_vision: bool = True, shared_prefix: bool = True,
               full_logits: bool = False) -> tuple[LogpResult, LogpResult]:
    """(chosen, rejected) completion log-probs of a PairBatch.

    With `shared_prefix` and `shared_vision` (both default) and a family whose registry entry has both
    (sdpa or eager attention), each pair is one packed row: image + prompt once, both
    completions after it (so the vision encoder also runs once per pair). Otherwise, with `shared_vision` and a
    family with `shared_vision`, the vision encoder runs once per pair and the 2B rows run in full; with
    `shared_vision=False` each image is encoded twice in one plain forward (the reference for both levers).
    `full_logits=True` runs the model's own forward (full [rows, T, vocab] logits, its own logit post-processing)
    instead of the completion-only head, on whichever of these paths applies: slower and larger, for a family
    whose head post-processing `logit_postprocess` does not know.
    """
    b = batch.n_pairs
    vision = batch.vision_inputs()
    on = shared_prefix and shared_vision
    problem = shared_prefix_problem(model, batch) if on else "off"
    if problem is not None and on:
        key = f"prefix:{model_type_of(model)}:{problem}"
        if key not in _warned:
            _warned.add(key)
            if problem.startswith("family"):  # by design (registry): said once in the log, not as a warning
                log.info("%s: not sharing the prompt prefix (%s); chosen and rejected run as separate rows",
                         model_type_of(model), problem)
            else:
                warnings.warn(f"{model_type_of(model)}: not sharing the prompt prefix ({problem}); chosen and "
                              f"rejected run as separate rows", stacklevel=2)
    if problem is None:
        res = _shared_prefix_logps(model, batch, full_logits)
    elif shared_vision and vision and supports_shared_vision(model):
        mm = {"image": shared_image_features(model, vision)}
        extra = {k: _repeat2(v) for k, v in vision.items() if not k.startswith("pixel_")}
        if full_logits:
            logits = model(**batch.row_inputs(), **extra, mm_encoder_outputs=mm, use_cache=False).logits
            res = logps_from_logits(logits, batch.labels)
        else:
            base, _ = base_and_head(model)
            hidden = _base_forward(base, batch.row_inputs(), **extra, mm_encoder_outputs=mm)
            res = logps_from_hidden(model, hidden, batch.labels)
    elif full_logits:
        res = logps_from_logits(model(**batch.plain_inputs(), use_cache=False).logits, batch.labels)
    else:
        res = completion_logps(model, batch.plain_inputs(), batch.labels)
    return res.rows(0, b), res.rows(b, 2 * b)


@torch.no_grad()
def pair_parity(model, batch: PairBatch) -> float:
    """Max |default path (shared prefix / shared vision where supported) - plain| over per-token log-probs."""
    c1, r1 = pair_logps(model, batch, shared_vision=True, shared_prefix=True)
    c2, r2 = pair_logps(model, batch, shared_vision=False, shared_prefix=False)
    pairs = list(zip(c1.per_token + r1.per_token, c2.per_token + r2.per_token))
    return max((a - r).abs().max().item() if a.numel() else 0.0 for a, r in pairs)

