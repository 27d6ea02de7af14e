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


# ---------------------------------------------------------------------------------------------------------------
# The real chat templates (tests/fixtures/chat_templates/, sources in its README), through the tiny models' real
# processor classes: the completion each family is trained on, written out by hand from the template.

REAL = {  # family: (builder name in ALL_FAMILIES, model_type, the completion for "two cups.")
    "smolvlm": ("smolvlm", "smolvlm", " two cups.<end_of_utterance>"),  # "Assistant:" + " two cups.<end_of_utterance>"
    "qwen2_vl": ("qwen2_vl_real", "qwen2_vl", "two cups.<|im_end|>"),  # "<|im_start|>assistant\n" + text<|im_end|>\n
    "qwen2_5_vl": ("qwen2_5_vl", "qwen2_5_vl", "two cups.<|im_end|>"),
    "llava": ("llava", "llava", " two cups.</s>"),  # "ASSISTANT:" + " two cups. " (no end token: EOS appended)
    "llava_next": ("llava_next", "llava_next", " two cups.</s>"),  # "[/INST]" + " two cups.</s>" (registry format)
    "gemma3": ("gemma3", "gemma3", "two cups.<end_of_turn>"),  # "<start_of_turn>model\n" + two cups.<end_of_turn>\n
    "paligemma": ("paligemma", "paligemma", "two cups.<eos>"),  # no template: suffix + EOS
}


def _real_processor(name):
    from tests.tiny_models import ALL_FAMILIES, chat_template, tiny_qwen2_vl

    if name == "qwen2_vl_real":  # the Qwen2-VL tiny model of the logps tests with the real template
        _, processor = tiny_qwen2_vl.__wrapped__(0)
        processor.chat_template = processor.tokenizer.chat_template = chat_template("qwen2_vl")
        return processor
    return ALL_FAMILIES[name]()[1]


@pytest.mark.parametrize("family", sorted(REAL))
def test_real_template_completion(family):
    name, model_type, want = REAL[family]
    processor = _real_processor(name)
    assert render_completion(processor, PROMPT, "  two cups. ", model_type) == want
    ids = completion_ids(processor, PROMPT, "two cups.", model_type)
    assert processor.tokenizer.decode(ids) == want


@pytest.mark.parametrize("family", sorted(set(REAL) - {"paligemma"}))
def test_real_template_prompt_is_a_prefix_of_the_conversation(family):
    from tests.tiny_models import chat_template
    from vlm_dpo.ground import chat_messages

    name, model_type, want = REAL[family]
    processor = _real_processor(name)
    fixture = {"smolvlm": "smolvlm", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl", "llava": "llava",
               "llava_next": "llava_next", "gemma3": "gemma3"}[family]
    assert processor.chat_template == chat_template(fixture)  # the tiny model really carries the real template
    messages = chat_messages(PROMPT)
    head = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(
        messages + [{"role": "assistant", "content": [{"type": "text", "text": "two cups."}]}], tokenize=False)
    assert full.startswith(head) and len(full) > len(head)


def test_real_prompts_written_out():
    """The generation prompts of the real templates, by hand."""
    image_text = {"smolvlm": "<|im_start|>User:<image>Describe the objects on the table.<end_of_utterance>\n"
                             "Assistant:",
                  "qwen2_5_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                "<|vision_start|><|image_pad|><|vision_end|>Describe the objects on the table."
                                "<|im_end|>\n<|im_start|>assistant\n",
                  "llava": "USER: <image>\nDescribe the objects on the table. ASSISTANT:",
                  "llava_next": "[INST] <image>\nDescribe the objects on the table. [/INST]",
                  "gemma3": "<bos><start_of_turn>user\n<start_of_image>Describe the objects on the table."
                            "<end_of_turn>\n"
                            "<start_of_turn>model\n"}
    from vlm_dpo.ground import chat_messages

    for family, want in image_text.items():
        processor = _real_processor(REAL[family][0])
        assert processor.apply_chat_template(chat_messages(PROMPT), add_generation_prompt=True, tokenize=False) == want


def test_llava_next_template_typo_needs_the_registry_format(monkeypatch):
    """llava-v1.6-mistral's template ends the assistant turn with "<\\s> " (not </s>) and has no generation prompt:
    rendered through the template the completion would be " two cups.<\\s></s>"."""
    from dataclasses import replace

    from vlm_dpo import families

    processor = _real_processor("llava_next")
    monkeypatch.setitem(families.FAMILIES, "llava_next",
                        replace(families.FAMILIES["llava_next"], completion_format=None))
    assert render_completion(processor, PROMPT, "two cups.", "llava_next") == " two cups.<\\s></s>"


def test_gemma3_ends_at_end_of_turn_not_eos(monkeypatch):
    """Gemma 3 stops at <end_of_turn>; its tokenizer's eos is <eos>. Without the registry's end_of_turn the
    completion would be "two cups.<end_of_turn><eos>"."""
    from dataclasses import replace

    from vlm_dpo import families

    processor = _real_processor("gemma3")
    assert processor.tokenizer.eos_token == "<eos>"
    monkeypatch.setitem(families.FAMILIES, "gemma3", replace(families.FAMILIES["gemma3"], end_of_turn=None))
    assert render_completion(processor, PROMPT, "two cups.", "gemma3") == "two cups.<end_of_turn><eos>"


def test_a_processors_own_labels_never_reach_the_model():
    """PaliGemma's processor returns `labels`; its forward builds its attention mask from them. Ours are the
    completion-only labels, kept apart from the model inputs."""
    import numpy as np
    from PIL import Image

    from tests.tiny_models import ALL_FAMILIES
    from vlm_dpo.train.collate import encode

    model, processor = ALL_FAMILIES["paligemma"]()
    image = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    enc = encode(processor, [image], [PROMPT], ["two cups."], model_type="paligemma")
    assert "labels" not in enc.inputs
    assert (enc.labels != -100).sum() == len(completion_ids(processor, PROMPT, "two cups.", "paligemma"))
