"""Completions are what each family's chat template writes for the assistant turn, cut at the end-of-turn token."""

from __future__ import annotations

import pytest

from tests.tiny_models import tiny_idefics3, tiny_llava, tiny_qwen2_vl
from vlm_dpo.train.collate import completion_ids, render_completion

PROMPT = "Describe the objects on the table."


def test_embedded_smolvlm_template_gives_space_text_eos():
    _, processor = tiny_idefics3()
    tok = processor.tokenizer
    assert render_completion(processor, PROMPT, " two cups. ", "idefics3") == " two cups.<end_of_utterance>"
    # the ids the embedded VLM was always trained on: " " + text, then EOS
    want = tok(" two cups.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert completion_ids(processor, PROMPT, "two cups.", "idefics3") == want


def test_qwen_template_ends_at_im_end_without_the_newline():
    _, processor = tiny_qwen2_vl()
    assert render_completion(processor, PROMPT, "two cups.", "qwen2_vl") == "two cups.<|im_end|>"
    ids = completion_ids(processor, PROMPT, "two cups.", "qwen2_vl")
    assert ids[-1] == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_template_without_end_of_turn_gets_eos_appended():
    """LLaVA-1.5-style templates write "ASSISTANT: text" and no end token: the model must still learn to stop."""
    _, processor = tiny_llava()
    eos = processor.tokenizer.eos_token
    assert render_completion(processor, PROMPT, "two cups.", "llava") == f" two cups.{eos}"


def test_no_template_uses_the_family_format():
    class Tok:
        eos_token = "<eos>"
        chat_template = None

    class Proc:
        tokenizer = Tok()
        chat_template = None

    assert render_completion(Proc(), PROMPT, "two cups.", "paligemma") == "two cups.<eos>"
    assert render_completion(Proc(), PROMPT, "two cups.", "some_vlm") == " two cups.<eos>"


def test_template_that_rewrites_the_prompt_is_refused():
    _, processor = tiny_idefics3.__wrapped__(0)
    processor.chat_template = ("{% for m in messages %}{{ m['role'] }}{% endfor %}"
                               "{% if add_generation_prompt %}GEN{% endif %}")
    with pytest.raises(ValueError, match="completion_format"):
        render_completion(processor, PROMPT, "two cups.", "idefics3")
