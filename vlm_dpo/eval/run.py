"""`vlm-dpo eval`: evaluate image-text-to-text models on annotated images, the same way for every model.

For each model: greedy captions from the pipeline's own (grounded) prompt, sampled captions (temperature 1,
`n_samples` per image), all at the same max_new_tokens; CHAIR / recall / counts / length against the
annotations; POPE probes; preference accuracy on held-out pairs; 95% bootstrap intervals over images.
Captions and answers are written next to the metrics so every number can be traced to text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..describe import generate_captions
from ..images import open_image
from ..judge import Vocabulary, resolve_vocabulary
from ..records import write_jsonl_atomic, write_text_atomic
from ..shards import batches, is_main, local_device, processes
from .bootstrap import percentile_ci
from .captions import aggregate, bootstrap_cis, caption_stats
from .pope import make_probes, parse_answer, pope_metrics

HEADLINE = ("chair_i", "chair_s", "recall", "pope_f1", "mean_words")


@dataclass
class EvalConfig:
    split: str = "test"
    limit: int = 0  # 0 = all images of the split
    max_new_tokens: int = 24  # the same for every compared model
    n_samples: int = 4  # sampled captions per image (temperature 1)
    temperature: float = 1.0
    batch_size: int = 32
    pope_per_image: int = 2
    pope_grounded: bool = True  # ask POPE questions with the grounding context, as the pipeline prompts
    # Also ask them the other way (without the context when pope_grounded, with it otherwise): does the model
    # answer from the image, or echo the context? metrics pope_by_context / vqa.pope_f1_by_context.
    pope_both_contexts: bool = True
    vqa: bool = True  # the robot's questions (eval/vqa.py): models.<name>.vqa in metrics.json
    vqa_grounded: bool = True  # with the grounding context after the question
    # Each false-premise question also asked about a kind that is there (vqa/control.py): is a refusal a check of
    # the premise, or of the phrasing? vqa.true_premise_refusal and vqa.premise_balanced_accuracy.
    vqa_premise_control: bool = True
    bootstrap: int = 1000
    seed: int = 0
    # world | coco | detections (the labels in the detection records) | a .json/.yaml/.yml file of class -> list
    # of synonyms (e.g. data/vocabulary.example.yaml); judge.resolve_vocabulary, an unknown name is an error
    vocabulary: str = "world"
    models: dict[str, str] = field(default_factory=dict)  # name -> HF id/path, for `vlm-dpo eval` on any models
    # Ground truth of your own images (with data.images): JSONL of {image_id, objects: [{label, box}]}, image_id
    # being the path relative to data.images without suffix (as `vlm-dpo detect` names them). Empty = the world.
    annotations: str = ""
    # CLIPScore model: "embedded" = a tiny CLIP trained here on the world; any open_clip name / local-dir: /
    # hf-hub: id otherwise (with clip_pretrained, e.g. "openai"); "" = skip CLIPScore.
    clip_model: str = "embedded"
    clip_pretrained: str = ""
    clip_steps: int = 150  # training steps of the embedded tiny CLIP
    # See-don't-copy metrics (eval/grounding.py): contexts with controlled noise, the detector's natural
    # errors, and prompts without any context.
    robustness: bool = True
    noise_drop: float = 0.1
    noise_add: float = 0.05
    # Processes evaluating the parts of the models side by side, 1 torch thread each (vlm_dpo.parallel); 0 = auto.
    workers: int = 0


def generate_all(model, processor, items: list[dict], cfg: EvalConfig, *, do_sample: bool, n: int, desc: str,
                 progress: bool) -> list[list[str]]:
    """n captions per item, in batches seeded by their index. Under a launcher each process generates its
    share of the batches (vlm_dpo.shards) and every process gets all of them back in order: the same captions
    as one process."""
    procs = processes()
    out = []
    mine = batches(items, cfg.batch_size, (procs.index, procs.count))
    for bi, chunk in tqdm(mine, desc=desc, disable=not progress or not procs.main):
        torch.manual_seed(cfg.seed * 7919 + bi)
        out.append((bi, generate_captions(model, processor, [open_image(it["path"]) for it in chunk],
                                          [it["prompt"] for it in chunk], max_new_tokens=cfg.max_new_tokens,
                                          do_sample=do_sample, n=n, temperature=cfg.temperature)))
    if procs.launched:
        from accelerate.utils import gather_object

        out = sorted(gather_object(out), key=lambda b: b[0])
    return [caps for _, batch in out for caps in batch]


def caption_metrics(groups: list[list[str]], scenes: list[dict], vocab: Vocabulary, cfg: EvalConfig,
                    tokenizer=None) -> dict:
    stats = [[caption_stats(c, sc["objects"], vocab, tokenizer) for c in caps] for caps, sc in zip(groups, scenes)]
    m = aggregate([s for g in stats for s in g])
    m["ci"] = bootstrap_cis(stats, ("chair_i", "chair_s", "recall", "mean_words"), cfg.bootstrap, cfg.seed)
    return m


def pope_context(grounded: bool) -> str:
    """The name of a POPE prompt setting in metrics.json and <model>.pope.jsonl."""
    return "grounded" if grounded else "no_context"


def pope_eval(model, processor, items: list[dict], scenes: list[dict], labels: list[str], cfg: EvalConfig,
              progress: bool, grounded: bool | None = None) -> tuple[dict, list[dict]]:
    """POPE metrics per negative-sampling split (+ "all") and one row per probe. grounded: the grounding context
    after each question (default: cfg.pope_grounded)."""
    grounded = cfg.pope_grounded if grounded is None else grounded
    by_id = {it["image_id"]: it for it in items}
    probes = make_probes(scenes, labels, cfg.pope_per_image, cfg.seed)
    # The same (image, question) recurs across the three negative-sampling splits: ask each once, and
    # only for a few tokens (the answer is "yes." or "no.").
    unique: dict[tuple[str, str], int] = {}
    q_items, slots = [], []
    for p in probes:
        it = by_id[p["image_id"]]
        ground = f" {it['grounding']}" if grounded and it.get("grounding") else ""
        key = (p["image_id"], p["question"] + ground)
        if key not in unique:
            unique[key] = len(q_items)
            q_items.append({"path": it["path"], "prompt": key[1]})
        slots.append(unique[key])
    short = replace(cfg, max_new_tokens=min(cfg.max_new_tokens, 6))
    replies = [g[0] for g in generate_all(model, processor, q_items, short, do_sample=False, n=1, desc="pope",
                                          progress=progress)]
    answers = [replies[i] for i in slots]
    parsed = [parse_answer(a) for a in answers]
    out = {}
    for split in ("random", "popular", "adversarial"):
        idx = [i for i, p in enumerate(probes) if p["split"] == split]
        out[split] = pope_metrics([parsed[i] for i in idx], [probes[i]["answer"] for i in idx])
    out["all"] = pope_metrics(parsed, [p["answer"] for p in probes])
    rows = [p | {"context": pope_context(grounded), "reply": a, "parsed": q} for p, a, q in zip(probes, answers, parsed)]
    return out, rows


def robustness_metrics(model, processor, items, scenes, greedy, rob: dict, vocab, cfg: EvalConfig, progress: bool,
                       name: str) -> tuple[dict, list[dict]]:
    """echo/recovery under controlled noise and under the detector's natural errors; ungrounded precision:
    (metrics, one row per image of its noisy and ungrounded captions).

    rob = {"noisy_items": [...], "noisy_errors": [...], "natural_errors": [...], "ungrounded_items": [...]}
    """
    from .grounding import (bootstrap_rates, chair_by_context, echo_recovery_counts, hallucination_counts,
                            precision_counts, rates)

    noisy = generate_all(model, processor, rob["noisy_items"], cfg, do_sample=False, n=1, desc=f"{name} noisy",
                         progress=progress)
    ungrounded = generate_all(model, processor, rob["ungrounded_items"], cfg, do_sample=False, n=1,
                              desc=f"{name} ungrounded", progress=progress)
    out, ci = {}, {}
    for tag, caps, errs in (("", noisy, rob["noisy_errors"]), ("natural_", greedy, rob["natural_errors"])):
        counts = [echo_recovery_counts(c[0], e, vocab) for c, e in zip(caps, errs)]
        r = rates(counts)
        out[f"{tag}echo_rate"], out[f"{tag}recovery_rate"] = r["echo_rate"], r["recovery_rate"]
        out[f"{tag}context_errors"] = {"injected": r["injected"], "dropped": r["dropped"]}
        for k, v in bootstrap_rates(counts, cfg.bootstrap, cfg.seed).items():
            ci[f"{tag}{k}"] = v
    out["chair_i_by_context"] = chair_by_context([hallucination_counts(c[0], e, sc["objects"], vocab)
                                                  for c, e, sc in zip(greedy, rob["natural_errors"], scenes)])
    pc = [precision_counts(c[0], sc["objects"], vocab) for c, sc in zip(ungrounded, scenes)]

    def precision(pick):
        named = sum(n for _, n in pick)
        return sum(t for t, _ in pick) / named if named else 0.0

    out["precision_ungrounded"] = precision(pc)
    ci["precision_ungrounded"] = percentile_ci(pc, precision, cfg.bootstrap, cfg.seed)
    out["robustness_ci"] = ci
    rows = [{"image_id": it["image_id"], "noisy_prompt": ni["prompt"], "noisy_caption": n[0], "errors": e,
             "ungrounded_caption": u[0]}
            for it, ni, n, e, u in zip(items, rob["noisy_items"], noisy, rob["noisy_errors"], ungrounded)]
    return out, rows


def _mean_ci(values: list[float], n_boot: int, seed: int) -> tuple[float, float] | None:
    return percentile_ci(values, lambda pick: sum(pick) / len(pick), n_boot, seed)


def bootstrap_pope_f1(rows: list[dict], n_boot: int, seed: int) -> tuple[float, float] | None:
    """F1 interval resampling images (all probes of an image together)."""
    by_img: dict[str, list[dict]] = {}
    for r in rows:
        by_img.setdefault(r["image_id"], []).append(r)
    return percentile_ci(list(by_img.values()), lambda pick: pope_metrics(
        [r["parsed"] for g in pick for r in g], [r["answer"] for g in pick for r in g])["f1"], n_boot, seed)


def pope_confusion(pope_rows: list[dict]) -> dict[str, dict]:
    """image_id -> the image's adversarial POPE confusion counts (pope_tp, pope_fp, pope_fn, pope_tn)."""
    pope: dict[str, dict] = {}
    for r in pope_rows:
        if r["split"] == "adversarial":
            c = pope.setdefault(r["image_id"], {"pope_tp": 0, "pope_fp": 0, "pope_fn": 0, "pope_tn": 0})
            c["pope_" + {("yes", "yes"): "tp", ("yes", "no"): "fp", ("no", "yes"): "fn", ("no", "no"): "tn"}[
                (r["parsed"], r["answer"])]] += 1
    return pope


def per_image_rows(items: list[dict], scenes: list[dict], greedy: list[list[str]], pope_rows: list[dict],
                   vocab: Vocabulary, tokenizer=None) -> list[dict]:
    """One row per image: the greedy caption's CaptionStats and the image's adversarial POPE confusion counts,
    whose ratios of sums over images are the model's chair_i, chair_s, recall, mean_words and pope_f1 (so the
    report can bootstrap differences between models over the same images)."""
    from dataclasses import asdict

    pope = pope_confusion(pope_rows)
    empty = {"pope_tp": 0, "pope_fp": 0, "pope_fn": 0, "pope_tn": 0}
    return [{"image_id": it["image_id"], **asdict(caption_stats(g[0], sc["objects"], vocab, tokenizer)),
             **pope.get(it["image_id"], empty)} for it, sc, g in zip(items, scenes, greedy)]


# A model's evaluation comes in parts that need nothing from each other, so that a pool can spread the parts of
# several models over its workers (eval/stage.py): with three models on two cores, one model per worker leaves a
# core idle for a third of the stage. Each part seeds its own generation batches (generate_all), so a part's
# results are the same whichever process runs it and in whatever order; `assemble` puts a model's parts together.
def _captions_part(model, processor, items, scenes, cfg: EvalConfig, vocab, *, name, progress, clip, robustness):
    """Greedy and sampled captions, their metrics, CLIPScore and the see-don't-copy metrics of the greedy ones."""
    greedy = generate_all(model, processor, items, cfg, do_sample=False, n=1, desc=f"{name} greedy", progress=progress)
    sampled = generate_all(model, processor, items, cfg, do_sample=True, n=cfg.n_samples, desc=f"{name} sampled",
                           progress=progress) if cfg.n_samples else [[] for _ in items]
    tok = processor.tokenizer
    m_greedy = caption_metrics(greedy, scenes, vocab, cfg, tok)
    metrics = {"greedy": m_greedy, "sampled": caption_metrics(sampled, scenes, vocab, cfg, tok) if cfg.n_samples else {}}
    rows = {"captions": [{"image_id": it["image_id"], "prompt": it["prompt"], "greedy": g[0], "samples": s}
                         for it, g, s in zip(items, greedy, sampled)],
            "per_image": per_image_rows(items, scenes, greedy, [], vocab, tok)}
    if robustness is not None:
        metrics["robustness"], rows["robustness"] = robustness_metrics(model, processor, items, scenes, greedy,
                                                                       robustness, vocab, cfg, progress, name)
    if clip is not None:
        from .clipscore import clip_scores

        scores = clip_scores(*clip, [open_image(it["path"]) for it in items], [g[0] for g in greedy])
        metrics["clip_score"] = sum(scores) / max(1, len(scores))
        metrics["clip_score_ci"] = _mean_ci(scores, cfg.bootstrap, cfg.seed)
    return metrics, rows


def _pope_part(model, processor, items, scenes, cfg: EvalConfig, vocab, *, progress, **_):
    """POPE with the pipeline's prompt setting (the headline pope_f1) and, with pope_both_contexts, the other."""
    labels = list(vocab.classes)
    pope, pope_rows = pope_eval(model, processor, items, scenes, labels, cfg, progress)
    by_context = {pope_context(cfg.pope_grounded): pope}
    other_rows = []
    if cfg.pope_both_contexts:
        other, other_rows = pope_eval(model, processor, items, scenes, labels, cfg, progress,
                                      grounded=not cfg.pope_grounded)
        by_context[pope_context(not cfg.pope_grounded)] = other
    f1_ci = bootstrap_pope_f1([r for r in pope_rows if r["split"] == "adversarial"], cfg.bootstrap, cfg.seed)
    return ({"pope": pope, "pope_by_context": by_context, "pope_f1_ci": f1_ci},
            {"pope": pope_rows + other_rows})


def _vqa_part(model, processor, items, scenes, cfg: EvalConfig, vocab, *, progress, **_):
    """The robot's questions (eval/vqa.py)."""
    from .vqa import vqa_eval

    vqa, rows = vqa_eval(model, processor, items, scenes, list(vocab.classes), vocab, cfg, progress=progress)
    return {"vqa": vqa}, {"vqa": rows}


MODEL_PARTS = {"captions": _captions_part, "pope": _pope_part, "vqa": _vqa_part}


def model_parts(cfg: EvalConfig) -> list[str]:
    """The parts of a model's evaluation under `cfg` (the VQA part only with cfg.vqa)."""
    return [p for p in MODEL_PARTS if p != "vqa" or cfg.vqa]


def load_for_eval(model_path: str, device: str = "cpu"):
    from ..models import load_model_and_processor

    model, processor = load_model_and_processor(model_path, device=local_device(device))
    model.eval()
    return model, processor


def evaluate_part(model_path: str, name: str, part: str, items: list[dict], scenes: list[dict], cfg: EvalConfig, *,
                  progress: bool = False, device: str = "cpu", clip=None, robustness: dict | None = None,
                  loaded=None) -> tuple[dict, dict]:
    """One part of a model's evaluation (MODEL_PARTS): (metrics, rows to write), for `assemble`. `loaded`: the
    (model, processor) already loaded from model_path."""
    model, processor = loaded or load_for_eval(model_path, device)
    return MODEL_PARTS[part](model, processor, items, scenes, cfg, resolve_vocabulary(cfg.vocabulary), name=name,
                             progress=progress, clip=clip, robustness=robustness)


def assemble(model_path: str, name: str, parts: dict[str, tuple[dict, dict]], cfg: EvalConfig,
             out_dir: Path) -> dict:
    """A model's metrics from its parts (evaluate_part); the main process writes them with the captions, POPE
    answers, VQA answers, robustness captions and per-image rows to out_dir/<name>.*."""
    cap, cap_rows = parts["captions"]
    pope, pope_rows = parts["pope"]
    metrics = {k: v for k, v in cap["greedy"].items() if k != "ci"}
    metrics["pope_f1"] = pope["pope"]["adversarial"]["f1"]
    metrics["ci"] = dict(cap["greedy"]["ci"]) | {"pope_f1": pope["pope_f1_ci"]}
    metrics.update(cap.get("robustness", {}))
    if "clip_score" in cap:
        metrics["clip_score"] = cap["clip_score"]
        metrics["ci"]["clip_score"] = cap["clip_score_ci"]
    if "vqa" in parts:
        metrics["vqa"] = parts["vqa"][0]["vqa"] | {
            "pope_f1": metrics["pope_f1"],
            "pope_f1_by_context": {c: m["adversarial"]["f1"] for c, m in pope["pope_by_context"].items()}}
    metrics["sampled"] = cap["sampled"]
    metrics["pope"] = pope["pope"]
    metrics["pope_by_context"] = pope["pope_by_context"]
    metrics["model"] = model_path
    if not is_main():  # under a launcher: the same metrics in every process, written by the main one
        return metrics
    write_jsonl_atomic(out_dir / f"{name}.captions.jsonl", cap_rows["captions"])
    write_jsonl_atomic(out_dir / f"{name}.pope.jsonl", pope_rows["pope"])
    if "robustness" in cap_rows:
        write_jsonl_atomic(out_dir / f"{name}.robustness.jsonl", cap_rows["robustness"])
    if "vqa" in parts and parts["vqa"][1]["vqa"]:
        write_jsonl_atomic(out_dir / f"{name}.vqa.jsonl", parts["vqa"][1]["vqa"])
    confusion = pope_confusion([r for r in pope_rows["pope"] if r["context"] == pope_context(cfg.pope_grounded)])
    write_jsonl_atomic(out_dir / f"{name}.per_image.jsonl",
                       [r | confusion.get(r["image_id"], {}) for r in cap_rows["per_image"]])
    write_text_atomic(out_dir / f"{name}.metrics.json", json.dumps(metrics, indent=1))
    return metrics


def cached_result(out_dir: Path, name: str, model_path: str) -> dict | None:
    """The model's finished results in out_dir (the same model by content, eval/stage.py, maybe at another path:
    they name the path asked), or None."""
    done = Path(out_dir) / f"{name}.metrics.json"
    return json.loads(done.read_text()) | {"model": model_path} if done.exists() else None


def evaluate_model(model_path: str, name: str, items: list[dict], scenes: list[dict], cfg: EvalConfig,
                   out_dir: Path, *, progress: bool = True, device: str = "cpu", clip=None,
                   robustness: dict | None = None) -> dict:
    """All metrics of one model on `items` (image_id, path, prompt, grounding) with ground truth `scenes`: its
    parts one after the other in this process, then assembled and written."""
    out_dir = Path(out_dir)
    cached = cached_result(out_dir, name, model_path)
    if cached is not None:
        return cached
    loaded = load_for_eval(model_path, device)
    parts = {part: evaluate_part(model_path, name, part, items, scenes, cfg, progress=progress, device=device,
                                 clip=clip, robustness=robustness, loaded=loaded) for part in model_parts(cfg)}
    return assemble(model_path, name, parts, cfg, out_dir)
