"""Tests for vlm_dpo.train.logps on tiny random Idefics3, Qwen2-VL and LLaVA models (and a hand-fed PaliGemma 2).

Reference everywhere: the plain forward `model(**inputs).logits` -> log_softmax -> gather on the shifted labels.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.tiny_models import tiny_idefics3, tiny_llava  # noqa: E402
from vlm_dpo import families  # noqa: E402
from vlm_dpo.train import logps as L  # noqa: E402
from vlm_dpo.train import pair_logps as P  # noqa: E402
from vlm_dpo.train.collate import IGNORE, ExampleTooLongError, encode  # noqa: E402

ATOL = 1e-5

PROMPTS = ["Describe the image.", "How many cubes are there?", "What objects are in the scene? Answer briefly."]
CHOSEN = ["a red cube sits left of a blue ball", "three", "a cone and a sphere"]
REJECTED = ["a dog", "There are two cubes and a ball near the wall", "the sky is clear"]


def _images(seed: int = 0) -> list[Image.Image]:
    """Different sizes on purpose: Qwen2-VL gets 4, 3 and 3 image tokens; Idefics3 pads non-square images."""
    rng = np.random.default_rng(seed)
    shapes = [(32, 32), (48, 16), (16, 48)]  # (height, width)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def _full(model, inputs: dict, labels: torch.Tensor) -> L.LogpResult:
    with torch.no_grad():
        return L.logps_from_logits(model(**inputs).logits, labels)


def _close(a: L.LogpResult, b: L.LogpResult, atol: float = ATOL) -> None:
    torch.testing.assert_close(a.sum, b.sum, atol=atol, rtol=0)
    torch.testing.assert_close(a.mean, b.mean, atol=atol, rtol=0)
    assert torch.equal(a.n_tokens, b.n_tokens)
    assert len(a.per_token) == len(b.per_token)
    for x, y in zip(a.per_token, b.per_token):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


def _vision_module(model, family: str):
    name = {"idefics3": "vision_model", "smolvlm": "vision_model", "qwen2_vl": "visual", "qwen2_5_vl": "visual",
            "llava": "vision_tower"}[family]
    return getattr(model.model, name)


def _images_in_call(family: str, args, kwargs) -> int:
    if family in ("qwen2_vl", "qwen2_5_vl"):  # flat patches; one grid row per image
        return int(kwargs["grid_thw"].shape[0])
    pixels = kwargs.get("pixel_values", args[0] if args else None)
    return int(pixels.shape[0])


class VisionCalls:
    """Counts forward calls of a family's vision tower and the images each call encodes."""

    def __init__(self, model, family: str):
        self.family, self.calls = family, []
        self.handle = _vision_module(model, family).register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append(_images_in_call(self.family, args, kwargs))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _enc(processor, model, completions, images=None, **kw):
    images = images or _images()
    return encode(processor, images, PROMPTS, completions, model_type=model.config.model_type, **kw)


def _pairs(processor, model, **kw):
    return L.encode_pairs(processor, _images(), PROMPTS, CHOSEN, REJECTED, model_type=model.config.model_type, **kw)


# ---------------------------------------------------------------------------------------------------------------
# (a) completion_logps == full logits, head only on completion rows


def test_completion_logps_matches_full_logits(built):
    family, model, processor = built
    enc = _enc(processor, model, CHOSEN)
    head = model.get_output_embeddings()
    rows_seen = []
    handle = head.register_forward_pre_hook(lambda mod, args: rows_seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            ours = L.completion_logps(model, enc.inputs, enc.labels)
    finally:
        handle.remove()
    ref = _full(model, enc.inputs, enc.labels)
    _close(ours, ref)
    # counts and per-token lengths are the completion lengths; the head saw exactly those rows, 2-D (no seq axis)
    assert ours.n_tokens.tolist() == enc.completion_lengths.tolist()
    assert [len(p) for p in ours.per_token] == enc.completion_lengths.tolist()
    assert rows_seen == [(int(enc.completion_lengths.sum()), model.get_output_embeddings().in_features)]
    torch.testing.assert_close(ours.mean, ours.sum / ours.n_tokens, atol=1e-6, rtol=0)
    assert L.head_parity(model, enc.inputs, enc.labels) < ATOL


def test_image_matters(built):
    """Sanity for the parity tests below: the image does move the completion log-probs."""
    family, model, processor = built
    a = _enc(processor, model, CHOSEN)
    b = _enc(processor, model, CHOSEN, images=_images(seed=1))
    with torch.no_grad():
        da = L.completion_logps(model, a.inputs, a.labels).sum
        db = L.completion_logps(model, b.inputs, b.labels).sum
    assert (da - db).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------------------------
# (b) pair_logps == chosen and rejected encoded as separate rows through the plain forward


@pytest.mark.parametrize("shared", [True, False])
def test_pair_logps_matches_separate_rows(built, shared):
    family, model, processor = built
    batch = _pairs(processor, model)
    with torch.no_grad():
        chosen, rejected = P.pair_logps(model, batch, shared_vision=shared)
    c = _enc(processor, model, CHOSEN)
    r = _enc(processor, model, REJECTED)
    _close(chosen, _full(model, c.inputs, c.labels))
    _close(rejected, _full(model, r.inputs, r.labels))


def test_pair_gradients_match_plain_path(built):
    """The repeated image features are the same tensors: vision gradients accumulate from both rows."""
    family, model, processor = built
    batch = _pairs(processor, model)
    vision = _vision_module(model, family)
    grads = []
    for shared in (True, False):
        model.zero_grad(set_to_none=True)
        chosen, rejected = P.pair_logps(model, batch, shared_vision=shared)
        (chosen.sum - 0.5 * rejected.mean).sum().backward()
        grads.append({n: p.grad.clone() for n, p in vision.named_parameters() if p.grad is not None})
    model.zero_grad(set_to_none=True)
    assert grads[0] and grads[0].keys() == grads[1].keys()
    assert any(g.abs().max() > 0 for g in grads[0].values())
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# (c) one vision pass per pair


def test_vision_runs_once_per_pair(built):
    family, model, processor = built
    batch = _pairs(processor, model)
    assert L.supports_shared_vision(model)
    with VisionCalls(model, family) as shared, torch.no_grad():
        P.pair_logps(model, batch)
    with VisionCalls(model, family) as plain, torch.no_grad():
        P.pair_logps(model, batch, shared_vision=False)
    assert shared.calls == [batch.n_pairs]
    assert plain.calls == [2 * batch.n_pairs]


def test_unknown_family_falls_back_to_plain(monkeypatch):
    model, processor = tiny_llava()
    batch = _pairs(processor, model)
    with torch.no_grad():
        shared = P.pair_logps(model, batch)
    monkeypatch.setitem(families.FAMILIES, "llava", replace(families.FAMILIES["llava"], shared_vision=False))
    assert not L.supports_shared_vision(model)
    with VisionCalls(model, "llava") as calls, torch.no_grad():
        fallback = P.pair_logps(model, batch)
    assert calls.calls == [2 * batch.n_pairs]
    _close(fallback[0], shared[0])
    _close(fallback[1], shared[1])


# ---------------------------------------------------------------------------------------------------------------
# (d) only completion tokens count


def test_masked_positions_contribute_nothing(built):
    family, model, processor = built
    enc = _enc(processor, model, CHOSEN)
    inputs, labels = enc.inputs, enc.labels
    with torch.no_grad():
        base = L.completion_logps(model, inputs, labels)

    # padding: rewrite the ids under attention_mask == 0 -> nothing changes
    pad = inputs["attention_mask"] == 0
    assert pad.any()
    ids = inputs["input_ids"].clone()
    ids[pad] = processor.tokenizer.convert_tokens_to_ids("a")
    with torch.no_grad():
        repadded = L.completion_logps(model, {**inputs, "input_ids": ids}, labels)
    _close(repadded, base)

    # masking one completion token removes exactly its log-prob
    p0 = int(enc.prompt_lengths[0])
    masked = labels.clone()
    masked[0, p0] = IGNORE
    with torch.no_grad():
        less = L.completion_logps(model, inputs, masked)
    assert less.n_tokens.tolist() == [base.n_tokens[0] - 1, *base.n_tokens[1:].tolist()]
    torch.testing.assert_close(less.sum[0], base.sum[0] - base.per_token[0][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(less.sum[1:], base.sum[1:], atol=ATOL, rtol=0)

    # un-masking a prompt token (its own id as label) adds exactly that token, as the full logits say
    t = p0 - 1
    unmasked = labels.clone()
    unmasked[0, t] = inputs["input_ids"][0, t]
    with torch.no_grad():
        more = L.completion_logps(model, inputs, unmasked)
        full = model(**inputs).logits[0, t - 1].float().log_softmax(-1)[inputs["input_ids"][0, t]]
    assert int(more.n_tokens[0]) == int(base.n_tokens[0]) + 1
    torch.testing.assert_close(more.sum[0], base.sum[0] + full, atol=ATOL, rtol=0)
    torch.testing.assert_close(more.per_token[0][0], full, atol=ATOL, rtol=0)

    # image tokens and the rest of the prompt are IGNORE in labels
    image_id = getattr(model.config, "image_token_id", None) or model.config.image_token_index
    assert (labels[inputs["input_ids"] == image_id] == IGNORE).all()


# ---------------------------------------------------------------------------------------------------------------
# encode_pairs layout and errors


def test_encode_pairs_layout(built):
    family, model, processor = built
    batch = _pairs(processor, model, max_length=0)
    b = batch.n_pairs
    ids, am, labels = batch.inputs["input_ids"], batch.inputs["attention_mask"], batch.labels
    assert b == 3 and ids.shape[0] == labels.shape[0] == 2 * b
    c = _enc(processor, model, CHOSEN)
    r = _enc(processor, model, REJECTED)
    for i in range(b):
        for half, ref in ((0, c), (b, r)):
            n = int(ref.inputs["attention_mask"][i].sum())
            row = half + i
            assert ids[row, :n].tolist() == ref.inputs["input_ids"][i, :n].tolist()
            assert labels[row, :n].tolist() == ref.labels[i, :n].tolist()
            assert int(am[row].sum()) == n and (labels[row, n:] == IGNORE).all()
            for k in batch.row_keys:
                assert batch.inputs[k][row, :n].tolist() == ref.inputs[k][i, :n].tolist(), k
        assert int(batch.prompt_lengths[i]) == int(batch.prompt_lengths[b + i]) == int(c.prompt_lengths[i])
    assert batch.completion_lengths.tolist() == c.completion_lengths.tolist() + r.completion_lengths.tolist()
    # vision tensors are stored once, and plain_inputs repeats them
    for k, v in batch.vision_inputs().items():
        torch.testing.assert_close(v, c.inputs[k])
        assert batch.plain_inputs()[k].shape[0] == 2 * v.shape[0]


def test_encode_pairs_truncates_each_completion(built):
    family, model, processor = built
    full = _pairs(processor, model)
    max_length = int(full.prompt_lengths.max()) + 3
    batch = _pairs(processor, model, max_length=max_length)
    assert ((batch.prompt_lengths + batch.completion_lengths) <= max_length).all()
    assert batch.inputs["input_ids"].shape[1] <= max_length
    assert (batch.completion_lengths < full.completion_lengths).any()  # something was cut
    room = max_length - full.prompt_lengths
    assert batch.completion_lengths.tolist() == torch.minimum(full.completion_lengths, room).tolist()
    with torch.no_grad():
        chosen, rejected = P.pair_logps(model, batch)
    assert chosen.n_tokens.tolist() == batch.completion_lengths[:3].tolist()
    assert rejected.n_tokens.tolist() == batch.completion_lengths[3:].tolist()


def test_encode_pairs_prompt_too_long_names_the_pair():
    model, processor = tiny_idefics3()
    with pytest.raises(ExampleTooLongError, match="pair-B"):
        L.encode_pairs(processor, _images()[:2], PROMPTS[:2], CHOSEN[:2], REJECTED[:2], max_length=5,
                       names=["pair-B", "pair-C"])
    with pytest.raises(ExampleTooLongError, match="pair 0"):
        L.encode_pairs(processor, _images()[:1], PROMPTS[:1], CHOSEN[:1], REJECTED[:1], max_length=5)
    with pytest.raises(ValueError, match="must match"):
        L.encode_pairs(processor, _images()[:1], PROMPTS[:2], CHOSEN[:2], REJECTED[:2])


# ---------------------------------------------------------------------------------------------------------------
# wrappers and logit post-processing


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_peft_wrapped_model_matches_full_forward():
    peft = pytest.importorskip("peft")
    model, processor = tiny_llava.__wrapped__(0)  # fresh copy: LoRA is injected in place
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
    lora.eval()
    batch = L.encode_pairs(processor, _images(), PROMPTS, CHOSEN, REJECTED, model_type="llava")
    with torch.no_grad():
        chosen, rejected = P.pair_logps(lora, batch)
        ref = L.logps_from_logits(lora(**batch.plain_inputs()).logits, batch.labels)
        base_only = P.pair_logps(tiny_llava()[0], batch)[0]
    _close(chosen, ref.rows(0, 3))
    _close(rejected, ref.rows(3, 6))
    assert (chosen.sum - base_only.sum).abs().max() > 1e-5  # LoRA (non-zero init) was applied


def _tiny_paligemma2(softcap: float):
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8),
        text_config=dict(model_type="gemma2", vocab_size=100, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         final_logit_softcapping=softcap, max_position_embeddings=64, pad_token_id=0),
        image_token_index=99, projection_dim=32,
    )
    torch.manual_seed(0)
    return PaliGemmaForConditionalGeneration(config).eval()


def _paligemma_pairs():
    """Hand-built PairBatch: 4 image tokens, a prefix (token_type 0) and a suffix completion (token_type 1)."""
    image = [99] * 4
    rows = [image + [2, 5, 6, 7, 8, 9, 10], image + [2, 5, 6, 11, 12, 13, 14, 15],
            image + [2, 5, 6, 20, 21], image + [2, 5, 6, 22, 23, 24, 25, 26]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    am = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    tt = torch.zeros_like(ids)
    tt[:, 7:] = 1
    labels = torch.where((tt == 1) & (am == 1), ids, torch.full_like(ids, IGNORE))
    torch.manual_seed(1)
    return L.PairBatch(
        inputs={"input_ids": ids, "attention_mask": am, "token_type_ids": tt,
                "pixel_values": torch.randn(2, 3, 16, 16)},
        labels=labels, prompt_lengths=torch.full((4,), 7), completion_lengths=(labels != IGNORE).sum(1), n_pairs=2,
        row_keys=("input_ids", "attention_mask", "token_type_ids"),
    )


def test_softcapping_family_matches_full_forward(monkeypatch):
    model = _tiny_paligemma2(softcap=0.05)  # random logits are ~0.1: a cap of 0.05 bites hard
    batch = _paligemma_pairs()
    inputs = batch.plain_inputs()
    assert L.logit_postprocess(model) is not None
    assert L.head_parity(model, inputs, batch.labels) < ATOL
    assert P.pair_parity(model, batch) < ATOL
    with torch.no_grad():
        chosen, rejected = P.pair_logps(model, batch)
    ref = _full(model, inputs, batch.labels)
    _close(chosen, ref.rows(0, 2))
    _close(rejected, ref.rows(2, 4))
    # without the soft-cap the head would silently diverge: this is what the parity check catches
    monkeypatch.setitem(families.FAMILIES, "paligemma",
                        replace(families.FAMILIES["paligemma"], softcap_in_forward=False))
    assert L.head_parity(model, inputs, batch.labels) > 1e-3


def test_logit_postprocess_rules(monkeypatch):
    from types import SimpleNamespace

    class Cfg(SimpleNamespace):
        def get_text_config(self):
            return self.text

    def fake(model_type, **text):
        return SimpleNamespace(config=Cfg(model_type=model_type, text=SimpleNamespace(**text)))

    x = torch.tensor([-3.0, 0.5, 4.0])
    assert L.logit_postprocess(fake("llava")) is None
    torch.testing.assert_close(L.logit_postprocess(fake("granite_docling", logits_scaling=4.0))(x), x / 4)
    torch.testing.assert_close(L.logit_postprocess(fake("hyperclovax_vision_v2", logits_scaling=2.0))(x), x * 2)
    torch.testing.assert_close(L.logit_postprocess(fake("paligemma", final_logit_softcapping=2.0))(x),
                               2 * torch.tanh(x / 2))
    assert L.logit_postprocess(fake("gemma3", final_logit_softcapping=2.0)) is None
    monkeypatch.setattr(L, "_warned", set())
    with pytest.warns(UserWarning, match="logit_scale"):
        assert L.logit_postprocess(fake("some_new_vlm", logit_scale=0.5)) is None
