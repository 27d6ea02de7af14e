"""Inter-annotator agreement: Cohen's kappa on the items two annotators both judged.

    kappa = (p_o - p_e) / (1 - p_e)
    p_o   share of common items where both gave the same label
    p_e   chance agreement: sum over labels of (share of items A gave it) * (share B gave it)

Labels are the choices mapped back to the item's canonical captions (each annotator saw A/B in their own
order): "first" | "second" | "tie" | "both_bad". Kappa is undefined (None) when p_e = 1, i.e. both annotators
gave one and the same label to everything. With more than two annotators every pair with common items is
reported, plus the mean of the defined kappas weighted by common items.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import combinations


def cohen_kappa(a: Sequence, b: Sequence) -> float | None:
    """Cohen's kappa of two raters' labels on the same items (in the same order); None when undefined."""
    if len(a) != len(b):
        raise ValueError(f"kappa needs the same items from both raters, got {len(a)} and {len(b)} labels")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def canonical(choice: str, swapped: bool) -> str:
    """A choice as shown -> a label about the item's canonical captions (first = c1)."""
    if choice in ("a", "b"):
        return "first" if (choice == "a") != bool(swapped) else "second"
    return choice


def agreement_of(records: list[dict]) -> dict:
    """Kappa report from judgement records carrying item_id, annotator, choice and swapped."""
    labels: dict[str, dict[str, str]] = {}
    for r in records:
        labels.setdefault(r["annotator"], {})[r["item_id"]] = canonical(r["choice"], r.get("swapped", False))
    pairs = []
    for x, y in combinations(sorted(labels), 2):
        common = sorted(set(labels[x]) & set(labels[y]))
        if not common:
            continue
        lx, ly = [labels[x][i] for i in common], [labels[y][i] for i in common]
        pairs.append({"annotators": [x, y], "items": len(common),
                      "observed": sum(p == q for p, q in zip(lx, ly)) / len(common), "kappa": cohen_kappa(lx, ly)})
    defined = [p for p in pairs if p["kappa"] is not None]
    weight = sum(p["items"] for p in defined)
    by_item = Counter(i for per in labels.values() for i in per)
    return {"kappa": sum(p["kappa"] * p["items"] for p in defined) / weight if weight else None,
            "pairs": pairs, "annotators": sorted(labels),
            "items_multi": sum(1 for n in by_item.values() if n >= 2)}


def agreement(db) -> dict:
    """Kappa report of an annotation database (path or Store)."""
    from .store import judgement_records

    return agreement_of(judgement_records(db))
