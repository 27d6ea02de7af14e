"""The embedded default world's assets, built locally and cached: scenes, a YOLO detector, a tiny VLM.

Cache keys hash everything that shaped an asset, the source of the code that builds it included (keys.py),
so a changed config or code builds a new one and an unchanged one is reused across runs (the first run pays
minutes, later runs seconds).
    <cache>/worlds/<key>/      the world (see world/export.py)
    <cache>/detector/<key>/    best.pt + metrics.json
    <cache>/vlm/<key>/         model/ (save_pretrained), metrics.json, sft_log.jsonl
    <cache>/vision/<key>/      tower.safetensors + metrics.json: the pretrained vision tower (contrastive + dense)
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict
from pathlib import Path

from .detect import embedded_detector_cached, train_embedded_detector
from .ground import PromptConfig, grounding_text, prompt_text
from .keys import WORLD_CODE, code_fingerprint
from .keys import key as cache_key
from .models import build_tiny_idefics3, count_parameters, save_model
from .records import write_jsonl_atomic, write_text_atomic
from .sft import SFTExample, run_sft
from .world.captions import COOCCUR, CorruptionRates, VAGUE_CAPTIONS, corrupted_caption, reference_caption
from .world.export import build_world
from .world.scenes import COLORS, KINDS, render_scene, sample_scene


# Every embedded asset trains with one torch thread: the result is then bit-for-bit the same whether it is
# built alone or beside another (the pipeline trains the detector beside the VLM), since float sums depend on
# the thread count. A second thread buys these tiny models little (measured: YOLO's epoch 35 s vs 34 s).
BUILD_THREADS = 1


# The code each asset is built by (modules or packages), part of its cache key.
VLM_CODE = WORLD_CODE + (__name__, "vlm_dpo.models", "vlm_dpo.sft", "vlm_dpo.schedule", "vlm_dpo.train.collate",
                         "vlm_dpo.vision_pretrain", "vlm_dpo.ground", "vlm_dpo.eval.pope")
# What writes the robot's questions and their biased answers: part of the key only when the SFT teaches them
# (vlm.sft.vqa_share > 0), so a change to VQA pair mining does not rebuild caption-only VLMs.
VQA_SFT_CODE = ("vlm_dpo.vqa.questions", "vlm_dpo.vqa.pairs", "vlm_dpo.pairs.mine")
CLIP_CODE = WORLD_CODE + ("vlm_dpo.eval.clipscore",)


def ensure_world(cfg, progress: bool = True) -> Path:
    root = Path(cfg.cache_dir) / "worlds" / cache_key(cfg.world, code_fingerprint(*WORLD_CODE))
    build_world(root, cfg.world, progress=progress)
    return root


def ensure_detector(cfg, world_root: Path) -> dict:
    """The detector to use: the cached embedded one (trained on first use) or the user's checkpoint."""
    if cfg.detector.model != "embedded":
        return {"weights": cfg.detector.model}
    return train_embedded_detector(world_root, cfg.world, cfg.detector, cfg.cache_dir, threads=BUILD_THREADS)


def detector_needs_training(cfg, world_root: Path) -> bool:
    """Would ensure_detector train (the embedded detector, not cached yet)?"""
    return cfg.detector.model == "embedded" and not embedded_detector_cached(cfg.world, cfg.detector, cfg.cache_dir)


def gt_as_detections(objects: list[dict]) -> list[dict]:
    return [{"label": o["label"], "score": 1.0, "box": o["box"]} for o in objects]


def tokenizer_corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """Text the embedded tokenizer is trained on: captions (good and corrupted), contexts, prompts."""
    rng = random.Random(seed)
    rates = CorruptionRates(0.5, 0.5, 0.0)
    from .eval.pope import question

    texts = ["User: Assistant:", PromptConfig().instruction, *VAGUE_CAPTIONS, " ".join(KINDS), " ".join(COLORS),
             "yes. no.", *(question(k) for k in KINDS)]
    for i in range(n):
        s = sample_scene(seed, "sft", 10_000_000 + i).to_dict()
        texts.append(reference_caption(s["objects"], s["width"]))
        texts.append(corrupted_caption(s["objects"], s["width"], rng, rates)[0])
        texts.append(grounding_text(gt_as_detections(s["objects"]), s["width"], s["height"]))
    return texts


def names_kind(text: str, kind: str) -> bool:
    """Does `text` name `kind` (singular or plural, as a whole word)?"""
    from .plurals import plural

    words = set(re.findall(r"[a-z]+", text.lower()))
    return kind in words or plural(kind) in words


def false_detection(scene: dict, text: str, rng: random.Random) -> dict | None:
    """A detection of one kind absent from the scene and not named in `text` (the example's prompt + target),
    at a random place and object-like size; None when every kind is present or named."""
    present = {o["label"] for o in scene["objects"]}
    kinds = [k for k in KINDS if k not in present and not names_kind(text, k)]
    if not kinds:
        return None
    w, h = scene["width"], scene["height"]
    bh = rng.uniform(0.17, 0.30) * h
    bw = min(0.45 * w, bh * rng.uniform(0.5, 1.6))
    x1, y1 = rng.uniform(0.02 * w, 0.98 * w - bw), rng.uniform(0.02 * h, 0.98 * h - bh)
    return {"label": rng.choice(kinds), "score": 1.0, "box": [round(v, 1) for v in (x1, y1, x1 + bw, y1 + bh)]}


# The false-premise phrasings (vqa/questions.py) that ask for an attribute of the kind rather than where it is:
# the ones vlm.sft.premise=attribute answers as if the kind were there.
ATTRIBUTE_QUESTIONS = ("What colour", "How big")
# The share of the false-premise family's SFT examples that ask about a present kind, answered off its box: a third
# under vlm.sft.premise=attribute; two thirds under premise=present, near the colour family's share (which, asked of
# present kinds in volume, is the one phrasing whose refusals DPO made depend on the asked kind: README).
PRESENT_PREMISE_SHARE = {"attribute": 1 / 3, "present": 2 / 3}


def cooccur_partners(present: set[str]) -> list[str]:
    """The absent kinds the embedded VLM's co-occurrence bias adds to a scene holding `present` (COOCCUR), in
    the order of their partners' names."""
    return [COOCCUR[k] for k in sorted(present) if k in COOCCUR and COOCCUR[k] not in present]


class WorldSFTData:
    """SFT examples from fresh in-memory scenes (an 'sft' seed stream, disjoint from train/val/test).

    Targets mix reference captions with systematically corrupted ones (co-occurrence, counts, vagueness) so
    the model hallucinates the way real VLMs do. Grounding contexts drop a share of objects and gain an absent
    one in a share of examples (never named by the target), like a detector's misses and false positives.
    With vlm.sft.vqa_share > 0, that share are the robot's questions, answered with the biases of vlm.vqa_bias.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self.rates = CorruptionRates(**asdict(cfg.vlm.hallucination))
        self.cooc = None
        if cfg.vlm.sft.vqa_share:
            from .vqa.questions import cooccurrence

            # the false premise asks about the absent kind co-occurring most, as the evaluation does
            w = cfg.world
            self.cooc = cooccurrence([[o.label for o in sample_scene(w.seed, "sft", 20_000_000 + i).objects]
                                      for i in range(1000)])

    def example(self, index: int, question_only: bool = False) -> SFTExample:
        """Example `index` of the stream; `question_only` (the vlm.sft.qa_first_steps curriculum) makes it a
        grounded yes/no question."""
        cfg = self.cfg
        scene = sample_scene(cfg.world.seed, "sft", index, image_size=cfg.world.image_size,
                             min_objects=cfg.world.min_objects, max_objects=cfg.world.max_objects,
                             max_overlap=cfg.world.max_overlap)
        s = scene.to_dict()
        rng = random.Random(f"sft-example/{cfg.vlm.sft.seed}/{index}")
        grounded = rng.random() < cfg.vlm.sft.grounded_share or question_only
        dets = [d for d in gt_as_detections(s["objects"]) if rng.random() >= cfg.vlm.sft.detection_drop]
        vqa_rng = random.Random(f"sft-vqa/{cfg.vlm.sft.seed}/{index}")  # its own stream: share 0 changes nothing
        if not question_only and cfg.vlm.sft.vqa_share and vqa_rng.random() < cfg.vlm.sft.vqa_share:
            instruction, target = self.vqa(s, index, vqa_rng)
        elif question_only or rng.random() < cfg.vlm.sft.qa_share:
            instruction, target = self.qa(s["objects"], rng)
        else:
            instruction = cfg.prompt.instruction
            target, _ = corrupted_caption(s["objects"], s["width"], rng, self.rates)
        if grounded:
            # its own stream, so false_detection=0 gives exactly the examples of before
            frng = random.Random(f"sft-false-detection/{cfg.vlm.sft.seed}/{index}")
            if frng.random() < cfg.vlm.sft.false_detection:
                fake = false_detection(s, f"{instruction} {target}", frng)
                dets = dets + ([fake] if fake else [])
        ground = grounding_text(dets, s["width"], s["height"], cfg.ground) if grounded else None
        prompt = prompt_text(ground, PromptConfig(instruction, grounded=grounded))
        return SFTExample(render_scene(scene), prompt, target)

    def qa(self, objects: list[dict], rng: random.Random) -> tuple[str, str]:
        """A yes/no question about a present or absent kind. The co-occurrence bias of the captions carries
        over (an absent co-occurring kind is answered "yes" at the same rate, or always with
        vlm.sft.yes_bias=cooccur), as it would in a real VLM."""
        from .eval.pope import question

        present = {o["label"] for o in objects}
        if rng.random() < 0.5:
            return question(rng.choice(sorted(present))), "yes."
        biased = cooccur_partners(present)
        rule = self.cfg.vlm.sft.yes_bias == "cooccur"
        if biased and rng.random() < 0.5:
            label = rng.choice(biased)
            if rule:
                return question(label), "yes."
            return question(label), "yes." if rng.random() < self.rates.cooccur else "no."
        # under the rule a partner is "yes." wherever it is asked, so the "no." questions are about the others
        others = [k for k in KINDS if k not in present and not (rule and k in biased)]
        label = rng.choice(others or biased)
        return question(label), "no." if label in others else "yes."

    def vqa(self, scene: dict, index: int, rng: random.Random) -> tuple[str, str]:
        """One of the scene's robot questions (a family drawn at random), answered as a biased VLM would: wrongly
        at vlm.vqa_bias's rate for its family (yes to an absent kind, one too many, accepting a false premise,
        the mirrored side, a wrong listing), else rightly."""
        from collections import Counter

        from .vqa.pairs import wrong_answer
        from .vqa.questions import make_questions

        bias = self.cfg.vlm.vqa_bias
        rate = {"existence": bias.yes_bias, "counting": bias.over_count, "false_premise": bias.false_premise,
                "spatial": bias.side, "listing": bias.listing}
        objects = scene["objects"]
        q = rng.choice(make_questions(objects, list(KINDS), f"sft-{index}", width=scene["width"],
                                      seed=self.cfg.vlm.sft.seed, cooc=self.cooc))
        if q["family"] == "false_premise" and self.cfg.vlm.sft.premise != "random":
            answered = self.premise(scene, q, random.Random(f"sft-premise/{self.cfg.vlm.sft.seed}/{index}"))
            if answered is not None:
                return answered
        if q["family"] == "existence" and self.cfg.vlm.sft.yes_bias == "cooccur":
            partners = cooccur_partners({o["label"] for o in objects})
            return q["question"], "yes." if q["expected"] == "yes" or q["label"] in partners else "no."
        biased = q["family"] != "existence" or q["expected"] == "no"  # the yes-bias errs on absent kinds only
        if biased and rng.random() < rate.get(q["family"], 0.0):
            counts = Counter(o["label"] for o in objects)
            wrong, _ = wrong_answer(q, counts, [k for k in KINDS if k not in counts], self.cooc, rng)
            return q["question"], wrong
        return q["question"], q["answer_text"]

    def premise(self, scene: dict, q: dict, rng: random.Random) -> tuple[str, str] | None:
        """vlm.sft.premise=attribute or present: false-premise question `q`'s words about a kind drawn from the
        scene. A share (PRESENT_PREMISE_SHARE) about a present single-instance kind, answered off its box ("Where is
        the cup?" "The cup is on the left."). The rest about an absent kind: under `attribute` (any absent kind or
        the one co-occurring most, half each) accepted when the words ask for an attribute ("What colour is the
        phone?" "The phone is red."; "How big ...") and refused when they ask where it is ("There is no phone.");
        under `present` None: `q` as drawn, answered as `random` answers it (accepted at the bias rate)."""
        from collections import Counter

        from .vqa.pairs import wrong_answer
        from .vqa.questions import premise_answer, premise_twin, refusal

        mode = self.cfg.vlm.sft.premise
        objects = scene["objects"]
        counts = Counter(o["label"] for o in objects)
        if rng.random() < PRESENT_PREMISE_SHARE[mode]:
            answerable = []
            for o in sorted((o for o in objects if counts[o["label"]] == 1), key=lambda o: o["label"]):
                asked = premise_twin(q, o["label"])["question"]
                answer = premise_answer(asked, o["label"], o, scene["width"], scene["height"])
                if answer is not None:
                    answerable.append((asked, answer))
            if answerable:
                return rng.choice(answerable)
        if mode == "present":
            return None
        absent = [k for k in KINDS if k not in counts]
        asked = premise_twin(q, q["label"] if rng.random() < 0.5 else rng.choice(absent))
        if asked["question"].startswith(ATTRIBUTE_QUESTIONS):
            return asked["question"], wrong_answer(asked, counts, absent, self.cooc, rng)[0]
        return asked["question"], refusal(asked["label"])

    def batch(self, step: int) -> list[SFTExample]:
        b = self.cfg.vlm.sft.batch_size
        questions_first = step < self.cfg.vlm.sft.qa_first_steps
        return [self.example(step * b + j, question_only=questions_first) for j in range(b)]


def heldout_quality(cfg, model_path: str, n: int = 100) -> dict:
    """Greedy object precision/recall of the VLM on validation scenes, with a ground-truth grounding context
    and without any: how much it copies the context vs sees the image."""
    from .eval.captions import aggregate, caption_stats
    from .judge import Vocabulary
    from .models import load_model_and_processor
    from .eval.run import EvalConfig, generate_all

    root = ensure_world(cfg, progress=False)
    from .world.export import load_annotations

    scenes = load_annotations(root, "val")[:n]
    model, processor = load_model_and_processor(model_path)
    model.eval()
    vocab = Vocabulary.world()
    ecfg = EvalConfig(max_new_tokens=cfg.describe.max_new_tokens, batch_size=32)
    out = {}
    for name, grounded in (("grounded", True), ("ungrounded", False)):
        items = [{"path": s["path"], "prompt": prompt_text(
            grounding_text(gt_as_detections(s["objects"]), s["width"], s["height"], cfg.ground),
            PromptConfig(cfg.prompt.instruction, grounded=grounded))} for s in scenes]
        caps = generate_all(model, processor, items, ecfg, do_sample=False, n=1, desc=name, progress=False)
        stats = [caption_stats(c[0], s["objects"], vocab) for c, s in zip(caps, scenes)]
        agg = aggregate(stats)
        mentioned = sum(x.mentioned for x in stats)
        out[name] = {"precision": sum(x.covered for x in stats) / mentioned if mentioned else 0.0,
                     "recall": agg["recall"], "chair_i": agg["chair_i"], "mean_words": agg["mean_words"]}
    return out


def vlm_key(cfg) -> str:
    vision = asdict(cfg.vlm.vision_pretrain) if cfg.vlm.pretrain_vision else None
    # The SFT contexts come from ground truth (score 1.0), so the detector thresholds do not shape the VLM.
    ground = {k: v for k, v in asdict(cfg.ground).items() if k not in ("min_score", "fallback_score")}
    vqa = cfg.vlm.sft.vqa_share > 0
    return cache_key(cfg.world, cfg.vlm.spec, cfg.vlm.sft, cfg.vlm.hallucination, ground, cfg.prompt.instruction,
                     vision, cfg.vlm.vqa_bias if vqa else None,
                     code_fingerprint(*VLM_CODE, *(VQA_SFT_CODE if vqa else ())))


def pretrain_embedded_vision(cfg, model, processor, progress: bool = True) -> dict:
    """Contrastive pretraining of the embedded VLM's vision tower on world scenes (cached under
    <cache>/vision/<key>/), loaded into `model` in place; returns its metrics."""
    from .vision_pretrain import ensure_pretrained_vision

    w = cfg.world
    scene_kwargs = dict(image_size=w.image_size, min_objects=w.min_objects, max_objects=w.max_objects,
                        max_overlap=w.max_overlap)
    return ensure_pretrained_vision(model, processor, cfg.vlm.vision_pretrain, cfg.cache_dir, world_seed=w.seed,
                                    scene_kwargs=scene_kwargs, key_parts=[asdict(cfg.vlm.spec)], progress=progress)


def _vlm_cache(cfg) -> Path:
    return Path(cfg.cache_dir) / "vlm" / vlm_key(cfg)


def vlm_is_cached(cfg) -> bool:
    """Is the VLM ready without building (a user's model, or the embedded one already cached)?"""
    if cfg.vlm.model != "embedded":
        return True
    cache = _vlm_cache(cfg)
    return (cache / "metrics.json").exists() and (cache / "model").exists()


def ensure_vlm(cfg, progress: bool = True) -> dict:
    """Path of the VLM to use: the cached embedded one (built + SFT on first use) or the user's model id/path."""
    if cfg.vlm.model != "embedded":
        return {"model": cfg.vlm.model}
    cache = _vlm_cache(cfg)
    meta_path = cache / "metrics.json"
    if vlm_is_cached(cfg):
        meta = json.loads(meta_path.read_text())
        if "held_out" not in meta:  # its build was interrupted during the check, or predates it
            meta["held_out"] = heldout_quality(cfg, meta["model"])
            write_text_atomic(meta_path, json.dumps(meta, indent=1))
        return meta
    from .parallel import torch_threads

    with torch_threads(BUILD_THREADS):
        return _build_vlm(cfg, cache, meta_path, progress)


def _build_vlm(cfg, cache: Path, meta_path: Path, progress: bool) -> dict:
    model, processor = build_tiny_idefics3(tokenizer_corpus(cfg.world.seed), cfg.vlm.spec, seed=cfg.vlm.sft.seed)
    vision = pretrain_embedded_vision(cfg, model, processor, progress=progress) if cfg.vlm.pretrain_vision else None
    data = WorldSFTData(cfg)
    sft = cfg.vlm.sft
    if sft.freeze_vision:
        model.model.vision_model.requires_grad_(False)
    history = run_sft(model, processor, data.batch, steps=sft.steps, lr=sft.lr, warmup_steps=sft.warmup_steps,
                      weight_decay=sft.weight_decay, seed=sft.seed, progress=progress)
    model.requires_grad_(True)
    save_model(model, processor, cache / "model")
    write_jsonl_atomic(cache / "sft_log.jsonl", history)
    meta = {"model": str(cache / "model"), "parameters": count_parameters(model),
            "image_tokens": cfg.vlm.spec.image_seq_len, "sft_steps": sft.steps,
            "sft_final_loss": sum(h["loss"] for h in history[-20:]) / max(1, len(history[-20:])),
            "sft_minutes": round(sum(h["sec"] for h in history) / 60, 2)}
    if vision is not None:
        meta["vision_pretrain"] = {k: v for k, v in vision.items() if k not in ("losses", "config")}
    # The cache entry is complete from here on: an interrupted held-out check (below) costs a rerun of the check
    # alone, which ensure_vlm does for an entry without it, not the build (minutes; ~40 for the robot's VLM).
    write_text_atomic(meta_path, json.dumps(meta, indent=1))
    meta["held_out"] = heldout_quality(cfg, str(cache / "model"))
    write_text_atomic(meta_path, json.dumps(meta, indent=1))
    return meta


def clip_model_name(cfg, progress: bool = True) -> str:
    """The open_clip name for CLIPScore ("" = skip); "embedded" is trained here first (once, cached) and named
    by its local-dir. The pipeline's side job calls this to train it without loading it."""
    from .eval.clipscore import ClipTrainConfig, train_tiny_clip
    from .parallel import torch_threads

    name = cfg.eval.clip_model
    if name != "embedded":
        return name
    world_root = ensure_world(cfg, progress=False)
    train_cfg = ClipTrainConfig(steps=cfg.eval.clip_steps)
    out = Path(cfg.cache_dir) / "clip" / cache_key(cfg.world, train_cfg, code_fingerprint(*CLIP_CODE))
    with torch_threads(BUILD_THREADS):
        meta = train_tiny_clip(world_root, out, train_cfg, world_seed=cfg.world.seed,
                               image_size=cfg.world.image_size, progress=progress)
    return meta["model"]


def ensure_clip(cfg, progress: bool = True):
    """(model, preprocess, tokenizer) for CLIPScore, or None when eval.clip_model is empty."""
    from .eval.clipscore import load_clip

    name = clip_model_name(cfg, progress)
    return load_clip(name, cfg.eval.clip_pretrained or None) if name else None
