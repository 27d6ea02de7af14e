"""Can the embedded VLM's language model learn the grounded yes/no lookup at all? A text-only probe.

scripts/yes_no_probe.py finds the embedded VLM answering "yes" about absent kinds even when the grounding context
lists what is there. This probe takes vision out of the question: a language model of the embedded VLM's text shape
(cfg.vlm.spec, the same BPE tokenizer) is trained from scratch on the SFT data's POPE-style questions only, every one
grounded (the SFT examples' own prompts and answers, co-occurrence yes-bias and context drops included, no pixels),
then scored on held-out questions. Printed: the majority answer's accuracy, the accuracy of a rule that answers
"yes" iff the asked kind is in the context (what a perfect reader of the context reaches on these noisy labels), and
the model's.

    python scripts/yes_no_text_probe.py CONFIG [key=value ...] [--lr 1e-3] [--steps 1000] [--layers N]
        [--clean | --cooccur] [--singular]

--clean: labels from that rule (no label noise); --cooccur: a yes-bias without noise, "yes" also about an absent kind
that co-occurs with a kind in the context (the world's COOCCUR pairs: a fixed rule the model can learn, and DPO
could later unlearn, where the SFT data says "yes" at random); --singular: context nouns singular ("2 cup"), so the
asked kind appears in the context as the very same token. Constant learning rate, AdamW as in SFT (betas 0.9/0.98,
clip 1.0).
"""

from __future__ import annotations

import argparse
import re
from unittest import mock

import torch

import vlm_dpo.embedded as embedded
from vlm_dpo.config import load_config
from vlm_dpo.models import train_tokenizer
from vlm_dpo.plurals import plural
from vlm_dpo.world.captions import COOCCUR
from vlm_dpo.world.scenes import KINDS

HELD_OUT_FROM = 50_000_000  # SFT example indices of the held-out questions, far from the training ones
N_HELD_OUT = 400


def asked_kind_and_context(prompt: str) -> tuple[str, str]:
    return re.search(r"Is there an? (\w+)", prompt).group(1), prompt.split("Detected:", 1)[1]


def in_context(prompt: str) -> bool:
    kind, context = asked_kind_and_context(prompt)
    return embedded.names_kind(context, kind)


def cooccur_rule(prompt: str) -> bool:
    """In the context, or the co-occurring partner of a kind in the context."""
    kind, context = asked_kind_and_context(prompt)
    return embedded.names_kind(context, kind) or any(
        COOCCUR.get(k) == kind and embedded.names_kind(context, k) for k in KINDS)


def singular(prompt: str) -> str:
    question, context = prompt.split(" Detected:", 1)
    for kind in KINDS:
        context = re.sub(rf"\b{plural(kind)}\b", kind, context)
    return f"{question} Detected:{context}"


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--layers", type=int, default=0, help="text layers (0 = the config's)")
    labels = ap.add_mutually_exclusive_group()
    labels.add_argument("--clean", action="store_true")
    labels.add_argument("--cooccur", action="store_true")
    ap.add_argument("--singular", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(args.config or None, [*args.overrides, "vlm.sft.qa_share=1.0", "vlm.sft.grounded_share=1.0"])
    # text only: the scenes are sampled as in SFT but never drawn
    with mock.patch.object(embedded, "render_scene", lambda scene: None):
        return probe(cfg, args)


def probe(cfg, args: argparse.Namespace) -> dict:
    spec = cfg.vlm.spec
    data = embedded.WorldSFTData(cfg)
    tok = train_tokenizer(embedded.tokenizer_corpus(cfg.world.seed), spec.vocab_size)
    rule = in_context if args.clean else cooccur_rule if args.cooccur else None

    def example(index: int) -> tuple[str, str]:
        e = data.example(index)
        prompt = singular(e.prompt) if args.singular else e.prompt
        target = ("yes." if rule(e.prompt) else "no.") if rule else e.target
        return f"User:{prompt}<end_of_utterance>\nAssistant:", target

    def encode(pairs: list[tuple[str, str]]):
        prompts = [tok(p, add_special_tokens=False)["input_ids"] for p, _ in pairs]
        targets = [tok(" " + t, add_special_tokens=False)["input_ids"] for _, t in pairs]
        length = max(len(p) + len(t) for p, t in zip(prompts, targets))
        ids, labels, mask = [], [], []
        for p, t in zip(prompts, targets):
            pad = length - len(p) - len(t)
            ids.append([tok.pad_token_id] * pad + p + t)
            labels.append([-100] * (pad + len(p)) + t)
            mask.append([0] * pad + [1] * (len(p) + len(t)))
        return torch.tensor(ids), torch.tensor(labels), torch.tensor(mask)

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.vlm.sft.seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=spec.text_width, intermediate_size=spec.text_mlp,
        num_hidden_layers=args.layers or spec.text_layers, num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads, max_position_embeddings=spec.max_positions, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98))
    b = cfg.vlm.sft.batch_size
    for step in range(args.steps):
        ids, labels, mask = encode([example(step * b + j) for j in range(b)])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f}", flush=True)

    held_out = [example(HELD_OUT_FROM + i) for i in range(N_HELD_OUT)]
    ids, labels, mask = encode(held_out)
    yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" yes.", " no."))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    first = (labels != -100).int().argmax(1) - 1  # the position that predicts the answer's first token
    rows = torch.arange(len(held_out))
    said_yes = (logits[rows, first, yes] > logits[rows, first, no]).tolist()
    truth = [t == "yes." for _, t in held_out]
    yes_share = sum(truth) / len(truth)
    result = {"majority": max(yes_share, 1 - yes_share),
              "context_rule": sum(in_context(p) == t for (p, _), t in zip(held_out, truth)) / len(truth),
              "model": sum(s == t for s, t in zip(said_yes, truth)) / len(truth),
              "model_yes_share": sum(said_yes) / len(said_yes)}
    print(" ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
