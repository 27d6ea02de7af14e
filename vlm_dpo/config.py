"""Typed configuration: `Config` composes the stage configs (each defined beside its stage), YAML files in
`configs/`, `key=value` overrides.

OmegaConf does the parsing and merging; structured (dataclass) configs give type checks, and struct mode
rejects unknown keys, so a typo such as `describe.n_sample=4` fails loudly instead of being ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .annotate import AnnotateConfig
from .describe import DescribeConfig
from .detect import DetectorConfig
from .eval.run import EvalConfig
from .ground import GroundingConfig, PromptConfig
from .images import DataConfig
from .models import TinyVLMSpec
from .offline import default_cache_dir
from .pairs.stage import PairsConfig
from .rft import RFTConfig
from .train.recipe import TrainConfig
from .vision_pretrain import VisionPretrainConfig
from .world.export import WorldSpec


@dataclass
class HallucinationConfig:
    """Systematic errors in the embedded VLM's SFT captions (see world/captions.py)."""
    cooccur: float = 0.6
    count: float = 0.25
    vague: float = 0.1


@dataclass
class SFTConfig:
    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.0
    grounded_share: float = 0.8  # share of SFT prompts that carry the grounding context
    detection_drop: float = 0.05  # drop objects from the SFT grounding context, like a detector's misses
    # share of grounded examples whose context gains one absent object the target does not name (a detector's
    # false positive): teaches looking at the image over copying the context
    false_detection: float = 0.1
    freeze_vision: bool = False  # keep the vision tower fixed during SFT (e.g. to keep a pretrained one intact)
    qa_share: float = 0.2  # share of examples that are POPE-style yes/no questions (so POPE can be asked)
    seed: int = 0
    log_every: int = 50


@dataclass
class VLMConfig:
    # "embedded" builds and trains the tiny SmolVLM (cached); otherwise a hub id or path of any HF
    # image-text-to-text model.
    model: str = "embedded"
    dtype: str = "float32"
    device: str = "cpu"
    spec: TinyVLMSpec = field(default_factory=TinyVLMSpec)
    sft: SFTConfig = field(default_factory=SFTConfig)
    hallucination: HallucinationConfig = field(default_factory=HallucinationConfig)
    # contrastive (+ dense patch) pretraining of the embedded VLM's vision tower before SFT (vision_pretrain.py)
    pretrain_vision: bool = True
    vision_pretrain: VisionPretrainConfig = field(default_factory=VisionPretrainConfig)


@dataclass
class Config:
    out: str = "runs/demo"
    cache_dir: str = field(default_factory=default_cache_dir)
    threads: int = 0  # torch threads; 0 = leave torch's default
    # Pipeline: train the embedded detector (then the tiny CLIP) in a 1-thread process beside the VLM build
    # (neither uses a second core well: YOLO's step is Python-bound, the tiny VLM's ops are small).
    concurrent_stages: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    world: WorldSpec = field(default_factory=WorldSpec)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    ground: GroundingConfig = field(default_factory=GroundingConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)
    describe: DescribeConfig = field(default_factory=DescribeConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rft: RFTConfig = field(default_factory=RFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    # Extra DPO runs the pipeline trains and evaluates beside the main one (see vlm_dpo/variants.py):
    # "no_context" (without context-robustness pairs), "mdpo" (with mDPO's image-conditional term).
    variants: list[str] = field(default_factory=list)


class ConfigError(ValueError):
    pass


def _open_plain_dicts(node) -> None:
    """Struct mode is for dataclass fields; plain dict fields (loss weights, model tables) take any key."""
    from omegaconf import DictConfig

    for key in list(node.keys()):
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if child._metadata.object_type in (None, dict):
                OmegaConf.set_struct(child, False)
            else:
                _open_plain_dicts(child)


def _yaml_layers(path: Path, seen: tuple[Path, ...] = ()) -> list:
    """A YAML file's layers: those of its `base:` file (a path relative to it), then its own keys."""
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `base:` files form a cycle ({' -> '.join(str(p) for p in seen)})")
    layer = OmegaConf.load(path)
    base = layer.pop("base", None) if isinstance(layer, DictConfig) else None
    if base is None:
        return [layer]
    return _yaml_layers(path.parent / str(base), seen + (path.resolve(),)) + [layer]


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = (),
                schema: type = Config):
    """Schema defaults <- YAML file (after its `base:` file, if any) <- `key=value` overrides, validated into
    a `schema` instance."""
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    _open_plain_dicts(base)
    layers = [base]
    try:
        if path is not None:
            layers += _yaml_layers(Path(path))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)
    except (ConfigKeyError, ConfigAttributeError) as e:
        src = f" in {path}" if path else ""
        raise ConfigError(f"unknown config key{src}: {e.msg if hasattr(e, 'msg') else e}".split("\n")[0]
                          + f" (full key: {getattr(e, 'full_key', '?')})") from None
    except ValidationError as e:
        raise ConfigError(f"invalid value for {getattr(e, 'full_key', '?')}: {str(e).splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0]) from None


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
