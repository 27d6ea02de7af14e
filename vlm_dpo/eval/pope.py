"""POPE-style probes (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models").

For each image, yes-questions about objects that are there and as many no-questions about objects that are
not, with the negatives drawn three ways:
    random       uniformly among absent labels
    popular      the most frequent labels of the dataset that are absent
    adversarial  the absent labels that co-occur most with the image's labels
Question: "Is there a <object> in the image?". Answers are read as POPE's script does: the first sentence,
"no" if it contains the word "no" or "not", else "yes".

    accuracy = (TP + TN) / N, precision = TP / (TP + FP), recall = TP / (TP + FN),
    F1 = 2PR / (P + R), yes_ratio = answers "yes" / N
"""

from __future__ import annotations

import random
import re
from collections import Counter
from itertools import combinations

SPLITS = ("random", "popular", "adversarial")
QUESTION = "Is there {article} {label} in the image? Answer yes or no."


def question(label: str) -> str:
    return QUESTION.format(article="an" if label[0] in "aeiou" else "a", label=label)


def make_probes(scenes: list[dict], labels: list[str], per_image: int = 2, seed: int = 0) -> list[dict]:
    """Balanced probes: per image and split, up to `per_image` yes-questions and as many no-questions.

    scenes: {image_id, objects: [{label}], ...}. Deterministic from the seed.
    """
    freq = Counter(lab for s in scenes for lab in {o["label"] for o in s["objects"]})
    pair = Counter()
    for s in scenes:
        for a, b in combinations(sorted({o["label"] for o in s["objects"]}), 2):
            pair[(a, b)] += 1
            pair[(b, a)] += 1
    probes = []
    for s in scenes:
        rng = random.Random(f"pope/{seed}/{s['image_id']}")
        present = sorted({o["label"] for o in s["objects"]})
        absent = [lab for lab in labels if lab not in present]
        k = min(per_image, len(present), len(absent))
        if k == 0:
            continue
        yes = rng.sample(present, k)
        negatives = {
            "random": rng.sample(absent, k),
            "popular": sorted(absent, key=lambda a: (-freq[a], a))[:k],
            "adversarial": sorted(absent, key=lambda a: (-sum(pair[(p, a)] for p in present), -freq[a], a))[:k],
        }
        for split in SPLITS:
            for lab in yes:
                probes.append({"image_id": s["image_id"], "split": split, "label": lab, "answer": "yes",
                               "question": question(lab)})
            for lab in negatives[split]:
                probes.append({"image_id": s["image_id"], "split": split, "label": lab, "answer": "no",
                               "question": question(lab)})
    return probes


def parse_answer(text: str) -> str:
    """POPE's rule: first sentence; 'no' if it has the word no/not, else 'yes'."""
    first = re.split(r"[.!?\n]", text.strip(), maxsplit=1)[0]
    words = re.findall(r"[a-z']+", first.lower())
    return "no" if ("no" in words or "not" in words) else "yes"


def pope_metrics(answers: list[str], truths: list[str]) -> dict:
    tp = sum(a == "yes" and t == "yes" for a, t in zip(answers, truths))
    tn = sum(a == "no" and t == "no" for a, t in zip(answers, truths))
    fp = sum(a == "yes" and t == "no" for a, t in zip(answers, truths))
    fn = sum(a == "no" and t == "yes" for a, t in zip(answers, truths))
    n = max(1, len(answers))
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"accuracy": (tp + tn) / n, "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "yes_ratio": (tp + fp) / n, "n": len(answers)}
