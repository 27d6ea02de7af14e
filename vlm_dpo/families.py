"""Everything family-specific, in one registry entry per transformers `model_type`.

The rest of the toolkit asks `family_of(model)` (or `family_for(model_type)`) what it needs to know instead of
testing names: which parameters are the vision tower and the connector (freezing, learning-rate groups), whether
the vision features can be computed once per pair and the prompt prefix shared between chosen and rejected (see
train/logps.py and train/packing.py), whether positions are 3-D M-RoPE ids, what the forward does to logits
after the LM head, and which per-token fields mark completion tokens.

Adding a family = one `Family(...)` entry here + a tiny random model of it in tests/tiny_models.py and its tests.
`tested=True` marks families with a tiny model in the test suite; the others follow the same transformers code
paths (read, not tested): check a real checkpoint once with `train.logps.pair_parity` and `head_parity`.
An unknown `model_type` gets `GENERIC`: plain forward per row, no sharing, substring matching of module names.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    model_type: str
    # Parameter-name substrings of the vision tower and of the connector (projector / merger / resampler).
    # A name matching a connector pattern is connector even when it also matches a vision pattern
    # (Qwen2-VL's merger lives inside `visual`).
    vision: tuple[str, ...] = ("vision", "visual")
    connector: tuple[str, ...] = ("connector", "projector", "merger")
    # The base takes `mm_encoder_outputs={"image": get_image_features(...)}`: one vision pass per pair.
    shared_vision: bool = False
    # A plain causal text decoder that takes a custom 4-D mask and explicit positions: one packed row per pair.
    # Not for families that attend bidirectionally over the image / prefix (PaliGemma, Gemma 3).
    shared_prefix: bool = False
    mrope: bool = False  # 3-D M-RoPE positions built by the base's own `get_rope_index`
    # Does the forward apply the text config's `final_logit_softcapping` to the LM head output?
    softcap_in_forward: bool = True
    # Scaling the forward applies after the head: ("div" | "mul", text-config field).
    logit_rule: tuple[str, str] | None = None
    # Values that per-token fields take on completion tokens (default 0 for every such field).
    completion_fill: dict[str, int] = field(default_factory=dict)
    # The token generation stops at (default: the tokenizer's eos_token); the completion ends with it.
    end_of_turn: str | None = None
    # For families without a chat template: the completion as a format of {text} and {end}; None = render the
    # assistant turn with the model's own chat template (train/collate.py render_completion).
    completion_format: str | None = None
    tested: bool = False

    def is_connector(self, param_name: str) -> bool:
        return any(p in param_name for p in self.connector)

    def is_vision(self, param_name: str) -> bool:
        return not self.is_connector(param_name) and any(p in param_name for p in self.vision)


def _entries(*families: Family) -> dict[str, Family]:
    return {f.model_type: f for f in families}


FAMILIES: dict[str, Family] = _entries(
    # SmolVLM / Idefics3: SigLIP tower `model.vision_model`, pixel-shuffle MLP `model.connector`.
    Family("idefics3", vision=("vision_model",), connector=("connector",), shared_vision=True, shared_prefix=True,
           tested=True),
    Family("smolvlm", vision=("vision_model",), connector=("connector",), shared_vision=True, shared_prefix=True,
           tested=True),
    Family("idefics2", vision=("vision_model",), connector=("connector",), shared_vision=True, shared_prefix=True),
    # Qwen2-VL / 2.5-VL: the patch merger (the connector) sits inside `model.visual`.
    Family("qwen2_vl", vision=("visual",), connector=("visual.merger",), shared_vision=True, shared_prefix=True,
           mrope=True, tested=True),
    Family("qwen2_5_vl", vision=("visual",), connector=("visual.merger",), shared_vision=True, shared_prefix=True,
           mrope=True, tested=True),
    Family("llava", vision=("vision_tower",), connector=("multi_modal_projector",), shared_vision=True,
           shared_prefix=True, tested=True),
    # LLaVA-NeXT: llava-v1.6-mistral-7b-hf's chat template writes the assistant turn as " text<\s> " (a typo for
    # </s>) and has no generation prompt, so the template's own turn would train "<\s>" as text before EOS: the
    # completion is " text</s>" (what the model generates after "[/INST]").
    Family("llava_next", vision=("vision_tower",), connector=("multi_modal_projector", "image_newline"),
           shared_vision=True, shared_prefix=True, completion_format=" {text}{end}", tested=True),
    Family("mistral3", vision=("vision_tower",), connector=("multi_modal_projector",), shared_vision=True,
           shared_prefix=True),
    # PaliGemma marks the suffix (completion) with token_type_ids = 1; its prefix attends bidirectionally.
    Family("paligemma", vision=("vision_tower",), connector=("multi_modal_projector",), shared_vision=True,
           completion_fill={"token_type_ids": 1}, completion_format="{text}{end}", tested=True),
    # Gemma 3's VLM forward does not apply final_logit_softcapping; bidirectional attention over image tokens.
    Family("gemma3", vision=("vision_tower",), connector=("multi_modal_projector",), shared_vision=True,
           softcap_in_forward=False, end_of_turn="<end_of_turn>", tested=True),
    # Logit scaling in the forward after the head (not tested: no tiny model; read from transformers 5.x).
    Family("granite_docling", logit_rule=("div", "logits_scaling")),
    Family("granite4_vision", logit_rule=("div", "logits_scaling")),
    Family("hyperclovax_vision_v2", logit_rule=("mul", "logits_scaling")),
    Family("cohere_compass", logit_rule=("mul", "logit_scale")),
)

GENERIC = Family("")


def family_for(model_type: str) -> Family:
    """The registry entry of a `config.model_type` (GENERIC for an unknown one)."""
    return FAMILIES.get(model_type or "", GENERIC)


def unwrap_model(model):
    """The transformers model under DDP / FSDP (`.module`) and PEFT (`get_base_model()`) wrappers."""
    for _ in range(8):
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            inner = model.get_base_model()
            if inner is not model:
                model = inner
                continue
        if type(model).__name__ in ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel") and \
                hasattr(model, "module"):
            model = model.module
            continue
        break
    return model


def model_type_of(model) -> str:
    """`config.model_type` of a model, through its wrappers."""
    return getattr(getattr(unwrap_model(model), "config", None), "model_type", "") or ""


def family_of(model) -> Family:
    return family_for(model_type_of(model))
