"""Load any Hugging Face image-text-to-text model, and build the tiny embedded one.

Real users pass a hub id or a local path (`HuggingFaceTB/SmolVLM-256M-Instruct`, `Qwen/Qwen2-VL-2B-Instruct`,
`llava-hf/llava-1.5-7b-hf`, ...) and everything goes through `AutoModelForImageTextToText` / `AutoProcessor`.
The embedded default is a ~4M-parameter SmolVLM (Idefics3) built from its real config classes with a byte-level
BPE tokenizer trained here on the world's text and the real `Idefics3Processor`; it is saved with
`save_pretrained` and always loaded back through `from_pretrained`, so tests walk the real path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

# Special tokens the Idefics3 processor and chat template rely on. `<global-img>` must be a real token or it
# silently becomes <unk>; row/col tokens exist so the processor never meets unknown tags.
IDEFICS3_SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
                     "<image>", "<global-img>"]
# Like SmolVLM's own: "User:<image>text<end_of_utterance>\n", then "Assistant:" to generate, and an assistant turn
# rendered "Assistant: text<end_of_utterance>\n" (so the completion trained on is " text<end_of_utterance>").
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['role'] == 'assistant' %} {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)

# The same template with the assistant turn rendered as "Assistant: <text><end_of_utterance>" (no newline after
# it). User turns and the generation prompt render exactly as CHAT_TEMPLATE does, so TRL's collator, which
# tokenises the rendered assistant turn, scores exactly our completion ids (" " + text + EOS). Used where TRL is
# the oracle (tests/train/test_trl_parity.py, bench/dpo_step.py).
TRL_ALIGNED_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['role'] == 'assistant' %} {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>{% if message['role'] != 'assistant' %}{{ '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


class ModelLoadError(RuntimeError):
    pass


def load_model_and_processor(name_or_path: str, *, dtype: str | torch.dtype = "float32", device: str = "cpu",
                             trust_remote_code: bool = False):
    """`AutoModelForImageTextToText` + `AutoProcessor` by hub id or local path, with a clear error when absent.

    Offline machines (HF_HUB_OFFLINE=1, as this toolkit sets by default) only find local paths and cached ids.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
    try:
        processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype,
                                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        where = "local folder" if os.path.isdir(name_or_path) else "hub id (offline: must already be cached)"
        raise ModelLoadError(f"cannot load image-text-to-text model {name_or_path!r} as a {where}: {e}") from e
    tok = processor.tokenizer
    # Batched generation needs left padding (the new token must follow the prompt's last real token).
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device), processor


@dataclass
class TinyVLMSpec:
    """Shape of the embedded SmolVLM. image_tokens = (image_size/patch_size)^2 / scale_factor^2."""
    image_size: int = 64
    patch_size: int = 8
    scale_factor: int = 2
    vision_width: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    text_width: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_mlp: int = 768
    vocab_size: int = 640  # BPE target; the final vocabulary may be smaller on a small corpus
    max_positions: int = 256

    @property
    def image_seq_len(self) -> int:
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor**2


def train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE trained on the world's text: no <unk> for any input, exact decoding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=IDEFICS3_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<|im_start|>",
        eos_token="<end_of_utterance>", padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_idefics3(corpus: list[str], spec: TinyVLMSpec | None = None, seed: int = 0):
    """(model, processor) of a randomly initialised tiny SmolVLM; the processor is built before the config so
    vocab_size and token ids come from the real tokenizer."""
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)

    spec = spec or TinyVLMSpec()
    tok = train_tokenizer(corpus, spec.vocab_size)
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False,  # defaults split a small image into 17 crops and ~700 tokens
        size={"longest_edge": spec.image_size},
        max_image_size={"longest_edge": spec.image_size},
    )
    processor = Idefics3Processor(image_processor, tok, image_seq_len=spec.image_seq_len, chat_template=CHAT_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in IDEFICS3_SPECIALS}
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=spec.vision_width, intermediate_size=4 * spec.vision_width,
            num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
            image_size=spec.image_size, patch_size=spec.patch_size,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(tok), hidden_size=spec.text_width,
            intermediate_size=spec.text_mlp, num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.text_heads, num_key_value_heads=spec.text_kv_heads,
            max_position_embeddings=spec.max_positions, tie_word_embeddings=True,
            pad_token_id=ids["<pad>"], bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<end_of_utterance>"],
        ),
        scale_factor=spec.scale_factor,
        image_token_id=ids["<image>"],
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.eos_token_id = ids["<end_of_utterance>"]
    model.generation_config.bos_token_id = ids["<|im_start|>"]
    return model, processor


def save_model(model, processor, path: str | Path, state_dict: dict | None = None) -> Path:
    """save_pretrained both into a temp folder, then rename: a half-written model is never loadable."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
    processor.save_pretrained(tmp)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
