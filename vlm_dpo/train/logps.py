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

What the model's forward does to logits after `lm_head` is mirrored by `logit_postprocess` (the family's
`softcap_in_forward` and `logit_rule` in vlm_dpo/families.py):
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

`pair_logps` (pair_logps.py) then, for a family with `shared_vision` (vlm_dpo/families.py):
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

Sums: `_reduce` accumulates each row's log-probs in float64 and rounds once, so paths whose per-token log-probs
agree to ~1e-6 give sums that agree to about one float32 ulp.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field, replace

import torch

from ..families import family_of, model_type_of, unwrap_model  # noqa: F401  (unwrap_model re-exported)
from .collate import IGNORE, ExampleTooLongError, completion_ids, encode  # noqa: F401  (re-exported error)

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


def base_and_head(model):
    """(base model returning hidden states, output embedding) of an image-text-to-text model, or (None, None)."""
    m = unwrap_model(model)
    base = getattr(m, "model", None)
    head = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
    if not isinstance(base, torch.nn.Module) or head is None:
        return None, None
    return base, head



def logit_postprocess(model):
    """The function the family's forward applies to `lm_head` output, or None (see module docstring)."""
    m = unwrap_model(model)
    cfg = m.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    mt = cfg.model_type
    fam = family_of(m)
    fns = []
    cap = getattr(text, "final_logit_softcapping", None)
    if cap and fam.softcap_in_forward:
        fns.append(lambda x, c=float(cap): torch.tanh(x / c) * c)
    if fam.logit_rule is not None:
        kind, name = fam.logit_rule
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
                 max_length: int = 0, names: list[str] | None = None, model_type: str = "",
                 template_tail: bool = False) -> PairBatch:
    """Encode B preference pairs as 2B rows [chosen..., rejected...] that share B images (processor runs once).

    Prompts are never truncated (a prompt that leaves no room raises ExampleTooLongError naming the pair);
    each completion is cut to `max_length` separately.
    """
    n = len(prompts)
    if not (len(images) == len(chosen) == len(rejected) == n):
        raise ValueError(f"encode_pairs: {len(images)} images, {n} prompts, {len(chosen)} chosen, "
                         f"{len(rejected)} rejected; all must match")
    names = list(names) if names is not None else [f"pair {i}" for i in range(n)]
    enc = encode(processor, images, prompts, chosen, max_length=max_length, names=names, model_type=model_type,
                 template_tail=template_tail)
    ids = enc.inputs["input_ids"]
    row_keys = tuple(k for k, v in enc.inputs.items() if torch.is_tensor(v) and v.shape == ids.shape)
    tok = processor.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    plens = enc.prompt_lengths.tolist()
    rej_rows = {k: [] for k in row_keys}
    rej_labels, rej_clens = [], []
    for i in range(n):
        p = plens[i]
        c_ids = completion_ids(processor, prompts[i], rejected[i], model_type, template_tail=template_tail)
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
    return (base is not None and family_of(model).shared_vision
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
        raise TypeError(f"{model_type_of(model)}: unexpected image pooler_output {type(po).__name__}")
    out = type(feats)(**{k: v for k, v in feats.items()})
    out["pooler_output"] = doubled
    return out


# ----------------------------------------------------------------------------------------------------------------
# Checks (cheap enough to run once at the start of training)


@torch.no_grad()
def head_parity(model, inputs: dict, labels: torch.Tensor) -> float:
    """Max |completion_logps - full-logits reference| over per-token log-probs."""
    ours = completion_logps(model, inputs, labels)
    ref = logps_from_logits(model(**inputs, use_cache=False).logits, labels)
    return max((a - r).abs().max().item() if a.numel() else 0.0 for a, r in zip(ours.per_token, ref.per_token))


