"""Typed configuration: `Config` composes the stage configs (each defined beside its stage), YAML files in
`configs/`, `key=value` overrides.

OmegaConf does the parsing and merging; structured (dataclass) configs give type checks, and struct mode
rejects unknown keys, so a typo such as `describe.n_sample=4` fails loudly instead of being ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .annotate import AnnotateConfig
from .ask import AskConfig
from .checks import FieldValueError, at_least, fraction, one_of, positive
from .describe import DescribeConfig
from .detect import DetectorConfig
from .eval.run import EvalConfig
from .ground import GroundingConfig, PromptConfig
from .images import DataConfig
from .models import TinyVLMSpec
from .offline import default_cache_dir
from .pairs.stage import PairsConfig
from .rft import RFTConfig
from .train.recipe import TrainConfig, check_ranges as check_train_ranges
from .vision_pretrain import VisionPretrainConfig
from .world.export import WorldSpec


@dataclass
class HallucinationConfig:
    """Systematic errors in the embedded VLM's SFT captions (see world/captions.py)."""
    cooccur: float = 0.6
    count: float = 0.25
    vague: float = 0.1

    def __post_init__(self) -> None:
        fraction(self, "cooccur", "count", "vague")


@dataclass
class VQABiasConfig:
    """Systematic errors in the embedded VLM's SFT answers to the robot's questions (vlm.sft.vqa_share), the ones
    real VLMs show and DPO's VQA pairs should fix (vqa/pairs.py wrong_answer makes each): the share of questions of
    a family answered wrongly."""
    yes_bias: float = 0.6  # existence: "yes." about an absent kind
    over_count: float = 0.5  # counting: one too many
    false_premise: float = 0.8  # answering as if the absent kind were there instead of refusing
    side: float = 0.3  # spatial: the mirrored answer
    listing: float = 0.4  # listing: a co-occurring absent kind added, or a present one left out

    def __post_init__(self) -> None:
        fraction(self, "yes_bias", "over_count", "false_premise", "side", "listing")


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
    # share of examples that are the robot's questions (vqa/questions.py), answered with vlm.vqa_bias's errors;
    # 0 (default) gives exactly the examples of before (its own random stream)
    vqa_share: float = 0.0
    # How the answers' yes-bias is drawn. "random": "yes." about an absent co-occurring kind at
    # vlm.hallucination.cooccur's rate, to a robot's existence question about an absent kind at vlm.vqa_bias.yes_bias's
    # rate; from the prompt that is noise, and a 4-layer language model then learns only the base rate
    # (scripts/yes_no_text_probe.py). "cooccur": "yes." exactly about the absent COOCCUR partner of a kind that is
    # there, a rule the model can learn from the prompt (with the lookup beneath it) and DPO can unlearn.
    yes_bias: str = "random"
    # How the robot's false-premise questions are answered. "random": about the absent kind co-occurring most,
    # accepted at vlm.vqa_bias.false_premise's rate, else refused; those phrasings are never asked about a kind that
    # is there, so a model can only learn to refuse by the words (README: true premises refused as often as false
    # ones after DPO). "attribute", a rule: the same phrasings also about a present kind, answered off its box; about
    # an absent kind accepted when they ask for an attribute ("what colour", "how big": a colour or size made up)
    # and refused when they ask where it is. Refusing then depends on the asked kind, and DPO has the attribute
    # questions to fix. "present": two thirds of them about a present kind, answered off its box (as instruction data
    # asks "where is the cup?" of cups that are there), the rest as "random"; the model then has the phrasings asked
    # of present kinds, as the colour family has "what colour", for DPO to make refusing depend on the asked kind.
    premise: str = "random"
    # a curriculum: the first qa_first_steps steps are grounded yes/no questions only, so the language model learns
    # the context lookup (a plateau of hundreds of steps) before captions and the robot's questions share its steps
    qa_first_steps: int = 0
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        at_least(self, 1, "steps", "batch_size", "log_every")
        at_least(self, 0, "warmup_steps", "weight_decay", "qa_first_steps")
        positive(self, "lr")
        fraction(self, "grounded_share", "detection_drop", "false_detection", "qa_share", "vqa_share")
        one_of(self, "yes_bias", ("random", "cooccur"))
        one_of(self, "premise", ("random", "attribute", "present"))
        if self.qa_first_steps > self.steps:
            raise FieldValueError("qa_first_steps", f"must be <= steps ({self.steps}), got {self.qa_first_steps}")


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
    vqa_bias: VQABiasConfig = field(default_factory=VQABiasConfig)  # used when sft.vqa_share > 0
    # contrastive (+ dense patch) pretraining of the embedded VLM's vision tower before SFT (vision_pretrain.py)
    pretrain_vision: bool = True
    vision_pretrain: VisionPretrainConfig = field(default_factory=VisionPretrainConfig)


@dataclass
class Config:
    out: str = "runs/demo"
    cache_dir: str = field(default_factory=default_cache_dir)
    # torch threads of the main process (0 = leave torch's default); when set, also the CPU cores the automatic
    # worker pools use (describe.workers / eval.workers = 0): threads=1 runs on one core, no pool, no side job.
    threads: int = 0
    # Pipeline: train the embedded detector (then the tiny CLIP) in a 1-thread process beside the VLM build
    # (neither uses a second core well: YOLO's step is Python-bound, the tiny VLM's ops are small). Not at threads=1.
    concurrent_stages: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    world: WorldSpec = field(default_factory=WorldSpec)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    ground: GroundingConfig = field(default_factory=GroundingConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)
    describe: DescribeConfig = field(default_factory=DescribeConfig)
    ask: AskConfig = field(default_factory=AskConfig)  # `vlm-dpo ask`: the robot's questions (vlm_dpo/ask.py)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rft: RFTConfig = field(default_factory=RFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    # Extra DPO runs the pipeline trains and evaluates beside the main one (see vlm_dpo/variants.py):
    # "no_context" (without context-robustness pairs), "mdpo" (with mDPO's image-conditional term).
    variants: list[str] = field(default_factory=list)
    # DPO rounds (vlm_dpo/rounds.py): 1 = describe -> pairs -> DPO once from the SFT model; r > 1 repeats them from
    # each round's model on its own captions (iterative, on-policy DPO), the last round's model evaluated as "dpo"
    rounds: int = 1
    # `vlm-dpo seeds`: the whole pipeline once per seed (vlm_dpo/seeds.py), each in <out>/seed-<s>
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    def __post_init__(self) -> None:
        at_least(self, 0, "threads")
        at_least(self, 1, "rounds")
        if self.pairs.mine_answers and not self.ask.n_samples:
            raise FieldValueError("ask.n_samples", "must be > 0 with pairs.mine_answers: mined VQA pairs compare "
                                                   "sampled answers")


class ConfigError(ValueError):
    pass


# Range checks of config sections whose dataclasses live in modules whose source keys cached assets (editing
# those would rebuild the embedded world / VLM) or in the training package (train.recipe.check_ranges, which
# train_dpo runs too); run on the loaded config.
def _check_eval(c) -> None:
    at_least(c, 1, "max_new_tokens", "batch_size")
    at_least(c, 0, "limit", "n_samples", "pope_per_image", "bootstrap", "clip_steps", "workers")
    positive(c, "temperature")
    fraction(c, "noise_drop", "noise_add")


def _check_world(c) -> None:
    at_least(c, 0, "n_train", "n_val", "n_test")
    at_least(c, 1, "image_size", "min_objects")
    at_least(c, c.min_objects, "max_objects")
    fraction(c, "max_overlap")


def _check_ground(c) -> None:
    fraction(c, "min_score")
    at_least(c, 1, "max_classes")
    if c.fallback_score is not None:
        fraction(c, "fallback_score")
        if c.fallback_score > c.min_score:
            raise FieldValueError("fallback_score", f"must not exceed min_score ({c.min_score}), got "
                                                    f"{c.fallback_score!r}")


def _check_vision_pretrain(c) -> None:
    at_least(c, 0, "steps", "warmup_steps", "weight_decay", "dense_weight", "eval_scenes")
    at_least(c, 1, "batch_size")
    positive(c, "lr")


def _check_annotate(c) -> None:
    fraction(c, "overlap")
    at_least(c, 0, "limit", "port")
    at_least(c, 1, "per_image")


SECTION_CHECKS = {"train": check_train_ranges, "eval": _check_eval, "world": _check_world, "ground": _check_ground,
                  "vlm.vision_pretrain": _check_vision_pretrain, "annotate": _check_annotate}


def _section(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def _failing_node(node, path: str = "") -> tuple[str, Exception] | None:
    """The deepest dataclass section of a merged config whose construction fails, and its error."""
    for k in node.keys():
        child = node._get_node(k)
        if isinstance(child, DictConfig) and child._metadata.object_type not in (None, dict):
            found = _failing_node(child, f"{path}{k}.")
            if found:
                return found
    if path:
        try:
            OmegaConf.to_object(node)
        except ValueError as e:
            return path.rstrip("."), e
    return None


def _value_error(merged, e: ValueError) -> ConfigError:
    """A dataclass's own check failed while building the config: name its full key."""
    found = _failing_node(merged)
    where, err = found if found else ("", e)
    if isinstance(err, FieldValueError):
        return ConfigError(f"invalid value: {where + '.' if where else ''}{err}")
    return ConfigError(f"invalid value in {where or 'the config'}: {str(err).splitlines()[0]}")


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


def _yaml_problem(e) -> str:
    """One line of a YAML parser error: what is wrong and where (line, column)."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else what


def _yaml_layers(path: Path, seen: tuple[Path, ...] = ()) -> list:
    """A YAML file's layers: those of its `base:` file (a path relative to it), then its own keys."""
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `base:` files form a cycle ({' -> '.join(str(p) for p in seen)})")
    try:
        layer = OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
    if layer is None:
        layer = OmegaConf.create({})  # an empty file
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (got a {type(layer).__name__})")
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
        for o in overrides:
            try:
                layers.append(OmegaConf.from_dotlist([o]))
            except yaml.YAMLError as e:
                raise ConfigError(f"override {o!r}: not valid YAML ({_yaml_problem(e)})") from None
        merged = OmegaConf.merge(*layers)
        try:
            obj = OmegaConf.to_object(merged)
        except ValueError as e:
            raise _value_error(merged, e) from None
        if schema is Config:
            for name, check in SECTION_CHECKS.items():
                try:
                    check(_section(obj, name))
                except FieldValueError as e:
                    raise ConfigError(f"invalid value: {name}.{e}") from None
        return obj
    except (ConfigKeyError, ConfigAttributeError) as e:
        src = f" in {path}" if path else ""
        raise ConfigError(f"unknown config key{src}: {e.msg if hasattr(e, 'msg') else e}".split("\n")[0]
                          + f" (full key: {getattr(e, 'full_key', '?')})") from None
    except ValidationError as e:
        raise ConfigError(f"invalid value for {getattr(e, 'full_key', '?')}: {str(e).splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    except TypeError as e:  # e.g. OmegaConf refusing to merge a list into the config
        raise ConfigError(str(e).splitlines()[0]) from None


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
