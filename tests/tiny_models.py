"""Tiny random image-text-to-text models of three families, built from transformers config classes (no downloads).

Each builder returns (model, processor): fp32, eval mode, deterministic from `seed`, cached per session (treat the
returned objects as read-only; build a fresh one with `.__wrapped__(seed)` if a test must mutate weights).
Tokenizers are byte-level BPEs trained here on `CORPUS` (`vlm_dpo.models.train_tokenizer`) plus each family's
special tokens, with a chat template of our own that emits the tokens the real processor expands.

  tiny_idefics3()  SmolVLM/Idefics3, 32x32 images -> 4 image tokens (no splitting)
  tiny_qwen2_vl()  Qwen2-VL, patch 8 / merge 2 / 256..1024 pixels -> 1..4 image tokens, M-RoPE sections [2, 3, 3]
  tiny_llava()     LLaVA with a CLIP tower (16x16 images, patch 4 -> 16 image tokens) and a Llama text model
"""

from __future__ import annotations

import functools

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
