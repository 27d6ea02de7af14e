"""Training batches: which pairs each process takes at each micro-step, and how a list of pair records becomes
model inputs (images opened under the data root, chosen + rejected encoded once per pair, mDPO's corrupted image).

Data order is a pure function of (seed, micro-step): optimizer step s consumes global micro-batches
s*grad_accum ... s*grad_accum + grad_accum - 1 of a per-epoch permutation, and each process takes its slice of
every global micro-batch. So resuming from a checkpoint at step s replays exactly the batches an uninterrupted run
would, and N processes see the same global batches as one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..images import open_image, resolve_image
from .collate import ExampleTooLongError, encode
from .logps import encode_pairs


class DataOrder:
    """Which pairs each process gets at each micro-step; a pure function of seed and step."""

    def __init__(self, n: int, batch_size: int, num_processes: int, rank: int, seed: int, shuffle: bool = True):
        self.n, self.bs, self.world, self.rank, self.seed = n, batch_size, num_processes, rank, seed
        self.shuffle = shuffle
        self.global_bs = batch_size * num_processes
        if n < self.global_bs:
            raise ValueError(f"only {n} training pairs for a global batch of {self.global_bs}; lower batch_size")
        self.per_epoch = n // self.global_bs  # drop the ragged tail: every global batch has the same size

    def global_indices(self, micro_step: int) -> list[int]:
        """All processes' pairs of one micro-step."""
        epoch, pos = divmod(micro_step, self.per_epoch)
        perm = list(range(self.n))
        if self.shuffle:
            random.Random(f"order/{self.seed}/{epoch}").shuffle(perm)
        return perm[pos * self.global_bs:(pos + 1) * self.global_bs]

    def indices(self, micro_step: int) -> list[int]:
        """This process's slice of one micro-step."""
        return self.global_indices(micro_step)[self.rank * self.bs:(self.rank + 1) * self.bs]

    def used(self, micro_steps: int) -> list[int]:
        """Every pair index the first `micro_steps` micro-steps touch (sorted, distinct)."""
        seen: set[int] = set()
        for m in range(micro_steps):
            seen.update(self.global_indices(m))
            if len(seen) == self.n:  # everything visited: later steps add nothing
                break
        return sorted(seen)


def corrupt_image(img, boxes, mode: str, rng: random.Random):
    """mDPO's corrupted image: the detected objects masked out (default), or a small random resized crop."""
    from PIL import ImageDraw

    img = img.copy()
    if mode == "mask_boxes" and boxes:
        import numpy as np

        fill = tuple(int(c) for c in np.median(np.asarray(img.resize((8, 8))).reshape(-1, 3), axis=0))
        d = ImageDraw.Draw(img)
        for b in boxes:
            d.rectangle([b[0], b[1], b[2], b[3]], fill=fill)
        return img
    w, h = img.size  # crop: keep 10-20% of the area, as mDPO's "little information" crop
    area = rng.uniform(0.1, 0.2)
    cw, ch = max(1, int(w * math.sqrt(area))), max(1, int(h * math.sqrt(area)))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch)).resize((w, h))


@dataclass
class TrainBatch:
    pair_ids: list[str]
    encoded: object  # logps.PairBatch: chosen rows then rejected rows, image tensors once per pair
    corrupt: object | None  # collate.Encoded of the chosen completions under corrupted images (mDPO)
    n_tokens: int

    def to(self, device) -> "TrainBatch":
        if self.corrupt is not None:
            self.corrupt.inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.corrupt.inputs.items()}
            self.corrupt.labels = self.corrupt.labels.to(device)
        self.encoded = self.encoded.to(device)
        return self


def make_batch(rows: list[dict], processor, *, image_root: Path, model_type: str, max_length: int,
               corruption: str | None = None, seed: int = 0, template_tail: bool = False) -> TrainBatch:
    """Model inputs for pair records. `corruption` (mask_boxes | crop) also encodes the chosen completions under
    corrupted images; a crop's RNG is keyed by (seed, pair_id), so a pair's corrupted image is the same in the
    reference precompute, in training and in evaluation, whatever batch it falls in."""
    images = []
    for r in rows:
        path = resolve_image(r["image"], image_root)
        if path is None:
            raise ValueError(f"pair {r['pair_id']}: image {r['image']!r} escapes the data root {image_root}")
        try:
            images.append(open_image(path))
        except ValueError as e:
            raise ValueError(f"pair {r['pair_id']}: {e}") from None
    names = [f"pair {r['pair_id']}" for r in rows]
    try:
        enc = encode_pairs(processor, images, [r["prompt"] for r in rows], [r["chosen"] for r in rows],
                           [r["rejected"] for r in rows], max_length=max_length, names=names,
                           model_type=model_type, template_tail=template_tail)
    except ExampleTooLongError:
        raise
    except Exception as e:  # the processor rejected an image or text: name the pairs
        raise ValueError(f"{', '.join(names)}: the processor rejected this batch ({e})") from e
    corrupt = None
    if corruption:
        bad = [corrupt_image(im, r.get("boxes") or [], corruption, random.Random(f"corrupt/{seed}/{r['pair_id']}"))
               for im, r in zip(images, rows)]
        corrupt = encode(processor, bad, [r["prompt"] for r in rows], [r["chosen"] for r in rows],
                         max_length=max_length, names=names, model_type=model_type, template_tail=template_tail)
    n_tokens = int(enc.inputs["attention_mask"].sum())
    return TrainBatch([r["pair_id"] for r in rows], enc, corrupt, n_tokens)
