"""Does a VLM tell present from absent kinds when asked yes/no? A probe of the embedded world, no generation.

For each of the first N validation scenes and every kind of the world, the existence question (POPE's phrasing and
the robot's first existence phrasing), with the ground-truth grounding context and without it; the score is
log p(" yes") - log p(" no") at the answer's first token. Printed per question style and context: the mean score of
present and of absent kinds, the AUC (the share of (present, absent) score pairs ordered rightly: 0.5 = the model
does not tell them apart, whatever its yes-bias) and the share answered yes (score > 0).

    python scripts/yes_no_probe.py CONFIG MODEL [key=value ...]     (MODEL: a path, or "auto" = the config's VLM)

Issue #17's POPE target needs an AUC well above 0.5 before any DPO: DPO can move the threshold (the yes-bias),
not teach a comparison the model never learnt.
"""

import statistics
import sys

import torch

from vlm_dpo.config import load_config
from vlm_dpo.describe import render_prompt
from vlm_dpo.embedded import ensure_vlm, ensure_world, gt_as_detections
from vlm_dpo.eval.pope import question
from vlm_dpo.ground import PromptConfig, grounding_text, prompt_text
from vlm_dpo.images import open_image
from vlm_dpo.models import load_model_and_processor
from vlm_dpo.vqa.questions import PHRASINGS
from vlm_dpo.world.captions import article
from vlm_dpo.world.export import load_annotations
from vlm_dpo.world.scenes import KINDS

N_SCENES = 40


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    cfg = load_config(argv[0] or None, argv[2:])  # "" = the defaults
    model_path = ensure_vlm(cfg, progress=False)["model"] if argv[1] == "auto" else argv[1]
    model, processor = load_model_and_processor(model_path)
    model.eval()
    tok = processor.tokenizer
    yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" yes.", " no."))
    scenes = load_annotations(ensure_world(cfg, progress=False), "val")[:N_SCENES]
    styles = {"pope": question, "robot": lambda k: PHRASINGS["existence"][0].format(a=article(k), label=k)}
    print(model_path)
    for style, ask in styles.items():
        for grounded in (True, False):
            scores = {True: [], False: []}  # present -> log p(yes) - log p(no)
            for s in scenes:
                present = {o["label"] for o in s["objects"]}
                context = grounding_text(gt_as_detections(s["objects"]), s["width"], s["height"], cfg.ground)
                image = open_image(s["path"])
                for kind in KINDS:
                    text = render_prompt(processor, prompt_text(context, PromptConfig(ask(kind), grounded=grounded)))
                    inputs = processor(text=[text], images=[[image]], return_tensors="pt")
                    with torch.no_grad():
                        logp = model(**inputs).logits[0, -1].log_softmax(-1)
                    scores[kind in present].append((logp[yes] - logp[no]).item())
            pos, neg = scores[True], scores[False]
            auc = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
            print(f"{style:5s} {'grounded' if grounded else 'no context':10s} score present {statistics.mean(pos):+.2f} "
                  f"absent {statistics.mean(neg):+.2f}  AUC {auc:.3f}  yes-rate present "
                  f"{sum(x > 0 for x in pos) / len(pos):.2f} absent {sum(x > 0 for x in neg) / len(neg):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
