"""Oracle test: our completion log-probs and sigmoid DPO loss equal TRL 1.16's `DPOTrainer` on one batch.

Both sides run the same tiny Idefics3 policy (weights nudged away from the reference so the log-ratios, and so
the loss, are not trivially 0 / log 2) against the same frozen reference, on the same pairs, in float32 on CPU.
TRL's side is its own code path: the pairs go in as the conversational vision dataset `export_trl` writes, its
`DataCollatorForVisionPreference` builds the first batch of `get_train_dataloader()`, and `compute_loss` runs
its fused-LM-head forward and its sigmoid loss. Forward hooks on TRL's policy and reference record the per-token
log-probs its own forward returns (TRL sums them per row; so do we here).

Tokenisation. TRL scores every token the chat template renders after the generation prompt, the newline after
the end-of-turn token included; by default our completion ends at the end-of-turn token (where generation stops),
and `template_tail=True` (train.template_tail) keeps the tail as TRL does. The comparison runs twice:
  * "variant": the tiny model's template with an assistant turn that ends at the end-of-utterance token
    (`TRL_ALIGNED_CHAT_TEMPLATE`, prompts rendered byte-for-byte as the stock one), our default completions;
  * "smolvlm_stock": SmolVLM-Instruct's real, unmodified chat template (tests/fixtures/chat_templates/smolvlm.jinja)
    on both sides, ours with template_tail=True.
Each first asserts that both sides feed the model identical token ids (prompt and completion, per row) and
identical pixels, so a tokenisation drift fails there, readably, before any number is compared. A last test keeps
the tiny model's own template and checks per-token log-probs on TRL's exact collated batch (left-flushed rows, its
completion mask) through our `completion_logps`.
"""

from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from trl import DPOConfig, DPOTrainer  # noqa: E402

from vlm_dpo.detect import open_image  # noqa: E402
from vlm_dpo.models import TRL_ALIGNED_CHAT_TEMPLATE, CHAT_TEMPLATE, load_model_and_processor  # noqa: E402
from vlm_dpo.pairs.dataset import load_pairs, resolve_image  # noqa: E402
from vlm_dpo.pairs.io import export_trl  # noqa: E402
from vlm_dpo.train.logps import IGNORE, completion_logps, encode_pairs  # noqa: E402
from vlm_dpo.train.pair_logps import pair_logps  # noqa: E402
from vlm_dpo.train.losses import LossConfig, PreferenceLogps, preference_loss  # noqa: E402

BETA = 0.1
N_PAIRS = 3
TOL = 1e-5
# Sequence sums of ~20 log-probs of magnitude ~5 are ~100, where one float32 ulp is ~8e-6: TRL and we add the same
# per-token values in a different order, so sums also get a relative tolerance of a few ulps.
SUM_RTOL = 1e-6

# The tiny template with a SmolVLM-style assistant turn ("Assistant: text<end_of_utterance>", no newline after
# it). The user turn and the generation prompt render exactly as CHAT_TEMPLATE renders them (asserted below).
ASSISTANT_VARIANT = TRL_ALIGNED_CHAT_TEMPLATE
SMOLVLM_STOCK = (Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates" / "smolvlm.jinja").read_text()
# name -> (template on both sides, our template_tail)
TEMPLATES = {"variant": (ASSISTANT_VARIANT, False), "smolvlm_stock": (SMOLVLM_STOCK, True)}


def _nudge(model, seed=1, scale=0.02):
    """Move every weight a little (deterministically) so the policy differs from the reference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def _models(tiny_policy):
    """(policy, reference): the nudged policy and the saved weights, fp32, eval mode."""
    ref, _ = load_model_and_processor(tiny_policy)
    policy, _ = load_model_and_processor(tiny_policy)
    return _nudge(policy).eval(), ref.eval()


def _set_template(processor, template):
    processor.chat_template = template
    processor.tokenizer.chat_template = template


def _trl_batch(tiny_policy, pair_root, pairs, tmp_path, template):
    """TRL's trainer on these pairs and the first batch of its own train dataloader."""
    policy, ref = _models(tiny_policy)
    _, processor = load_model_and_processor(tiny_policy)
    _set_template(processor, template)
    # The export as written, our own columns included (TRL drops the ones it does not use; a column named
    # `image` would be taken as the image, so the export must not write one).
    ds = export_trl(pairs, pair_root, tmp_path / "trl_ds")
    args = DPOConfig(
        output_dir=str(tmp_path / "trl_out"), beta=BETA, loss_type=["sigmoid"], per_device_train_batch_size=len(pairs),
        max_length=None, report_to=[], use_cpu=True, bf16=False, fp16=False, precompute_ref_log_probs=False,
        activation_checkpointing=False, train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0,
    )
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=processor)
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer, batch


def _record_log_probs(module, store, key):
    return module.register_forward_hook(lambda m, a, kw, out: store.__setitem__(key, out.log_probs.detach()),
                                        with_kwargs=True)


def _trl_loss(trainer, batch):
    """TRL's loss and the per-token log-probs [2B, T-1] its policy and reference forwards returned."""
    seen = {}
    hooks = [_record_log_probs(trainer.model, seen, "policy"), _record_log_probs(trainer.ref_model, seen, "ref")]
    trainer.model.train()  # as in a training step (TRL disabled dropout; it logs under "train")
    try:
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch))
    finally:
        for h in hooks:
            h.remove()
    return loss, seen["policy"], seen["ref"]


def _rows(batch):
    """Per row of TRL's batch: (prompt ids, completion ids) of the real (unpadded) tokens."""
    out = []
    for ids, am, cm in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        real = am.bool()
        out.append((ids[real & ~cm.bool()].tolist(), ids[real & cm.bool()].tolist()))
    return out


def _pairs(pair_root):
    return [p for p in load_pairs(pair_root / "pairs.parquet") if p["split"] == "train"][:N_PAIRS]


def _ours(tiny_policy, pair_root, pairs, shared_vision, template=None, template_tail=False):
    policy, ref = _models(tiny_policy)
    _, processor = load_model_and_processor(tiny_policy)
    if template is not None:
        _set_template(processor, template)
    images = [open_image(resolve_image(p["image"], pair_root)) for p in pairs]
    enc = encode_pairs(processor, images, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs],
                       [p["rejected"] for p in pairs], model_type="idefics3", template_tail=template_tail)
    with torch.no_grad():
        c, r = pair_logps(policy, enc, shared_vision=shared_vision)
        rc, rr = pair_logps(ref, enc, shared_vision=shared_vision)
    lp = PreferenceLogps(policy_chosen=c.sum, policy_rejected=r.sum, chosen_tokens=c.n_tokens.float(),
                         rejected_tokens=r.n_tokens.float(), ref_chosen=rc.sum, ref_rejected=rr.sum)
    loss, metrics = preference_loss(lp, LossConfig(beta=BETA))
    return enc, (c, r, rc, rr), loss, metrics


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def trl_side(request, tiny_policy, pair_root, tmp_path_factory):
    pairs = _pairs(pair_root)
    template, tail = TEMPLATES[request.param]
    trainer, batch = _trl_batch(tiny_policy, pair_root, pairs, tmp_path_factory.mktemp("trl"), template)
    loss, policy_tok, ref_tok = _trl_loss(trainer, batch)
    return pairs, trainer, batch, loss, policy_tok, ref_tok, template, tail


def test_template_variant_renders_prompts_like_the_model_template(tiny_policy):
    _, processor = load_model_and_processor(tiny_policy)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the table."}]}]
    stock = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    _set_template(processor, ASSISTANT_VARIANT)
    assert processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == stock
    assert CHAT_TEMPLATE != ASSISTANT_VARIANT


@pytest.mark.parametrize("shared_vision", [True, False], ids=["shared_vision", "plain"])
def test_logps_and_sigmoid_loss_match_trl(trl_side, tiny_policy, pair_root, shared_vision):
    pairs, trainer, batch, trl_loss, policy_tok, ref_tok, template, tail = trl_side
    enc, (c, r, rc, rr), loss, metrics = _ours(tiny_policy, pair_root, pairs, shared_vision, template, tail)
    b = len(pairs)

    # 1. The same model inputs: token ids per row (prompt and completion) and the same pixels.
    ours_rows = []
    for i in range(2 * b):
        p, n = int(enc.prompt_lengths[i]), int(enc.completion_lengths[i])
        ours_rows.append((enc.inputs["input_ids"][i, :p].tolist(), enc.inputs["input_ids"][i, p:p + n].tolist()))
    for i, (theirs, ours) in enumerate(zip(_rows(batch), ours_rows)):
        assert theirs[0] == ours[0], f"row {i}: prompt ids differ"
        assert theirs[1] == ours[1], (f"row {i}: completion ids differ: TRL {theirs[1]} "
                                      f"{trainer.processing_class.tokenizer.decode(theirs[1])!r} vs ours {ours[1]}")
    torch.testing.assert_close(batch["pixel_values"][:b], enc.inputs["pixel_values"], rtol=0, atol=0)
    torch.testing.assert_close(batch["pixel_values"][b:], enc.inputs["pixel_values"], rtol=0, atol=0)

    # 2. Per-token log-probs, row by row, in completion order.
    shift_mask = batch["completion_mask"][:, 1:].bool()
    for name, trl_tok, (oc, orj) in (("policy", policy_tok, (c, r)), ("reference", ref_tok, (rc, rr))):
        for i, ours in enumerate(oc.per_token + orj.per_token):
            torch.testing.assert_close(ours, trl_tok[i][shift_mask[i]], rtol=0, atol=TOL,
                                       msg=lambda m, i=i, name=name: f"{name} row {i}: {m}")

    # 3. Per-sequence sums (TRL: log_probs.sum(1), chunked [chosen, rejected]) and the loss.
    trl_c, trl_r = policy_tok.sum(1).chunk(2)
    trl_rc, trl_rr = ref_tok.sum(1).chunk(2)
    for ours, theirs in ((c.sum, trl_c), (r.sum, trl_r), (rc.sum, trl_rc), (rr.sum, trl_rr)):
        torch.testing.assert_close(ours, theirs, rtol=SUM_RTOL, atol=TOL)
    assert abs(float(loss) - 0.6931) > 1e-3  # the nudge makes the log-ratios non-zero: a real comparison
    torch.testing.assert_close(loss, trl_loss, rtol=0, atol=TOL)

    # 4. The metrics TRL logged for this batch (its own reductions).
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected"):
        assert float(metrics[key]) == pytest.approx(logged[key], abs=TOL), key


def test_per_token_logps_on_trls_own_batch_with_the_stock_template(tiny_policy, pair_root, tmp_path):
    """With the model's own template TRL also trains the newline after EOS; on its exact batch (left-flushed,
    right-padded rows, pixels per row) our head-only `completion_logps` gives its per-token log-probs."""
    assert SMOLVLM_STOCK.startswith("<|im_start|>")  # the fixture is the real template, not ours
    pairs = _pairs(pair_root)[:2]
    trainer, batch = _trl_batch(tiny_policy, pair_root, pairs, tmp_path, CHAT_TEMPLATE)
    tok = trainer.processing_class.tokenizer
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    for _, completion in _rows(batch):  # the documented difference: "...<end_of_utterance>\n"
        assert completion[-1 - len(newline):] == [tok.eos_token_id] + newline
    _, policy_tok, _ = _trl_loss(trainer, batch)

    policy, _ = _models(tiny_policy)
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE)
    with torch.no_grad():
        ours = completion_logps(policy, inputs, labels)
    shift_mask = batch["completion_mask"][:, 1:].bool()
    for i, row in enumerate(ours.per_token):
        torch.testing.assert_close(row, policy_tok[i][shift_mask[i]], rtol=0, atol=TOL)
    torch.testing.assert_close(ours.sum, policy_tok.sum(1), rtol=SUM_RTOL, atol=TOL)
