"""Turn (image, prompt, completion) examples into model inputs with completion-only labels, for any family.

The processor does what only it knows (image preprocessing, expanding image placeholders into the right
number of image tokens, per-family extras such as pixel_attention_mask or image_grid_thw). We then append the
completion's token ids ourselves, so the prompt/completion boundary is exact whatever the tokenizer merges,
and pad on the right (positions stay 0..n-1 for every family).

The completion is what the model's own chat template renders for the assistant turn (`render_completion`): the
whole conversation rendered minus the generation-prompt rendering, cut after the family's end-of-turn token (what
generation stops at; e.g. Qwen2-VL "text<|im_end|>", SmolVLM " text<end_of_utterance>"), with that token
appended when the template writes none (LLaVA-1.5's "text "). Families without a chat template (PaliGemma's
prefix/suffix) have a `completion_format` in their registry entry. Prompts are never truncated: a prompt that does
not fit `max_length` (its image tokens included) is an error naming the example, and only completions are cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..families import family_for
from ..ground import chat_messages

IGNORE = -100


class ExampleTooLongError(ValueError):
    pass


# Per-token fields some families return besides input_ids/attention_mask, and the value a completion token takes.
# (A family's own completion values, e.g. PaliGemma's token_type_ids = 1, are its registry `completion_fill`.)
PER_TOKEN_FILL = {"token_type_ids": 0, "mm_token_type_ids": 0}


@dataclass
class Encoded:
    """A right-padded batch: model inputs + labels (IGNORE outside completions) + completion lengths."""
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    prompt_lengths: torch.Tensor  # tokens before the completion, per row
    completion_lengths: torch.Tensor


def render_prompts(processor, prompts: list[str]) -> list[str]:
    tok = _tokenizer(processor)
    if getattr(processor, "chat_template", None) is None and getattr(tok, "chat_template", None) is None:
        return list(prompts)  # no chat template (PaliGemma): the processor writes its own prefix around the text
    return [processor.apply_chat_template(chat_messages(p), add_generation_prompt=True, tokenize=False) for p in prompts]


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def render_completion(processor, prompt: str, completion: str, model_type: str = "", *,
                      template_tail: bool = False) -> str:
    """The assistant turn's text as the model's chat template writes it after the generation prompt, up to and
    including the end-of-turn token; `template_tail=True` keeps whatever the template writes after that token too
    (e.g. SmolVLM's and Qwen's newline), as TRL's DPOTrainer trains it."""
    fam = family_for(model_type)
    tok = _tokenizer(processor)
    text = completion.strip()
    end = fam.end_of_turn or tok.eos_token
    template = getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)
    if fam.completion_format is not None or template is None:
        return (fam.completion_format or " {text}{end}").format(text=text, end=end or "")
    messages = chat_messages(prompt)
    head = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(
        messages + [{"role": "assistant", "content": [{"type": "text", "text": text}]}], tokenize=False)
    if not full.startswith(head):
        raise ValueError(f"{model_type or type(processor).__name__}: the chat template does not render the "
                         f"conversation as the generation prompt followed by the answer; give the family a "
                         f"completion_format in vlm_dpo/families.py")
    rendered = full[len(head):]
    if template_tail:
        return rendered
    if end and end in rendered:
        return rendered[:rendered.index(end) + len(end)]
    return rendered.rstrip() + (end or "")


def completion_ids(processor, prompt: str, completion: str, model_type: str = "", *,
                   template_tail: bool = False) -> list[int]:
    """Token ids of the assistant turn (see `render_completion`), special tokens as the template writes them."""
    rendered = render_completion(processor, prompt, completion, model_type, template_tail=template_tail)
    return list(_tokenizer(processor)(rendered, add_special_tokens=False)["input_ids"])


def encode(processor, images: list, prompts: list[str], completions: list[str], *, max_length: int = 0,
           names: list[str] | None = None, model_type: str = "", template_tail: bool = False) -> Encoded:
    """Encode a batch of single-image examples. `prompts` are user texts; the chat template is applied here."""
    tok = processor.tokenizer
    rendered = render_prompts(processor, prompts)
    old_side = tok.padding_side
    tok.padding_side = "right"
    try:
        proc = processor(text=rendered, images=[[im] for im in images], padding=True, return_tensors="pt")
    finally:
        tok.padding_side = old_side
    # Labels are ours (completion-only, below); a processor's own (PaliGemma returns them) must not reach the
    # model as an input: PaliGemma's forward builds its training attention mask from `labels`.
    proc.pop("labels", None)
    ids, am = proc["input_ids"], proc["attention_mask"]
    per_token = {k: v for k, v in proc.items() if k not in ("input_ids", "attention_mask")
                 and torch.is_tensor(v) and v.shape == ids.shape}
    fill = PER_TOKEN_FILL | family_for(model_type).completion_fill
    rows, label_rows, extra_rows, plens, clens = [], [], {k: [] for k in per_token}, [], []
    for i in range(len(prompts)):
        n = int(am[i].sum())
        p_ids = ids[i, :n].tolist()
        c_ids = completion_ids(processor, prompts[i], completions[i], model_type, template_tail=template_tail)
        if max_length:
            room = max_length - n
            if room < 2:  # at least one completion token and EOS
                who = names[i] if names else f"example {i}"
                raise ExampleTooLongError(
                    f"{who}: prompt is {n} tokens (image tokens included), max_length={max_length} leaves no room "
                    f"for the completion; raise max_length (image tokens are never truncated)"
                )
            c_ids = c_ids[:room]
        rows.append(p_ids + c_ids)
        label_rows.append([IGNORE] * n + c_ids)
        for k, v in per_token.items():
            extra_rows[k].append(v[i, :n].tolist() + [fill.get(k, 0)] * len(c_ids))
        plens.append(n)
        clens.append(len(c_ids))
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def padded(seqs, value):
        return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)

    inputs = {k: v for k, v in proc.items() if k not in ("input_ids", "attention_mask") and k not in per_token}
    inputs["input_ids"] = padded(rows, pad)
    inputs["attention_mask"] = padded([[1] * len(r) for r in rows], 0)
    for k, seqs in extra_rows.items():
        inputs[k] = padded(seqs, 0)
    return Encoded(inputs, padded(label_rows, IGNORE), torch.tensor(plens), torch.tensor(clens))
