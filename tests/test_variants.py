"""The pipeline's DPO variants (vlm_dpo/variants.py) select pairs and losses as named."""

from types import SimpleNamespace

import pytest

from vlm_dpo.variants import VARIANTS


def _pairs():
    return [{"pair_id": "a", "source": "mined", "task": "caption"}, {"pair_id": "b", "source": "context"},
            {"pair_id": "c", "source": "synthetic", "task": "vqa"}, {"pair_id": "d", "source": "human", "task": None}]


@pytest.mark.parametrize("name, kept", [("no_context", ["a", "c", "d"]), ("captions_only", ["a", "b", "d"])])
def test_variant_pair_selection(name, kept):
    tcfg = SimpleNamespace(loss=SimpleNamespace(weights={"sigmoid": 1.0}, mixture=""))
    pairs, out = VARIANTS[name](_pairs(), tcfg)
    assert [p["pair_id"] for p in pairs] == kept and out is tcfg  # pairs without a task are captions


def test_mdpo_variant_adds_the_image_terms():
    tcfg = SimpleNamespace(loss=SimpleNamespace(weights={"sigmoid": 1.0}, mixture="x"))
    pairs, out = VARIANTS["mdpo"](_pairs(), tcfg)
    assert len(pairs) == 4 and out.loss.weights == {"sigmoid": 1.0, "mdpo_image": 1.0, "mdpo_anchor": 1.0}
    assert out.loss.mixture == ""
