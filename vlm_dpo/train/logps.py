"""Completion log-probabilities for DPO: the LM head only where it is needed, one vision pass and one prefix per pair.

Completion log-probs (`completion_logps`)
-----------------------------------------
A full forward of an image-text-to-text model materialises `[batch, seq, vocab]` logits although DPO only needs
the log-prob of each completion token. We instead run the model's *base* (`model.model`: vision encoder +
projector + language model, no head), which returns the last hidden states `[B, T, D]`, keep the rows at the
positions t whose next label `labels[t+1]` is a completion token (labels != -100; prompt, image and padding
positions are -100 and so never reach the head), apply the output embedding (`get_output_embeddings()`, the
`lm_head`) to those N rows only (`[N, vocab]`), log-softmax in float32 and gather the target ids. Every extra input
the processor produced (pixel_values, pixel_attention_mask, image_grid_thw, mm_token_type_ids, token_type_ids,
image_sizes ...) is passed to the base unchanged, exactly as the model's own forward would.

What the model's forward does to logits after `lm_head` is mirrored by `logit_postprocess` (see `LOGIT_RULES`):
tanh soft-capping when the text config sets `final_logit_softcapping` (PaliGemma 2, Gemma 3n, Gemma 4; the
Gemma 3 VLM forward does not cap, so neither do we), division by `logits_scaling` (Granite vision / docling),
multiplication by `logits_scaling` (HyperCLOVA X vision) or `logit_scale` (Cohere Compass). A family whose
text config carries a scaling field we do not know gets a one-time warning; `head_parity(model, inputs, labels)`
measures the difference against the plain full-logits forward and is what the tests use.

PEFT and DDP wrappers are unwrapped (`get_base_model()`, `.module`); LoRA layers live inside the modules, so
calling the base directly still applies them. A model without a separate base (no `model.model`) falls back to
the full forward, with a warning.

Shared vision pass for a pair (`encode_pairs`, `pair_logps`)
-----------------------------------------------------------
Chosen and rejected share the image and the prompt. `encode_pairs` encodes the batch once with the chosen
completions (the processor, hence image preprocessing, runs once), then builds the rejected rows by reusing each
prompt's ids and per-token fields and appending the rejected completion. The result (`PairBatch`) has 2B rows in
the order [chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}] for the per-token tensors (input_ids,
attention_mask, labels, mm_token_type_ids, token_type_ids ...), but the vision tensors (pixel_values,
pixel_attention_mask, image_grid_thw, image_sizes ...) for the B images only.

`pair_logps` then, for a family in `SHARED_VISION_FAMILIES`:
  1. calls the base's own `get_image_features(...)` once on the B images, passing the vision tensors that are
     named parameters of that method (Idefics3/SmolVLM: pixel_values, pixel_attention_mask; Qwen2-VL/2.5-VL:
     pixel_values, image_grid_thw; LLaVA: pixel_values, image_sizes; the feature layer/strategy come from the
     config). Its `pooler_output` holds the projected image embeddings, per image (a list) or stacked (a tensor);
  2. repeats them for the second half of the batch (list + list, or cat along dim 0: the same tensors, not a
     copy, so gradients from both rows accumulate into one vision graph);
  3. runs the base on the 2B rows with `input_ids` (no pixel_values) and `mm_encoder_outputs={"image": ...}`
     - the transformers 5 entry point for precomputed encoder outputs - so the model scatters the embeddings
     into `inputs_embeds` at its image-token positions itself, for chosen and rejected rows alike. The non-pixel
     vision tensors are passed too, repeated for 2B rows: Qwen2-VL/2.5-VL need `image_grid_thw` (with
     `input_ids` and `mm_token_type_ids`) to build their 3-D M-RoPE position ids, which the model's forward does
     with its own `get_rope_index`, exactly as in the plain forward;
  4. gathers completion log-probs as above and splits the rows back into (chosen, rejected).

Every other family, or `shared_vision=False`, takes the plain path: the vision tensors are repeated for 2B rows
(`PairBatch.plain_inputs()`, concatenation along dim 0, valid for every layout we know: [B, ...] images,
[B, N, ...] image lists, Qwen's flat [patches, D] with [B, 3] grids) and one ordinary base forward runs, encoding
each image twice.

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
    for Qwen2-VL / 2.5-VL (`MROPE_FAMILIES`) the 3-D M-RoPE ids that the model's own `get_rope_index` builds for
    the plain 2B rows, gathered at the same (row, column) as the tokens;
  * the vision tensors of the B images passed as they are: each packed row holds its image tokens once, so the
    vision encoder also runs once per pair (the model scatters the features itself, as in a plain forward).
The completion targets keep their 2B-row order: the hidden state predicting a target is the packed position of the
token before it - for a rejected completion's first token, the prefix's last token (shared with the chosen
branch); for later rejected tokens, column t of the rejected row lives at n_c + (t - p_i) in the packed row. The
head then runs on those N rows only, as above. It is one ordinary forward of the model's base, so autograd is the
model's own: the prefix activations receive the gradients of both branches (summed, as in the plain path),
gradient checkpointing works unchanged, and log-probs and gradients equal the plain path's to float32 rounding
(tests/train/test_shared_prefix.py: per-token log-probs within 1e-5, parameter gradients within 1e-5 relative).
The text model sees B*P + 2B*C real tokens instead of 2B*(P + C) (plus padding to the longest packed row).

Why a packed row and not a KV cache of the prefix: the cache route (prefix rows with `use_cache=True`, then the
2B completion rows with `past_key_values` repeated per branch) needs two forwards, a cache kept in the autograd
graph, its own causal-mask/position bookkeeping per family, and does not combine with gradient checkpointing
(transformers turns `use_cache` off under it); the packed row is one ordinary forward whose only changes are the
mask and the positions. Attention over a packed row costs (P + 2C)^2 instead of 2 (P + C)^2 score entries, smaller.

When it applies (`shared_prefix_problem(model, batch)` says why not; the fallback is the shared-vision path above):
  * `shared_prefix` and `shared_vision` are on (`shared_vision=False` stays the fully plain reference path);
  * the family is in SHARED_PREFIX_FAMILIES (a causal text decoder that takes a custom 4-D mask and explicit
    positions straight through; tested: idefics3, llava, qwen2_vl) and in SHARED_VISION_FAMILIES. PaliGemma and
    Gemma 3 are not: they attend bidirectionally over the image / prefix, which a causal block mask would change.
    An unlisted family falls back silently;
  * the text model's attention implementation is sdpa or eager (flash-attention kernels take no 4-D mask and
    flex attention wants a BlockMask: those fall back, with a one-time warning), its layer types are full or
    sliding attention, and no row is longer than a sliding window (within it, the window masks nothing);
  * the batch is right-padded and each pair's two rows are equal on the prompt (what `encode_pairs` builds);
    otherwise a one-time warning and the fallback.

Sums: `_reduce` accumulates each row's log-probs in float64 and rounds once, so paths whose per-token log-probs
agree to ~1e-6 give sums that agree to about one float32 ulp.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field, replace

import torch

from .collate import IGNORE, ExampleTooLongError, completion_ids, encode  # noqa: F401  (re-exported error)

# Families whose base forward takes `mm_encoder_outputs={"image": <get_image_features output>}` and only reads its
# `pooler_output` (per-image list, or a tensor stacked over images), so the features can be computed once and
# repeated. Tested (tests/train/test_logps.py): idefics3, qwen2_vl, llava, paligemma (Gemma 2 text, soft-capped).
# The others follow the same code path in transformers 5.24 (read, not tested): check once with `pair_parity`.
SHARED_VISION_FAMILIES = frozenset({
    "idefics3", "smolvlm", "idefics2",
    "qwen2_vl", "qwen2_5_vl",
    "llava", "llava_next", "mistral3",
    "paligemma", "gemma3",
})

# What each family's forward does to `lm_head` output: (kind, config field on the text config).
# kind: "softcap" -> cap * tanh(x / cap); "div" -> x / v; "mul" -> x * v.
LOGIT_RULES = {
    "granite_docling": ("div", "logits_scaling"),
    "granite4_vision": ("div", "logits_scaling"),
    "hyperclovax_vision_v2": ("mul", "logits_scaling"),
    "cohere_compass": ("mul", "logit_scale"),
}
NO_SOFTCAP_FAMILIES = frozenset({"gemma3"})  # Gemma3ForConditionalGeneration does not apply final_logit_softcapping
# Families whose base takes a custom 4-D attention mask and explicit 1-D `position_ids` straight through to a plain
# causal text decoder (no bidirectional image/prefix attention), so a pair can be packed as one row
# [prefix, chosen, rejected] (see `pack_pairs`). Tested: idefics3, llava, qwen2_vl (tests/train/test_shared_prefix.py).
# smolvlm, idefics2, llava_next, mistral3, qwen2_5_vl use the same forward code (read, not tested): check once with
# `pair_parity`. Not here, and why: paligemma and gemma3 (bidirectional attention over the image / prefix, which a
# causal block mask would change), and anything not read.
SHARED_PREFIX_FAMILIES = frozenset({"idefics3", "smolvlm", "idefics2", "llava", "llava_next", "mistral3",
                                    "qwen2_vl", "qwen2_5_vl"})
# Families with 3-D M-RoPE positions: the packed rows take the plain rows' `get_rope_index` ids, gathered.
MROPE_FAMILIES = frozenset({"qwen2_vl", "qwen2_5_vl"})
PREFIX_ATTN_IMPLEMENTATIONS = frozenset({"sdpa", "eager"})
_SCALING_FIELDS = ("logits_scaling", "logit_scale")
_warned: set[str] = set()


@dataclass
class LogpResult:
    """Per-sequence completion log-probs. `per_token[i]` holds row i's completion-token log-probs in order."""
    sum: torch.Tensor  # [B] float32
    mean: torch.Tensor  # [B] sum / n_tokens (0 where a row has no completion token)
    n_tokens: torch.Tensor  # [B] long
    per_token: list[torch.Tensor] | None = None

    def rows(self, start: int, stop: int) -> "LogpResult":
        per = self.per_token[start:stop] if self.per_token is not None else None
        return LogpResult(self.sum[start:stop], self.mean[start:stop], self.n_tokens[start:stop], per)

    def detach(self) -> "LogpResult":
        per = [p.detach() for p in self.per_token] if self.per_token is not None else None
        return LogpResult(self.sum.detach(), self.mean.detach(), self.n_tokens, per)


@dataclass
class PairBatch:
    """2B sequence rows [chosen..., rejected...] sharing B images.

    `inputs` holds the per-token tensors for 2B rows (keys in `row_keys`) and the vision tensors for the B images
    once (every other key). `labels` is [2B, T] with IGNORE outside completions.
    """
    inputs: dict
    labels: torch.Tensor
    prompt_lengths: torch.Tensor  # [2B]
    completion_lengths: torch.Tensor  # [2B]
    n_pairs: int
    row_keys: tuple[str, ...] = field(default=("input_ids", "attention_mask"))
    pad_token_id: int | None = None  # what encode_pairs padded input_ids with (None: unknown)

    def row_inputs(self) -> dict:
        return {k: self.inputs[k] for k in self.row_keys}

    def vision_inputs(self) -> dict:
        return {k: v for k, v in self.inputs.items() if k not in self.row_keys}

    def plain_inputs(self) -> dict:
        """Model inputs for an ordinary forward over the 2B rows: each image repeated for its rejected row."""
        return {**self.row_inputs(), **{k: _repeat2(v) for k, v in self.vision_inputs().items()}}

    def to(self, device) -> "PairBatch":
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.inputs.items()}
        return replace(self, inputs=moved, labels=self.labels.to(device))


def _repeat2(v):
    if torch.is_tensor(v):
        return torch.cat([v, v], dim=0)
    if isinstance(v, (list, tuple)):
        return type(v)(list(v) + list(v))
    return v


# ----------------------------------------------------------------------------------------------------------------
# Model plumbing


def unwrap_model(model):
    """The transformers model under DDP (`.module`) and PEFT (`get_base_model()`) wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            inner = model.get_base_model()
            if inner is not model:
                model = inner
                continue
        if isinstance(model, torch.nn.parallel.DistributedDataParallel) or (
                type(model).__name__ in ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel")
                and hasattr(model, "module")):
            model = model.module
            continue
        break
    return model


def base_and_head(model):
    """(base model returning hidden states, output embedding) of an image-text-to-text model, or (None, None)."""
    m = unwrap_model(model)
    base = getattr(m, "model", None)
    head = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
    if not isinstance(base, torch.nn.Module) or head is None:
        return None, None
    return base, head


def family_of(model) -> str:
    """The model's `config.model_type` (through PEFT/DDP wrappers)."""
    return getattr(getattr(unwrap_model(model), "config", None), "model_type", "") or ""


def logit_postprocess(model):
    """The function the family's forward applies to `lm_head` output, or None (see module docstring)."""
    m = unwrap_model(model)
    cfg = m.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    mt = cfg.model_type
    fns = []
    cap = getattr(text, "final_logit_softcapping", None)
    if cap and mt not in NO_SOFTCAP_FAMILIES:
        fns.append(lambda x, c=float(cap): torch.tanh(x / c) * c)
    if mt in LOGIT_RULES:
        kind, name = LOGIT_RULES[mt]
        v = getattr(text, name, None) or getattr(cfg, name, None)
        if v is not None and float(v) != 1.0:
            fns.append((lambda x, s=float(v): x / s) if kind == "div" else (lambda x, s=float(v): x * s))
    else:
        for name in _SCALING_FIELDS:
            v = getattr(text, name, None)
            if isinstance(v, (int, float)) and float(v) != 1.0 and mt not in _warned:
                _warned.add(mt)
                warnings.warn(f"{mt}: text config sets {name}={v}, which vlm_dpo.train.logps does not know how the "
                              f"forward applies; completion log-probs may differ from model(...).logits. "
                              f"Check with head_parity(model, inputs, labels).", stacklevel=3)
    if not fns:
        return None
    if len(fns) == 1:
        return fns[0]
    return lambda x: fns[1](fns[0](x))


def _last_hidden(out) -> torch.Tensor:
    h = getattr(out, "last_hidden_state", None)
    return h if h is not None else out[0]


def _base_forward(base, inputs: dict, **extra) -> torch.Tensor:
    return _last_hidden(base(**inputs, **extra, use_cache=False))


def _targets(labels: torch.Tensor):
    """mask [B, T-1] of positions whose next token is a completion token, and those targets [N]."""
    nxt = labels[:, 1:]
    mask = nxt != IGNORE
    return mask, nxt[mask]


def _reduce(token_logps: torch.Tensor, mask: torch.Tensor) -> LogpResult:
    b = mask.shape[0]
    counts = mask.sum(1)
    rows = mask.nonzero(as_tuple=True)[0]
    # accumulate in float64: a row sum of fp32 terms then rounds once, so two paths whose per-token log-probs agree
    # to ~1e-6 give sums that agree to about an ulp, not to the ulps that sequential fp32 rounding adds up
    acc = torch.float64 if token_logps.device.type != "mps" else token_logps.dtype
    sums = torch.zeros(b, dtype=acc, device=token_logps.device).index_add(0, rows, token_logps.to(acc))
    mean = (sums / counts.clamp(min=1).to(acc)).to(token_logps.dtype)
    sums = sums.to(token_logps.dtype)
    per_token = list(token_logps.split(counts.tolist()))
    return LogpResult(sums, mean, counts, per_token)


def _head_logps(model, rows: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """log p(tgt[n] | rows[n]) for hidden rows [N, D]: the head, the family's logit post-processing, fp32."""
    _, head = base_and_head(model)
    logits = head(rows)
    post = logit_postprocess(model)
    if post is not None:
        logits = post(logits)
    return logits.float().log_softmax(-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)


def logps_from_hidden(model, hidden: torch.Tensor, labels: torch.Tensor) -> LogpResult:
    """Completion log-probs from last hidden states [B, T, D]: the head runs on the N completion rows only."""
    mask, tgt = _targets(labels)
    rows = hidden[:, :-1][mask]  # [N, D]
    return _reduce(_head_logps(model, rows, tgt), mask)


def logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> LogpResult:
    """The same reduction from full [B, T, V] logits (the reference and the no-base fallback)."""
    mask, tgt = _targets(labels)
    lp = logits[:, :-1][mask].float().log_softmax(-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return _reduce(lp, mask)


def completion_logps(model, inputs: dict, labels: torch.Tensor) -> LogpResult:
    """Sum / mean / count of completion-token log-probs per row; labels are IGNORE outside completions."""
    base, _ = base_and_head(model)
    if base is None:
        key = f"nobase:{type(unwrap_model(model)).__name__}"
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"{key[7:]} has no `.model` base / output embeddings: computing full logits", stacklevel=2)
        return logps_from_logits(model(**inputs, use_cache=False).logits, labels)
    return logps_from_hidden(model, _base_forward(base, inputs), labels)


# ----------------------------------------------------------------------------------------------------------------
# Pairs


def encode_pairs(processor, images: list, prompts: list[str], chosen: list[str], rejected: list[str], *,
                 max_length: int = 0, names: list[str] | None = None, model_type: str = "") -> PairBatch:
    """Encode B preference pairs as 2B rows [chosen..., rejected...] that share B images (processor runs once).

    Prompts are never truncated (a prompt that leaves no room raises ExampleTooLongError naming the pair);
    each completion is cut to `max_length` separately.
    """
    n = len(prompts)
    if not (len(images) == len(chosen) == len(rejected) == n):
        raise ValueError(f"encode_pairs: {len(images)} images, {n} prompts, {len(chosen)} chosen, "
                         f"{len(rejected)} rejected; all must match")
    names = list(names) if names is not None else [f"pair {i}" for i in range(n)]
    enc = encode(processor, images, prompts, chosen, max_length=max_length, names=names, model_type=model_type)
    ids = enc.inputs["input_ids"]
    row_keys = tuple(k for k, v in enc.inputs.items() if torch.is_tensor(v) and v.shape == ids.shape)
    tok = processor.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    plens = enc.prompt_lengths.tolist()
    rej_rows = {k: [] for k in row_keys}
    rej_labels, rej_clens = [], []
    for i in range(n):
        p = plens[i]
        c_ids = completion_ids(tok, rejected[i])
        if max_length:
            c_ids = c_ids[:max_length - p]
        for k in row_keys:
            prompt_part = enc.inputs[k][i, :p].tolist()
            if k == "input_ids":
                rej_rows[k].append(prompt_part + c_ids)
            elif k == "attention_mask":
                rej_rows[k].append(prompt_part + [1] * len(c_ids))
            else:  # per-token fields take, on completion tokens, the value encode() gave the chosen completion
                fill = int(enc.inputs[k][i, p])
                rej_rows[k].append(prompt_part + [fill] * len(c_ids))
        rej_labels.append([IGNORE] * p + c_ids)
        rej_clens.append(len(c_ids))

    width = max(ids.shape[1], max(len(r) for r in rej_labels))

    def pad_to(t: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    def padded(seqs, value, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=like.dtype)

    inputs = {}
    for k, v in enc.inputs.items():
        if k in row_keys:
            value = pad if k == "input_ids" else 0
            inputs[k] = torch.cat([pad_to(v, value), padded(rej_rows[k], value, v)], dim=0)
        else:
            inputs[k] = v
    labels = torch.cat([pad_to(enc.labels, IGNORE), padded(rej_labels, IGNORE, enc.labels)], dim=0)
    return PairBatch(
        inputs=inputs,
        labels=labels,
        prompt_lengths=torch.cat([enc.prompt_lengths, enc.prompt_lengths]),
        completion_lengths=torch.cat([enc.completion_lengths, torch.tensor(rej_clens)]),
        n_pairs=n,
        row_keys=row_keys,
        pad_token_id=int(pad),
    )


def supports_shared_vision(model) -> bool:
    base, _ = base_and_head(model)
    return (base is not None and family_of(model) in SHARED_VISION_FAMILIES
            and hasattr(base, "get_image_features"))


def shared_image_features(model, vision_inputs: dict):
    """`get_image_features` once on the B images, its pooler_output repeated for 2B rows (same tensors)."""
    base, _ = base_and_head(model)
    fn = base.get_image_features
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in vision_inputs.items() if k in params}
    feats = fn(**kwargs, return_dict=True)
    po = feats.pooler_output
    if isinstance(po, (list, tuple)):
        doubled = list(po) + list(po)
    elif torch.is_tensor(po):
        doubled = torch.cat([po, po], dim=0)
    else:
        raise TypeError(f"{family_of(model)}: unexpected image pooler_output {type(po).__name__}")
    out = type(feats)(**{k: v for k, v in feats.items()})
    out["pooler_output"] = doubled
    return out


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
    if fam not in SHARED_PREFIX_FAMILIES:
        return f"family {fam!r} is not in SHARED_PREFIX_FAMILIES"
    if fam not in SHARED_VISION_FAMILIES:  # the packed rows take each image once, as the shared-vision path does
        return f"family {fam!r} is not in SHARED_VISION_FAMILIES"
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


def _shared_prefix_logps(model, batch: PairBatch) -> LogpResult:
    base, _ = base_and_head(model)
    impl = getattr(_text_config(model), "_attn_implementation", None) or "eager"
    positions = mrope_positions(model, batch) if family_of(model) in MROPE_FAMILIES else None
    packed = pack_pairs(batch, positions=positions, float_mask_dtype=None if impl == "sdpa" else base.dtype)
    hidden = _base_forward(base, {**packed.inputs, **batch.vision_inputs()})
    rows = hidden.reshape(-1, hidden.shape[-1])[packed.index]
    return _reduce(_head_logps(model, rows, packed.targets), packed.mask)


def pair_logps(model, batch: PairBatch, *, shared_vision: bool = True,
               shared_prefix: bool = True) -> tuple[LogpResult, LogpResult]:
    """(chosen, rejected) completion log-probs of a PairBatch.

    With `shared_prefix` and `shared_vision` (both default) and a family in SHARED_PREFIX_FAMILIES and
    SHARED_VISION_FAMILIES (sdpa or eager attention), each pair is one packed row: image + prompt once, both
    completions after it (so the vision encoder also runs once per pair). Otherwise, with `shared_vision` and a
    family in SHARED_VISION_FAMILIES, the vision encoder runs once per pair and the 2B rows run in full; with
    `shared_vision=False` each image is encoded twice in one plain forward (the reference for both levers).
    """
    b = batch.n_pairs
    vision = batch.vision_inputs()
    on = shared_prefix and shared_vision
    problem = shared_prefix_problem(model, batch) if on else "off"
    if problem is not None and on and not problem.startswith("family"):
        key = f"prefix:{family_of(model)}:{problem}"
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"{family_of(model)}: not sharing the prompt prefix ({problem}); chosen and rejected run "
                          f"as separate rows", stacklevel=2)
    if problem is None:
        res = _shared_prefix_logps(model, batch)
    elif shared_vision and vision and supports_shared_vision(model):
        base, _ = base_and_head(model)
        mm = {"image": shared_image_features(model, vision)}
        extra = {k: _repeat2(v) for k, v in vision.items() if not k.startswith("pixel_")}
        hidden = _base_forward(base, batch.row_inputs(), **extra, mm_encoder_outputs=mm)
        res = logps_from_hidden(model, hidden, batch.labels)
    else:
        res = completion_logps(model, batch.plain_inputs(), batch.labels)
    return res.rows(0, b), res.rows(b, 2 * b)


# ----------------------------------------------------------------------------------------------------------------
# Checks (cheap enough to run once at the start of training)


@torch.no_grad()
def head_parity(model, inputs: dict, labels: torch.Tensor) -> float:
    """Max |completion_logps - full-logits reference| over per-token log-probs."""
    ours = completion_logps(model, inputs, labels)
    ref = logps_from_logits(model(**inputs, use_cache=False).logits, labels)
    return max((a - r).abs().max().item() if a.numel() else 0.0 for a, r in zip(ours.per_token, ref.per_token))


@torch.no_grad()
def pair_parity(model, batch: PairBatch) -> float:
    """Max |default path (shared prefix / shared vision where supported) - plain| over per-token log-probs."""
    c1, r1 = pair_logps(model, batch, shared_vision=True, shared_prefix=True)
    c2, r2 = pair_logps(model, batch, shared_vision=False, shared_prefix=False)
    pairs = list(zip(c1.per_token + r1.per_token, c2.per_token + r2.per_token))
    return max((a - r).abs().max().item() if a.numel() else 0.0 for a, r in pairs)
