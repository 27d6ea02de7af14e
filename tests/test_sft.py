"""SFT's loss is the model's own completion-token cross-entropy, computed without full-vocabulary logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_models import tiny_idefics3
from vlm_dpo.sft import SFTExample, run_sft
from vlm_dpo.train.collate import encode


def _examples(n: int = 3) -> list[SFTExample]:
    rng = np.random.default_rng(0)
    texts = ["two red cups.", "a ball.", "three blue cubes in a row."]
    return [SFTExample(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "Describe the image.",
                       texts[i % 3]) for i in range(n)]


def test_loss_equals_the_models_own_cross_entropy_and_never_builds_full_logits():
    model, processor = tiny_idefics3.__wrapped__(0)
    ex = _examples()
    enc = encode(processor, [e.image for e in ex], [e.prompt for e in ex], [e.target for e in ex],
                 model_type="idefics3")
    with torch.no_grad():
        want = model(**enc.inputs, labels=enc.labels).loss.item()
    head_shapes = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: head_shapes.append(tuple(o.shape)))
    history = run_sft(model, processor, lambda step: ex, steps=1, lr=1e-9, progress=False)
    hook.remove()
    assert history[0]["loss"] == pytest.approx(want, abs=1e-4)
    n_completion = int((enc.labels != -100).sum())
    assert head_shapes == [(n_completion, model.config.text_config.vocab_size)]  # [N, vocab], not [B, T, vocab]
