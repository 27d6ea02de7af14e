"""The robot's questions in the evaluation (issue #17): every held-out image asked one question per family
(vqa/questions.py) from its ground truth, with the grounding context as the pipeline prompts it (eval.vqa_grounded),
answered greedily and judged (vqa/answers.py), and each false-premise question asked again about a kind that is
there (eval.vqa_premise_control, vqa/control.py). metrics.json holds models.<name>.vqa = {accuracy: {family...,
overall}, ci, false_premise_rejection, yes_ratio, true_premise_refusal, premise_balanced_accuracy, pope_f1,
verdicts}; the answers are in eval/<name>.vqa.jsonl (the controls with family "premise_control")."""

from __future__ import annotations

from dataclasses import replace

from ..ground import PromptConfig, prompt_text
from ..images import open_image
from ..vqa.answers import judged
from ..vqa.control import premise_controls
from ..vqa.metrics import vqa_metrics
from ..vqa.questions import cooccurrence, make_questions


def _asked(q: dict, item: dict, cfg) -> dict:
    """Question `q` about `item`'s image, prompted as the pipeline prompts (the grounding context after it)."""
    return q | {"path": item["path"], "grounding": item.get("grounding"),
                "prompt": prompt_text(item.get("grounding"), PromptConfig(q["question"], cfg.vqa_grounded))}


def vqa_items(items: list[dict], scenes: list[dict], labels: list[str], cfg) -> list[dict]:
    cooc = cooccurrence([[o["label"] for o in s["objects"]] for s in scenes])
    out = []
    for it, sc in zip(items, scenes):
        width = sc.get("width") or open_image(it["path"]).width
        for q in make_questions(sc["objects"], labels, it["image_id"], width=width, seed=cfg.seed, cooc=cooc):
            out.append(_asked(q, it, cfg))
    return out


def control_items(questions: list[dict], items: list[dict], scenes: list[dict], cfg) -> list[dict]:
    """The premise controls of `questions` (vqa/control.py), prompted as their false-premise questions are."""
    objects_of = {it["image_id"]: sc["objects"] for it, sc in zip(items, scenes)}
    item_of = {it["image_id"]: it for it in items}
    return [_asked(q, item_of[q["image_id"]], cfg) for q in premise_controls(questions, objects_of, cfg.seed)]


def vqa_eval(model, processor, items: list[dict], scenes: list[dict], labels: list[str], vocab, cfg, *,
             progress: bool) -> tuple[dict, list[dict]]:
    from .run import generate_all

    questions = vqa_items(items, scenes, labels, cfg)
    short = replace(cfg, max_new_tokens=min(cfg.max_new_tokens, 16))  # answers are a few words
    answers = [g[0] for g in generate_all(model, processor, questions, short, do_sample=False, n=1, desc="vqa",
                                          progress=progress)]
    if cfg.vqa_premise_control:
        # A call of its own, after the questions: their batches, hence their answers, stay what they were without it.
        controls = control_items(questions, items, scenes, cfg)
        answers += [g[0] for g in generate_all(model, processor, controls, short, do_sample=False, n=1,
                                               desc="vqa controls", progress=progress)]
        questions = questions + controls
    rows = [{k: q[k] for k in ("image_id", "family", "question", "prompt", "label", "other", "expected")}
            | judged(q, text, vocab) for q, text in zip(questions, answers)]
    return vqa_metrics(rows, cfg.bootstrap, cfg.seed), rows
