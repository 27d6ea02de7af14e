"""Ask: the robot's questions about each image, answered by a VLM and judged (issue #17's question stage).

    image -> detections -> questions (vqa/questions.py) -> prompt (question + grounding context, configurable)
          -> greedy answer (+ ask.n_samples sampled ones) -> parsed and judged (vqa/answers.py)
          -> <out>/vqa/<split>.jsonl + .metrics.json

What the answers are judged against (`ask.truth`):
    detections  the detections the grounding context states (score >= ground.min_score, or the one best guess
                above ground.fallback_score on an image with none): for a folder of your own images. Colour
                questions need colours, which a detector does not give: they are asked only against the world's
                ground truth.
    world       the embedded world's annotations of the split (kinds, colours, boxes): for evaluation.
With `ask.premise_control` (on by default), each image's false-premise question is asked once more in the same
words about a kind that is there (vqa/control.py, family "premise_control", qid <image_id>/premise_control), so the
metrics tell a model that checks the premise from one that refuses the phrasing: true_premise_refusal and
premise_balanced_accuracy, as the evaluation reports them. The controls come after every question, in batches of
their own (the questions' answers are what they would be without them), and are answered greedily only: they
measure, they are not mining candidates.
One record per question: {qid, image_id, file, family, question, prompt, grounding, label, other, expected,
answer, answer_kind, verdict, samples}, the greedy answer's reading and verdict at the top and each sampled answer
judged alike in `samples`: [{answer, answer_kind, verdict}, ...] (empty without ask.n_samples). The samples are
what `vlm-dpo pairs` mines VQA pairs from (pairs.answers, vqa/mine.py); the metrics file holds vqa/metrics.py's
summary of the greedy answers. Resumable like describe (batches of questions, each sampled under the seed of its
index, so a resumed run samples what an uninterrupted one would; a finished file is reused while the model,
images and settings are unchanged).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from .checks import FieldValueError, at_least, positive
from .ground import PromptConfig, context_detections, grounding_text, prompt_text
from .images import DataError, image_items, open_image
from .keys import images_fingerprint, key, model_fingerprint
from .records import ResumableJsonl, read_jsonl, write_text_atomic
from .run import RunFolder, apply_threads
from .shards import batches
from .vqa.answers import judged
from .vqa.control import CONTROL_FAMILY, premise_controls
from .vqa.metrics import vqa_metrics
from .vqa.questions import FAMILIES, cooccurrence, make_questions

TRUTHS = ("detections", "world")


@dataclass
class AskConfig:
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    grounded: bool = True  # the grounding context after the question, as captions have it
    truth: str = "detections"  # detections | world (see the module docstring)
    max_new_tokens: int = 16
    # Sampled answers per question besides the greedy one, each judged: the candidates of mined VQA pairs.
    n_samples: int = 0
    temperature: float = 1.0  # of the sampled answers
    batch_size: int = 32  # questions per generate call
    limit: int = 0  # 0 = every image of the split
    seed: int = 0  # which phrasing and which kinds each image is asked about, and the sampled answers
    # Each false-premise question asked again about a present kind (vqa/control.py): true_premise_refusal and
    # premise_balanced_accuracy in the metrics. Greedy only; not mined.
    premise_control: bool = True

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size", "max_new_tokens")
        at_least(self, 0, "limit", "n_samples")
        positive(self, "temperature")
        if self.truth not in TRUTHS:
            raise FieldValueError("truth", f"must be one of {', '.join(TRUTHS)}, got {self.truth!r}")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise FieldValueError("families", f"must be a non-empty list of {', '.join(FAMILIES)}, got "
                                              f"{self.families!r}")


def question_items(cfg, split: str, detections_path: Path, vocab_labels: list[str],
                   truth: dict[str, dict] | None = None) -> list[dict]:
    """The questions of every usable image of the split, each with its prompt and the facts it is judged on."""
    ask: AskConfig = cfg.ask
    root = Path(cfg.data.images).resolve() if cfg.data.images else None
    paths = {it["image_id"]: it["path"] for it in image_items(cfg, split)}
    records = [r for r in read_jsonl(detections_path) if not r.get("error")]
    if ask.limit:
        records = records[: ask.limit]

    def facts(rec: dict) -> list[dict]:
        if truth is not None:
            return truth[rec["image_id"]]["objects"]
        return context_detections(rec["detections"], cfg.ground)

    facts_of = [facts(r) for r in records]  # once per image: the co-occurrence counts and the questions share them
    cooc = cooccurrence([[o["label"] for o in present] for present in facts_of])
    families = tuple(f for f in ask.families if truth is not None or f != "colour")
    items, controls = [], []
    for rec, present in zip(records, facts_of):
        g = grounding_text(rec["detections"], rec["width"], rec["height"], cfg.ground)
        where = {"file": rec["file"], "path": paths.get(rec["image_id"]) or str((root or Path(".")) / rec["file"]),
                 "grounding": g}
        questions = make_questions(present, vocab_labels, rec["image_id"], width=rec["width"], seed=ask.seed,
                                   cooc=cooc, families=families)
        if ask.premise_control:  # judged on the same facts as the questions, so "there" means what it means there
            controls += [_asked(q, where, ask.grounded)
                         for q in premise_controls(questions, {rec["image_id"]: present}, ask.seed)]
        items += [_asked(q, where, ask.grounded) for q in questions]
    return items + controls  # the controls last: the questions' batches stay what they are without them


def _asked(q: dict, where: dict, grounded: bool) -> dict:
    return q | where | {"qid": f"{q['image_id']}/{q['family']}",
                        "prompt": prompt_text(where["grounding"], PromptConfig(q["question"], grounded))}


def answer(model, processor, items: list[dict], cfg: AskConfig, vocab) -> list[dict]:
    """Greedy answers to `items` (question_items), and cfg.n_samples sampled ones, parsed and judged."""
    from .describe import generate_captions

    images = [open_image(it["path"]) for it in items]
    prompts = [it["prompt"] for it in items]
    greedy = generate_captions(model, processor, images, prompts, max_new_tokens=cfg.max_new_tokens,
                               do_sample=False, n=1)
    samples = (generate_captions(model, processor, images, prompts, max_new_tokens=cfg.max_new_tokens,
                                 do_sample=True, n=cfg.n_samples, temperature=cfg.temperature)
               if cfg.n_samples else [[] for _ in items])
    return [{k: it[k] for k in ("qid", "image_id", "file", "family", "question", "prompt", "grounding", "label",
                                "other", "expected")} | judged(it, text, vocab)
            | {"samples": [judged(it, t, vocab) for t in sampled]}
            for it, (text,), sampled in zip(items, greedy, samples)]


def ask_settings(model_id: str, items: list[dict], cfg: AskConfig) -> dict:
    """What shapes an answers file. The sampling settings count only when sampling (n_samples > 0), so greedy
    files written before the settings existed are reused, and a temperature that samples nothing redoes none."""
    ask = {k: v for k, v in asdict(cfg).items() if cfg.n_samples or k not in ("n_samples", "temperature")}
    return {"model": model_fingerprint(model_id), "ask": ask,
            "items": key([(it["qid"], it["prompt"], json.dumps(it["expected"])) for it in items]),
            "images": images_fingerprint(list({it["image_id"]: it for it in items}.values()))}


def ask_to_jsonl(load_model, items: list[dict], cfg: AskConfig, vocab, out_path: Path, settings: dict,
                 progress: bool = True) -> Path:
    """Answers of `items` into a resumable JSONL. `load_model()` -> (model, processor) is called only when something
    is left to answer: a finished file made under the same settings is reused without loading the model."""
    import torch

    with ResumableJsonl(out_path, key="qid", settings=settings) as w:
        if w.finished:
            return out_path
        model, processor = load_model()
        questions = [it for it in items if it["family"] != CONTROL_FAMILY]
        controls = [it for it in items if it["family"] == CONTROL_FAMILY]
        # No batch mixes the two, so the questions' batches (and their seeds) are those of a run without controls,
        # and the controls' batches are answered greedily only.
        chunks = [(c, cfg) for _, c in batches(questions, cfg.batch_size)]
        chunks += [(c, replace(cfg, n_samples=0)) for _, c in batches(controls, cfg.batch_size)]
        for bi, (chunk, chunk_cfg) in tqdm(enumerate(chunks), total=len(chunks), desc="ask", disable=not progress):
            if all(it["qid"] in w.done for it in chunk):
                continue
            torch.manual_seed(cfg.seed * 1_000_003 + bi)  # the batch's samples, whatever ran before (describe's rule)
            w.write_many(answer(model, processor, chunk, chunk_cfg, vocab))
    return out_path


def run(cfg, run: RunFolder, split: str | None = None, *, progress: bool = True, model_path: str | None = None) -> dict:
    """The ask stage on one split (default data.split): detections (detected here first when missing), questions,
    answers by `model_path` (default: vlm.model, the embedded VLM built when needed), verdicts and metrics."""
    from . import detect
    from .embedded import ensure_vlm, ensure_world
    from .judge import resolve_vocabulary
    from .models import load_model_and_processor

    apply_threads(cfg)
    split = split or cfg.data.split
    det_path = detect.run(cfg, run, split, progress=progress)
    vocab = resolve_vocabulary(cfg.pairs.vocabulary, list(read_jsonl(det_path)))
    truth = None
    if cfg.ask.truth == "world":
        if cfg.data.images:
            raise DataError("ask.truth=world judges against the embedded world's annotations: not for data.images")
        from .world.export import load_annotations

        truth = {s["image_id"]: s for s in load_annotations(ensure_world(cfg), split)}
    items = question_items(cfg, split, det_path, list(vocab.classes), truth)
    if not items:
        raise DataError(f"{det_path}: no usable images to ask about")
    model_path = model_path or ensure_vlm(cfg, progress)["model"]
    out_path = run.vqa_answers(split)

    def load_model():
        model, processor = load_model_and_processor(model_path, dtype=cfg.vlm.dtype, device=cfg.vlm.device)
        return model.eval(), processor

    ask_to_jsonl(load_model, items, cfg.ask, vocab, out_path, ask_settings(model_path, items, cfg.ask),
                 progress=progress)
    metrics = vqa_metrics(list(read_jsonl(out_path)), seed=cfg.ask.seed)
    metrics_path = out_path.with_suffix(".metrics.json")
    write_text_atomic(metrics_path, json.dumps(metrics, indent=1))
    return {"answers": str(out_path), "metrics": str(metrics_path), "accuracy": metrics["accuracy"],
            "false_premise_rejection": metrics["false_premise_rejection"], "yes_ratio": metrics["yes_ratio"],
            "premise_balanced_accuracy": metrics["premise_balanced_accuracy"]}


def answers_to_mine(cfg, folder: RunFolder, split: str, *, progress: bool = True,
                    model_path: str | None = None) -> Path | None:
    """The ask stage as `pairs.mine_answers` needs it (None, and nothing done, unless it is on and pairs.answers
    names no file of its own): sampled answers (ask.n_samples of them) on a training split, judged against the
    detector's detections whatever ask.truth says, since the detector is the judge of training pairs (the world's
    truth is for evaluation only)."""
    import copy

    if not cfg.pairs.mine_answers or cfg.pairs.answers:
        return None
    mining = copy.deepcopy(cfg)
    mining.ask.truth = "detections"
    mining.ask.premise_control = False  # a measurement, not mined: no need to ask it
    return Path(run(mining, folder, split, progress=progress, model_path=model_path)["answers"])
