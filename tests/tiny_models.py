"""Tiny random image-text-to-text models of three families, built from transformers config classes (no downloads).

Each builder returns (model, processor): fp32, eval mode, deterministic from `seed`, cached per session (treat the
returned objects as read-only; build a fresh one with `.__wrapped__(seed)` if a test must mutate weights).
Tokenizers are byte-level BPEs trained here on `CORPUS` (`vlm_dpo.models.train_tokenizer`) plus each family's
special tokens, with a chat template of our own that emits the tokens the real processor expands.

  tiny_idefics3()  SmolVLM/Idefics3, 32x32 images -> 4 image tokens (no splitting)
  tiny_qwen2_vl()  Qwen2-VL, patch 8 / merge 2 / 256..1024 pixels -> 1..4 image tokens, M-RoPE sections [2, 3, 3]
  tiny_llava()     LLaVA with a CLIP tower (16x16 images, patch 4 -> 16 image tokens) and a Llama text model

Every family users run, with the model's REAL chat template (tests/fixtures/chat_templates/, see its README), in
`ALL_FAMILIES` (tests/train/test_recipe_families.py parametrises over it; one CPU thread, a few seconds each):

  tiny_idefics3_split()  Idefics3 with image splitting on (64-pixel resize, 32-pixel tiles: up to 4 tiles + global)
  tiny_smolvlm()         SmolVLM (model_type "smolvlm"), no splitting, 1 image token per 32x32 image
  tiny_qwen2_5_vl()      Qwen2.5-VL (windowed vision attention, window = one merged patch)
  tiny_llava_next()      LLaVA-NeXT, anyres grid pinpoints [16,16] [16,32] [32,16] of 16-pixel tiles (patch 8)
  tiny_paligemma()       PaliGemma (Gemma text), no chat template: prefix / suffix with token_type_ids
  tiny_gemma3()          Gemma 3, 16x16 images pooled to 4 image tokens, sliding + full attention layers
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

CORPUS = [
    "a red cube sits left of a blue ball", "two green cones near the wall", "the yellow cylinder is on the right",
    "there is one small purple sphere", "a large grey box behind a red cone", "three blue cubes in a row",
    "no animals are visible in the picture", "the image shows a table with a cup", "a dog lies on the grass",
    "a cat sleeps on a red sofa", "the sky is clear and blue", "two people walk along the street",
    "Describe the image.", "What objects are in the scene?", "How many cubes are there?", "Answer briefly.",
    "There are two cubes and a ball.", "I see a cone, a cube and a sphere.", "The ball is blue.",
    "It is a photo of a kitchen.", "The car is parked near a tree.", "A bird flies over the lake.",
    "USER: ASSISTANT: user assistant", "left right top bottom center middle corner edge",
    "one two three four five six seven eight nine ten", "red green blue yellow purple grey black white",
]

QWEN_SPECIALS = ["<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
VOCAB = 400


def _finish(model, tok):
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.float().eval()


@functools.lru_cache(maxsize=None)
def tiny_idefics3(seed: int = 0):
    from vlm_dpo.models import TinyVLMSpec, build_tiny_idefics3

    spec = TinyVLMSpec(image_size=32, patch_size=8, scale_factor=2, vision_width=32, vision_layers=2,
                       vision_heads=2, text_width=64, text_layers=2, text_heads=4, text_kv_heads=2, text_mlp=128,
                       vocab_size=VOCAB, max_positions=256)
    model, processor = build_tiny_idefics3(CORPUS, spec, seed=seed)
    return model.float().eval(), processor


@functools.lru_cache(maxsize=None)
def tiny_qwen2_vl(seed: int = 0):
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    from vlm_dpo.models import train_tokenizer

    tok = train_tokenizer(CORPUS, VOCAB)
    tok.add_tokens(QWEN_SPECIALS, special_tokens=True)
    tok.eos_token = "<|im_end|>"
    tok.chat_template = QWEN_CHAT_TEMPLATE
    patch, merge = 8, 2
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": 256, "longest_edge": 1024}, patch_size=patch, temporal_patch_size=2, merge_size=merge,
    )
    video_processor = Qwen2VLVideoProcessor(patch_size=patch, temporal_patch_size=2, merge_size=merge)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                 chat_template=QWEN_CHAT_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2VLConfig(
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, in_channels=3,
                           patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2),
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    return _finish(model, tok), processor


@functools.lru_cache(maxsize=None)
def tiny_llava(seed: int = 0):
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from vlm_dpo.models import train_tokenizer

    tok = train_tokenizer(CORPUS, VOCAB)  # "<image>" is among its special tokens
    tok.chat_template = LLAVA_CHAT_TEMPLATE
    image, patch = 16, 4
    image_processor = CLIPImageProcessor(size={"shortest_edge": image}, crop_size={"height": image, "width": image})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image, patch_size=patch, projection_dim=32),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(image // patch) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    return _finish(model, tok), processor


# The families above by model_type (the training tests parametrise over these).
BUILDERS = {"idefics3": tiny_idefics3, "qwen2_vl": tiny_qwen2_vl, "llava": tiny_llava}


# ---------------------------------------------------------------------------------------------------------------
# Every family, with the real chat templates (tests/fixtures/chat_templates/)

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "chat_templates"


def chat_template(name: str) -> str:
    """A real chat template (see tests/fixtures/chat_templates/README.md for where each comes from)."""
    return (TEMPLATES / f"{name}.jinja").read_text()


def _tokenizer(specials=(), *, bos=None, eos=None, template=None):
    from vlm_dpo.models import train_tokenizer

    tok = train_tokenizer(CORPUS, VOCAB)
    new = [t for t in specials if t not in tok.get_vocab()]
    if new:
        tok.add_tokens(new, special_tokens=True)
    if bos:
        tok.bos_token = bos
    if eos:
        tok.eos_token = eos
    tok.chat_template = template
    return tok


def _llama_text(tok, **kw):
    return dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id) | kw


def _idefics3_like(seed, *, smolvlm: bool, split: bool):
    import transformers as tr

    kind = "SmolVLM" if smolvlm else "Idefics3"
    template = chat_template("smolvlm")
    tok = _tokenizer(["<row_1_col_1>", "<row_1_col_2>", "<row_2_col_1>", "<row_2_col_2>", "<video>"],
                     template=template)
    tile = 32
    image_processor = tr.Idefics3ImageProcessor(
        do_image_splitting=split, size={"longest_edge": 2 * tile if split else tile},
        max_image_size={"longest_edge": tile})
    patch, scale = 8, 4  # (32 / 8)^2 / 4^2 = 1 image token per tile
    kw = dict(image_seq_len=1, chat_template=template)
    # SmolVLMProcessor needs the `num2words` package (not installed here); for a single image without splitting it
    # writes the same prompt as Idefics3Processor (SmolVLM adds video handling), so SmolVLM gets that processor.
    processor = tr.Idefics3Processor(image_processor, tok, **kw)
    config = getattr(tr, f"{kind}Config")(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=tile, patch_size=patch),
        text_config=_llama_text(tok, tie_word_embeddings=True),
        scale_factor=scale, image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = getattr(tr, f"{kind}ForConditionalGeneration")(config)
    return _finish(model, tok), processor


@functools.lru_cache(maxsize=None)
def tiny_idefics3_split(seed: int = 0):
    return _idefics3_like(seed, smolvlm=False, split=True)


@functools.lru_cache(maxsize=None)
def tiny_smolvlm(seed: int = 0):
    return _idefics3_like(seed, smolvlm=True, split=False)


@functools.lru_cache(maxsize=None)
def tiny_qwen2_5_vl(seed: int = 0):
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    # Qwen2.5-VL-3B-Instruct's own chat_template.json was not found in a citable copy; the Qwen2-VL-Instruct text
    # is what the Qwen2.5-VL processors are used with (see the fixtures README).
    template = chat_template("qwen2_vl")
    tok = _tokenizer(QWEN_SPECIALS + ["<|im_start|>"], eos="<|im_end|>", template=template)
    patch, merge = 8, 2
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 256, "longest_edge": 1024}, patch_size=patch,
                                            temporal_patch_size=2, merge_size=merge)
    video_processor = Qwen2VLVideoProcessor(patch_size=patch, temporal_patch_size=2, merge_size=merge)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                    chat_template=template)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           in_channels=3, patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2,
                           window_size=patch * merge, fullatt_block_indexes=[1]),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    return _finish(model, tok), processor


@functools.lru_cache(maxsize=None)
def tiny_llava_1_5(seed: int = 0):
    """tiny_llava with llava-hf/llava-1.5-7b-hf's real chat template (what ALL_FAMILIES["llava"] is)."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    template = chat_template("llava")
    tok = _tokenizer(["</s>"], eos="</s>", template=template)
    image, patch = 16, 8
    image_processor = CLIPImageProcessor(size={"shortest_edge": image}, crop_size={"height": image, "width": image})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=template)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image, patch_size=patch, projection_dim=32),
        text_config=_llama_text(tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=(image // patch) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    return _finish(model, tok), processor


@functools.lru_cache(maxsize=None)
def tiny_llava_next(seed: int = 0):
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                              LlavaNextProcessor)

    template = chat_template("llava_next")
    tok = _tokenizer(["</s>"], eos="</s>", template=template)
    image, patch = 16, 8
    pinpoints = [[16, 16], [16, 32], [32, 16]]
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": image},
                                              crop_size={"height": image, "width": image},
                                              image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=template)
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image, patch_size=patch, projection_dim=32),
        text_config=_llama_text(tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default", vision_feature_layer=-2, image_seq_length=(image // patch) ** 2,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    return _finish(model, tok), processor


@functools.lru_cache(maxsize=None)
def tiny_paligemma(seed: int = 0):
    from transformers import (PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessor)

    tok = _tokenizer(["<bos>", "<eos>"], bos="<bos>", eos="<eos>")  # no chat template: prefix / suffix
    image, patch = 16, 8
    image_processor = SiglipImageProcessor(size={"height": image, "width": image})
    image_processor.image_seq_length = (image // patch) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, image_size=image, patch_size=patch),
        text_config=dict(model_type="gemma", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        image_token_index=processor.image_token_id, projection_dim=32,
    )
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    return _finish(model, tok), processor


@functools.lru_cache(maxsize=None)
def tiny_gemma3(seed: int = 0):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    template = chat_template("gemma3")
    specials = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>"]
    tok = _tokenizer(specials, bos="<bos>", eos="<eos>", template=template)
    tok._set_model_specific_special_tokens(special_tokens={
        "image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"})
    image, patch, tokens = 16, 4, 4  # 16 patches average-pooled to 2 x 2 image tokens
    image_processor = Gemma3ImageProcessor(size={"height": image, "width": image}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=template,
                                image_seq_length=tokens)
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    config = Gemma3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image, patch_size=patch),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                         sliding_window=64, layer_types=["sliding_attention", "full_attention"],
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        mm_tokens_per_image=tokens, image_token_index=ids["<image_soft_token>"],
        boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = [tok.eos_token_id, ids["<end_of_turn>"]]
    model = _finish(model, tok)
    model.generation_config.eos_token_id = [tok.eos_token_id, ids["<end_of_turn>"]]
    return model, processor


# Every family by name (model_type, except "idefics3_split"), each with its real chat template where it has one.
ALL_FAMILIES = {
    "idefics3": tiny_idefics3, "idefics3_split": tiny_idefics3_split, "smolvlm": tiny_smolvlm,
    "qwen2_vl": tiny_qwen2_vl, "qwen2_5_vl": tiny_qwen2_5_vl, "llava": tiny_llava_1_5,
    "llava_next": tiny_llava_next, "paligemma": tiny_paligemma, "gemma3": tiny_gemma3,
}
# SmolVLM and Qwen2.5-VL also pass the parametrised log-prob / shared-prefix tests (tests/train/test_logps.py,
# test_pair_logps.py). LLaVA-NeXT and split Idefics3 are not added there: their vision tower encodes tiles, not
# images, which those tests count; PaliGemma and Gemma 3 do not share the prefix.
BUILDERS.update({"smolvlm": tiny_smolvlm, "qwen2_5_vl": tiny_qwen2_5_vl})
