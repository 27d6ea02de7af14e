"""Preference accuracy and reward margin of a model on held-out pairs.

    pref_accuracy = share of pairs with log p(chosen) > log p(rejected) under the model (summed log-probs)
    reward_margin = mean over pairs of beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]
                    with the SFT model as reference (0 for the SFT model itself)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..images import open_image, resolve_image


def pair_logps_table(model_path: str, pairs: list[dict], image_root: Path, batch_size: int = 16) -> torch.Tensor:
    """[N, 2] summed log-probs (chosen, rejected) of every pair under the model."""
    from ..models import load_model_and_processor
    from ..train.logps import encode_pairs
    from ..train.pair_logps import pair_logps

    model, processor = load_model_and_processor(model_path)
    model.eval()
    mt = getattr(model.config, "model_type", "")
    rows = []
    with torch.no_grad():
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s:s + batch_size]
            images = [open_image(resolve_image(p["image"], image_root)) for p in chunk]
            b = encode_pairs(processor, images, [p["prompt"] for p in chunk], [p["chosen"] for p in chunk],
                             [p["rejected"] for p in chunk], model_type=mt)
            c, r = pair_logps(model, b)
            rows.append(torch.stack([c.sum, r.sum], dim=1).float())
    return torch.cat(rows) if rows else torch.zeros(0, 2)


def preference_metrics(logps: torch.Tensor, ref: torch.Tensor | None, beta: float) -> dict:
    if logps.numel() == 0:
        return {"pref_accuracy": None, "reward_margin": None, "pairs": 0}
    out = {"pref_accuracy": float((logps[:, 0] > logps[:, 1]).float().mean()), "pairs": int(logps.shape[0])}
    if ref is not None:
        out["reward_margin"] = float((beta * ((logps[:, 0] - ref[:, 0]) - (logps[:, 1] - ref[:, 1]))).mean())
    return out
