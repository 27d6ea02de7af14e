"""The shared-prefix lever of vlm_dpo.train.logps: one packed row per pair [image + prompt, chosen, rejected].

Reference: the same PairBatch through the plain path (`shared_prefix=False, shared_vision=False`: 2B ordinary rows,
each image encoded twice) and, for log-probs, chosen and rejected encoded as separate batches through the model's
own full-logits forward. Tiny random Idefics3, LLaVA (Llama text) and Qwen2-VL (M-RoPE) models, fp32 on CPU.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.tiny_models import BUILDERS, tiny_idefics3, tiny_llava, tiny_qwen2_vl  # noqa: E402
from tests.train.test_logps import (CHOSEN, PROMPTS, REJECTED, VisionCalls, _full, _images,  # noqa: E402
                                    _paligemma_pairs, _tiny_paligemma2)
from vlm_dpo import families  # noqa: E402
from vlm_dpo.train import logps as L  # noqa: E402
from vlm_dpo.train import pair_logps as P  # noqa: E402
from vlm_dpo.train.collate import IGNORE  # noqa: E402

ATOL = 1e-5
# Prompts of different lengths; the chosen completion is longer than the rejected one in some pairs and shorter
# in others (and one is a single word).
PROMPTS4 = PROMPTS + ["Answer briefly. How many cubes are there? Describe the image."]
CHOSEN4 = CHOSEN + ["two"]
REJECTED4 = REJECTED + ["I see a cone, a cube and a sphere. The ball is blue. It is a photo of a kitchen."]


def _close(a: L.LogpResult, b: L.LogpResult) -> None:
    """Per-token log-probs within 1e-5 absolute. Sums and means within 1e-5 absolute plus 1e-6 relative: a sum of
    ~30 log-probs of size ~6 is ~-200, where one float32 ulp is 1.5e-5, and per-token differences of ~5e-7 (the
    attention reductions run over differently laid-out keys) can move it by an ulp or two."""
    torch.testing.assert_close(a.sum, b.sum, atol=ATOL, rtol=1e-6)
    torch.testing.assert_close(a.mean, b.mean, atol=ATOL, rtol=1e-6)
    assert torch.equal(a.n_tokens, b.n_tokens)
    assert len(a.per_token) == len(b.per_token)
    for x, y in zip(a.per_token, b.per_token):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=ATOL, rtol=0)


def _images4():
    return _images() + _images(seed=2)[:1]


def _pairs(processor, model, **kw):
    return L.encode_pairs(processor, _images4(), PROMPTS4, CHOSEN4, REJECTED4, model_type=model.config.model_type,
                          **kw)


def _plain(model, batch):
    return P.pair_logps(model, batch, shared_vision=False, shared_prefix=False)


def _text_layers(model):
    base = L.unwrap_model(model).model
    text = getattr(base, "text_model", None) or base.language_model
    return text.layers


class TextTokens:
    """Records the [rows, width] hidden-state shape entering the first decoder layer of the text model."""

    def __init__(self, model):
        self.shapes = []
        self.handle = _text_layers(model)[0].register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        self.shapes.append(tuple(h.shape[:2]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ---------------------------------------------------------------------------------------------------------------
# log-probs


def test_batch_has_the_shapes_we_mean(built):
    """Guard for the tests below: prompt lengths differ within the batch, completion lengths too, both ways."""
    family, model, processor = built
    batch = _pairs(processor, model)
    b = batch.n_pairs
    assert len(set(batch.prompt_lengths[:b].tolist())) > 1
    cl = batch.completion_lengths
    assert (cl[:b] > cl[b:]).any() and (cl[:b] < cl[b:]).any()
    assert P.shared_prefix_problem(model, batch) is None


def test_shared_prefix_logps_match_plain_and_separate_rows(built):
    family, model, processor = built
    batch = _pairs(processor, model)
    with torch.no_grad():
        chosen, rejected = P.pair_logps(model, batch)  # shared prefix is the default
        plain_c, plain_r = _plain(model, batch)
    _close(chosen, plain_c)
    _close(rejected, plain_r)
    # and against chosen / rejected encoded on their own through the model's own full-logits forward
    c = L.encode_pairs(processor, _images4(), PROMPTS4, CHOSEN4, CHOSEN4, model_type=family)
    r = L.encode_pairs(processor, _images4(), PROMPTS4, REJECTED4, REJECTED4, model_type=family)
    for got, enc in ((chosen, c), (rejected, r)):
        ref = _full(model, enc.plain_inputs(), enc.labels).rows(0, enc.n_pairs)
        _close(got, ref)


def test_single_pair_and_truncated_completions(built):
    family, model, processor = built
    one = L.encode_pairs(processor, _images4()[1:2], PROMPTS4[1:2], CHOSEN4[1:2], REJECTED4[1:2], model_type=family)
    full = _pairs(processor, model)
    cut = _pairs(processor, model, max_length=int(full.prompt_lengths.max()) + 2)  # 1-2 completion tokens left
    assert (cut.completion_lengths < full.completion_lengths).any()
    for batch in (one, cut):
        with torch.no_grad():
            got = P.pair_logps(model, batch)
            ref = _plain(model, batch)
        _close(got[0], ref[0])
        _close(got[1], ref[1])


@pytest.mark.parametrize("family", ["idefics3", "llava"])
def test_eager_attention_takes_the_additive_mask(family):
    model, processor = BUILDERS[family].__wrapped__(0)
    model.set_attn_implementation("eager")
    assert P._text_config(model)._attn_implementation == "eager"
    batch = _pairs(processor, model)
    assert P.shared_prefix_problem(model, batch) is None
    with torch.no_grad():
        got = P.pair_logps(model, batch)
        ref = _plain(model, batch)
    _close(got[0], ref[0])
    _close(got[1], ref[1])


def test_mrope_positions_are_needed_and_used():
    """Qwen2-VL: the packed rows get the plain rows' 3-D M-RoPE ids. Plain column positions would be wrong
    (image tokens advance the text position by the grid side, not by their count)."""
    model, processor = tiny_qwen2_vl()
    batch = _pairs(processor, model)
    pos3 = P.mrope_positions(model, batch)
    cols = torch.arange(pos3.shape[-1])
    am = batch.inputs["attention_mask"].bool()
    assert not torch.equal(pos3[0][am], cols.expand_as(pos3[0])[am])
    packed = P.pack_pairs(batch, positions=pos3)
    assert packed.inputs["position_ids"].shape == (3, batch.n_pairs, packed.width)
    with torch.no_grad():
        ref = _plain(model, batch)
        base, _ = L.base_and_head(model)
        wrong = P.pack_pairs(batch)  # 1-D column positions
        hidden = L._base_forward(base, {**wrong.inputs, **batch.vision_inputs()})
        rows = hidden.reshape(-1, hidden.shape[-1])[wrong.index]
        bad = L._reduce(L._head_logps(model, rows, wrong.targets), wrong.mask)
    assert (bad.sum[:batch.n_pairs] - ref[0].sum).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# gradients


def _param_grads(model, batch, **kw):
    model.zero_grad(set_to_none=True)
    chosen, rejected = P.pair_logps(model, batch, **kw)
    (chosen.sum - 0.5 * rejected.mean).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _assert_grads_close(got: dict, ref: dict, rel: float = 1e-5) -> None:
    """Per parameter: max |diff| <= rel * max |grad|, the scale floored at 1e-3 of the largest gradient anywhere
    (attention k_proj biases have exactly-zero true gradients, so both sides hold rounding noise of ~1e-10)."""
    assert got.keys() == ref.keys() and got
    floor = 1e-3 * max(g.abs().max().item() for g in ref.values())
    for n in ref:
        scale = max(ref[n].abs().max().item(), floor)
        err = (got[n] - ref[n]).abs().max().item()
        assert err <= rel * scale, f"{n}: max |diff| {err:.3g} vs max |grad| {scale:.3g}"


def test_gradients_match_plain_path(built):
    """Every parameter's gradient (vision, projector, text, embeddings, head) equals the plain path's: the prefix
    activations receive the gradient of both branches."""
    family, model, processor = built
    batch = _pairs(processor, model)
    shared = _param_grads(model, batch)
    plain = _param_grads(model, batch, shared_vision=False, shared_prefix=False)
    assert any(n.startswith(("model.vision", "model.visual")) for n in shared)
    _assert_grads_close(shared, plain)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_gradients_with_checkpointing_in_train_mode():
    model, processor = tiny_idefics3.__wrapped__(0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    batch = _pairs(processor, model)
    shared = _param_grads(model, batch)
    plain = _param_grads(model, batch, shared_prefix=False)
    _assert_grads_close(shared, plain)


# ---------------------------------------------------------------------------------------------------------------
# the prefix is processed once


def test_prefix_runs_once(built):
    family, model, processor = built
    batch = _pairs(processor, model)
    b = batch.n_pairs
    lens = batch.inputs["attention_mask"].sum(1)
    p = batch.prompt_lengths[:b]
    packed = P.pack_pairs(batch)
    with TextTokens(model) as shared, VisionCalls(model, family) as vis, torch.no_grad():
        P.pair_logps(model, batch)
    with TextTokens(model) as plain, torch.no_grad():
        _plain(model, batch)
    width = int((lens[:b] + lens[b:] - p).max())
    assert shared.shapes == [(b, width)] and packed.width == width
    assert plain.shapes == [tuple(batch.inputs["input_ids"].shape)]
    # real tokens through the text model: B*P + 2B*C (prompt once), not 2B*(P+C)
    real = int((packed.segments >= 0).sum())
    assert real == int(p.sum() + (lens - batch.prompt_lengths).sum())
    assert real == int(lens.sum() - p.sum())
    assert b * width < 0.75 * plain.shapes[0][0] * plain.shapes[0][1]
    assert vis.calls == [b]  # and the vision encoder runs once per pair


def test_packed_layout(built):
    family, model, processor = built
    batch = _pairs(processor, model)
    b = batch.n_pairs
    ids, am = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    packed = P.pack_pairs(batch)
    mask = packed.inputs["attention_mask"]
    assert mask.dtype == torch.bool and mask.shape == (b, 1, packed.width, packed.width)
    for i in range(b):
        p, nc, nr = int(batch.prompt_lengths[i]), int(am[i].sum()), int(am[b + i].sum())
        n = nc + nr - p
        row = packed.inputs["input_ids"][i]
        assert row[:nc].tolist() == ids[i, :nc].tolist()
        assert row[nc:n].tolist() == ids[b + i, p:nr].tolist()
        assert (row[n:] == batch.pad_token_id).all()
        pos = packed.inputs["position_ids"][i]
        assert pos[:nc].tolist() == list(range(nc)) and pos[nc:n].tolist() == list(range(p, nr))
        seg = packed.segments[i].tolist()
        assert seg == [0] * p + [1] * (nc - p) + [2] * (nr - p) + [-1] * (packed.width - n)
        m = mask[i, 0]
        assert not m[nc:n, p:nc].any()  # rejected never sees chosen
        assert m[nc:n, :p].all() and m[p:nc, :p].all()  # both see the whole prefix
        assert torch.equal(m[nc:n, nc:n], torch.ones(n - nc, n - nc, dtype=torch.bool).tril())
        assert not m[:n, n:].any()  # nobody sees padding
        assert not m[:p, p:].any()  # the prefix sees no completion
    # every target's hidden row predicts the right token: the packed token after it, except the first token of a
    # rejected completion, which the last prefix token predicts
    flat_ids = packed.inputs["input_ids"].reshape(-1)
    seg = packed.segments.reshape(-1)
    after = flat_ids[packed.index + 1]
    first_rej = (seg[packed.index] == 0) & (seg[packed.index + 1] == 1)
    lab_rows = (batch.labels[:, 1:] != IGNORE).nonzero(as_tuple=True)[0]
    first_rej &= lab_rows >= b
    assert torch.equal(after[~first_rej], packed.targets[~first_rej])
    assert int(first_rej.sum()) == b


# ---------------------------------------------------------------------------------------------------------------
# fallbacks and the flag


def test_flag_off_is_the_previous_path(built):
    family, model, processor = built
    batch = _pairs(processor, model)
    with TextTokens(model) as seen, torch.no_grad():
        off = P.pair_logps(model, batch, shared_prefix=False)
    assert seen.shapes == [tuple(batch.inputs["input_ids"].shape)]
    with torch.no_grad():
        ref = P.pair_logps(model, batch, shared_prefix=False)
    assert torch.equal(off[0].sum, ref[0].sum) and torch.equal(off[1].sum, ref[1].sum)


def test_unsupported_family_falls_back_to_plain(monkeypatch, caplog):
    """PaliGemma attends bidirectionally over image + prefix: not packed (said once in the log, no warning), and
    gives the plain numbers."""
    model = _tiny_paligemma2(softcap=0.05)
    batch = _paligemma_pairs()
    assert P.shared_prefix_problem(model, batch).startswith("family")
    monkeypatch.setattr(P, "_warned", set())
    with warnings.catch_warnings(), caplog.at_level("INFO", logger=P.__name__):
        warnings.simplefilter("error")
        with torch.no_grad():
            got = P.pair_logps(model, batch)
            P.pair_logps(model, batch)
    said = [r.getMessage() for r in caplog.records if "not sharing the prompt prefix" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("paligemma")
    with torch.no_grad():
        ref = P.pair_logps(model, batch, shared_prefix=False)
    assert torch.equal(got[0].sum, ref[0].sum) and torch.equal(got[1].sum, ref[1].sum)


def test_family_removed_from_the_list_falls_back(monkeypatch):
    model, processor = tiny_qwen2_vl()
    batch = _pairs(processor, model)
    with torch.no_grad():
        shared = P.pair_logps(model, batch)
    monkeypatch.setitem(families.FAMILIES, "qwen2_vl", replace(families.FAMILIES["qwen2_vl"], shared_prefix=False))
    with TextTokens(model) as seen, torch.no_grad():
        fallback = P.pair_logps(model, batch)
        plain = P.pair_logps(model, batch, shared_prefix=False)
    assert seen.shapes == [tuple(batch.inputs["input_ids"].shape)] * 2
    assert torch.equal(fallback[0].sum, plain[0].sum) and torch.equal(fallback[1].sum, plain[1].sum)
    _close(fallback[0], shared[0])
    _close(fallback[1], shared[1])


def test_unsupported_attention_or_layout_warns_and_falls_back(monkeypatch):
    model, processor = tiny_llava()
    batch = _pairs(processor, model)
    with torch.no_grad():
        ref = P.pair_logps(model, batch, shared_prefix=False)
    monkeypatch.setattr(P, "_warned", set())
    monkeypatch.setattr(P, "PREFIX_ATTN_IMPLEMENTATIONS", frozenset({"eager"}))
    with pytest.warns(UserWarning, match="attention implementation 'sdpa'"), torch.no_grad():
        got = P.pair_logps(model, batch)
    assert torch.equal(got[0].sum, ref[0].sum)
    monkeypatch.undo()

    # a pair whose rows differ on the prompt cannot share it
    monkeypatch.setattr(P, "_warned", set())
    ids = batch.inputs["input_ids"].clone()
    ids[batch.n_pairs, 1] = ids[batch.n_pairs, 2]
    odd = L.PairBatch(**{**batch.__dict__, "inputs": {**batch.inputs, "input_ids": ids}})
    assert "differ on the prompt" in P.shared_prefix_problem(model, odd)
    with pytest.warns(UserWarning, match="differ on the prompt"), torch.no_grad():
        got = P.pair_logps(model, odd)
    with torch.no_grad():
        ref = P.pair_logps(model, odd, shared_prefix=False)
    assert torch.equal(got[0].sum, ref[0].sum) and torch.equal(got[1].sum, ref[1].sum)


def test_pair_parity_and_loop_flag(built):
    from vlm_dpo.train.batches import TrainBatch
    from vlm_dpo.train.recipe import PairForward, TrainConfig

    family, model, processor = built
    batch = _pairs(processor, model)
    assert P.pair_parity(model, batch) < ATOL
    assert TrainConfig().shared_prefix is True
    tb = TrainBatch(pair_ids=["a", "b", "c", "d"], encoded=batch, corrupt=None, n_tokens=0)
    for flag, rows in ((True, batch.n_pairs), (False, 2 * batch.n_pairs)):
        with TextTokens(model) as seen, torch.no_grad():
            PairForward(model, shared_vision=True, shared_prefix=flag)(tb)
        assert seen.shapes[0][0] == rows
