"""Tests for vlm_dpo.train.losses: hand-worked values, invariants, errors, and parity with TRL 1.16."""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from vlm_dpo.train.losses import (
    LOSSES,
    MIXTURES,
    REFERENCE_FREE,
    LossConfig,
    PreferenceLogps,
    RewardShift,
    bco_pair,
    preference_loss,
)

DT = torch.float64


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=DT)


def _one(**overrides) -> PreferenceLogps:
    """The hand-worked pair used throughout.

    policy chosen -1 over 2 tokens, policy rejected -3 over 4 tokens, reference -2 / -2.
    Log-ratios: r_w = -1 - (-2) = 1, r_l = -3 - (-2) = -1, so the DPO margin h = r_w - r_l = 2.
    Corrupted image: policy -4, reference -3, so its log-ratio is -1.
    """
    fields = dict(
        policy_chosen=_t(-1.0),
        policy_rejected=_t(-3.0),
        chosen_tokens=_t(2.0),
        rejected_tokens=_t(4.0),
        ref_chosen=_t(-2.0),
        ref_rejected=_t(-2.0),
        policy_chosen_corrupt=_t(-4.0),
        ref_chosen_corrupt=_t(-3.0),
    )
    fields.update(overrides)
    return PreferenceLogps(**fields)


def _per_pair(name: str, lp: PreferenceLogps, **cfg) -> float:
    out = LOSSES[name](lp, LossConfig(weights={name: 1.0}, **cfg))
    assert out.shape == lp.policy_chosen.shape
    return float(out[0])


# Reference numbers, worked out by hand (softplus(z) = log(1 + e^z)):
SP_M1 = 0.31326168751822286  # softplus(-1) = log(1 + e^-1)
SP_P1 = SP_M1 + 1.0  # softplus(1) = softplus(-1) + 1 (softplus(z) - softplus(-z) = z)
SP_M05 = 0.47407698418010663  # softplus(-0.5) = log(1 + e^-0.5)
SP_M15 = 0.20141327798275240  # softplus(-1.5) = log(1 + e^-1.5)
SIG_M05 = 0.37754066879814546  # sigmoid(-0.5) = 1 / (1 + e^0.5)
LOG2 = math.log(2.0)


# ------------------------------------------------------------------------------ hand-worked values


def test_sigmoid_hand_value():
    # beta*h = 0.5 * ((-1 + 2) - (-3 + 2)) = 0.5 * 2 = 1.0; loss = log(1 + e^-1)
    assert _per_pair("sigmoid", _one(), beta=0.5) == pytest.approx(SP_M1, abs=1e-12)


def test_conservative_dpo_hand_value():
    # eps = 0.1: 0.9 * softplus(-1) + 0.1 * softplus(1) = softplus(-1) + 0.1 * 1 = 0.41326...
    got = _per_pair("sigmoid", _one(), beta=0.5, label_smoothing=0.1)
    assert got == pytest.approx(SP_M1 + 0.1, abs=1e-12)


def test_ipo_hand_value():
    # tau = beta = 0.5, target 1/(2 tau) = 1. Per-token log-ratios: 1/2 - (-1/4) = 0.75.
    # loss = (0.75 - 1)^2 = 0.0625
    assert _per_pair("ipo", _one(), beta=0.5) == pytest.approx(0.0625, abs=1e-12)
    # explicit tau = 0.25 -> target 2: (0.75 - 2)^2 = 1.5625 (beta is then irrelevant)
    assert _per_pair("ipo", _one(), beta=0.1, ipo_tau=0.25) == pytest.approx(1.5625, abs=1e-12)


def test_hinge_hand_value():
    # beta = 0.2: 1 - 0.2 * 2 = 0.6 > 0 -> 0.6 ; beta = 0.5: 1 - 1 = 0 -> 0
    assert _per_pair("hinge", _one(), beta=0.2) == pytest.approx(0.6, abs=1e-12)
    assert _per_pair("hinge", _one(), beta=0.5) == pytest.approx(0.0, abs=1e-12)


def test_robust_hand_value():
    # eps = 0.1, z = 1: (0.9 softplus(-1) - 0.1 softplus(1)) / 0.8
    #   = (0.9 a - 0.1 (a + 1)) / 0.8 = (0.8 a - 0.1) / 0.8 = a - 0.125, a = softplus(-1)
    got = _per_pair("robust", _one(), beta=0.5, label_smoothing=0.1)
    assert got == pytest.approx(SP_M1 - 0.125, abs=1e-12)


def test_simpo_hand_value():
    # per-token policy logps: -1/2 = -0.5 and -3/4 = -0.75, difference 0.25; beta = 0.5 -> 0.125.
    # gamma = 0.125 -> z = 0 -> loss = log 2 ; gamma = -0.875 -> z = 1 -> softplus(-1)
    assert _per_pair("simpo", _one(), beta=0.5, simpo_gamma=0.125) == pytest.approx(LOG2, abs=1e-12)
    assert _per_pair("simpo", _one(), beta=0.5, simpo_gamma=-0.875) == pytest.approx(SP_M1, abs=1e-12)


def test_simpo_is_reference_free():
    lp = _one(ref_chosen=None, ref_rejected=None)
    assert _per_pair("simpo", lp, beta=0.5, simpo_gamma=0.125) == pytest.approx(LOG2, abs=1e-12)
    assert "simpo" in REFERENCE_FREE and "sft" in REFERENCE_FREE


def test_rdpo_hand_value():
    # Park et al. 2024, Eq. 9: z = beta * h + alpha * (|y_w| - |y_l|).
    # alpha = 0.25, |y_w| - |y_l| = 2 - 4 = -2: z = 1 + 0.25 * (-2) = 0.5 -> softplus(-0.5)
    assert _per_pair("rdpo", _one(), beta=0.5, length_alpha=0.25) == pytest.approx(SP_M05, abs=1e-12)


def test_rdpo_does_not_reward_verbosity():
    """A longer chosen caption earns part of its margin from length alone: the loss is lower than DPO's, so the
    gradient pushes less for it; a longer rejected caption makes the loss higher. (The wrong sign did the reverse.)"""
    longer_chosen = _one(chosen_tokens=_t(6.0), rejected_tokens=_t(2.0))
    longer_rejected = _one(chosen_tokens=_t(2.0), rejected_tokens=_t(6.0))
    dpo = _per_pair("sigmoid", longer_chosen, beta=0.5)
    assert _per_pair("rdpo", longer_chosen, beta=0.5, length_alpha=0.1) < dpo
    assert _per_pair("rdpo", longer_rejected, beta=0.5, length_alpha=0.1) > dpo


def test_bco_pair_hand_value():
    # rewards 0.5 * 1 = 0.5 and 0.5 * (-1) = -0.5.
    # delta = 0: softplus(-0.5) + softplus(-0.5) = 0.94815...
    assert _per_pair("bco_pair", _one(), beta=0.5) == pytest.approx(2 * SP_M05, abs=1e-12)
    # delta = 0.5: softplus(-(0.5 - 0.5)) + softplus(-0.5 - 0.5) = log 2 + softplus(-1)
    got = float(bco_pair(_one(), LossConfig(beta=0.5, weights={"bco_pair": 1.0}), delta=0.5)[0])
    assert got == pytest.approx(LOG2 + SP_M1, abs=1e-12)


def test_nca_pair_hand_value():
    # rho_w = 0.5, rho_l = -0.5: softplus(-0.5) + 0.5 softplus(0.5) + 0.5 softplus(-0.5)
    #   = 1.5 softplus(-0.5) + 0.5 (softplus(-0.5) + 0.5) = 2 softplus(-0.5) + 0.25
    assert _per_pair("nca_pair", _one(), beta=0.5) == pytest.approx(2 * SP_M05 + 0.25, abs=1e-12)


def test_apo_zero_hand_value():
    # (1 - sigmoid(0.5)) + sigmoid(-0.5) = 2 sigmoid(-0.5)
    assert _per_pair("apo_zero", _one(), beta=0.5) == pytest.approx(2 * SIG_M05, abs=1e-12)


def test_sft_hand_value():
    # token mean: -(-1) / 2 = 0.5 ; sequence sum: 1.0 ; no reference needed
    lp = _one(ref_chosen=None, ref_rejected=None)
    assert _per_pair("sft", lp) == pytest.approx(0.5, abs=1e-12)
    assert _per_pair("sft", lp, sft_mean=False) == pytest.approx(1.0, abs=1e-12)


def test_mdpo_image_hand_value():
    # true image log-ratio 1, corrupted image log-ratio -4 - (-3) = -1: 0.5 * (1 - (-1)) = 1 -> softplus(-1)
    assert _per_pair("mdpo_image", _one(), beta=0.5) == pytest.approx(SP_M1, abs=1e-12)


def test_mdpo_anchor_hand_value():
    # 0.5 * 1 - 0 = 0.5 -> softplus(-0.5); with delta 0.5: 0 -> log 2
    assert _per_pair("mdpo_anchor", _one(), beta=0.5) == pytest.approx(SP_M05, abs=1e-12)
    assert _per_pair("mdpo_anchor", _one(), beta=0.5, anchor_delta=0.5) == pytest.approx(LOG2, abs=1e-12)


def test_every_loss_has_a_hand_test():
    # guards against a new table entry landing without a worked value above
    assert set(LOSSES) == {
        "sigmoid", "ipo", "hinge", "robust", "simpo", "rdpo", "bco_pair",
        "nca_pair", "apo_zero", "sft", "mdpo_image", "mdpo_anchor",
    }  # fmt: skip


# ------------------------------------------------------------------------------ preference_loss


def test_mixture_weights_sum_and_metrics():
    # MPO weights: 0.8 * softplus(-1) + 0.2 * 2 softplus(-0.5) + 1.0 * 0.5 = 0.94024...
    cfg = LossConfig(beta=0.5, weights="mpo")
    assert cfg.weights == {"sigmoid": 0.8, "bco_pair": 0.2, "sft": 1.0}
    loss, m = preference_loss(_one(), cfg)
    expected = 0.8 * SP_M1 + 0.2 * 2 * SP_M05 + 0.5
    assert float(loss) == pytest.approx(expected, abs=1e-12)
    assert float(m["loss"]) == pytest.approx(expected, abs=1e-12)
    assert float(m["loss/sigmoid"]) == pytest.approx(SP_M1, abs=1e-12)
    assert float(m["loss/bco_pair"]) == pytest.approx(2 * SP_M05, abs=1e-12)
    assert float(m["loss/sft"]) == pytest.approx(0.5, abs=1e-12)
    # rewards beta * log-ratio: 0.5 and -0.5, margin 1, accuracy 1
    assert float(m["rewards/chosen"]) == pytest.approx(0.5)
    assert float(m["rewards/rejected"]) == pytest.approx(-0.5)
    assert float(m["rewards/margins"]) == pytest.approx(1.0)
    assert float(m["rewards/accuracies"]) == 1.0
    assert float(m["logps/chosen"]) == -1.0 and float(m["logps/rejected"]) == -3.0
    # k1 KL: mean of log-ratios (1 and -1) = 0
    assert float(m["kl/implicit"]) == pytest.approx(0.0)
    assert "bco/delta" not in m


def test_mixture_is_weighted_sum_of_single_losses_on_a_batch():
    g = torch.Generator().manual_seed(0)
    lp = _random_logps(g, 6)
    weights = {"sigmoid": 0.3, "ipo": 0.7, "hinge": 1.5, "apo_zero": 2.0, "sft": 0.25}
    total, _ = preference_loss(lp, LossConfig(beta=0.3, weights=weights))
    parts = sum(w * preference_loss(lp, LossConfig(beta=0.3, weights={n: 1.0}))[0] for n, w in weights.items())
    assert float(total) == pytest.approx(float(parts), abs=1e-12)


def test_batch_metrics_two_pairs():
    # pair 1 as above (rewards 0.5 / -0.5); pair 2: policy -2/-1, reference -1/-1, beta 0.5
    # -> rewards 0.5 * (-1) = -0.5 and 0, pair 2 wrong way round.
    lp = PreferenceLogps(
        policy_chosen=_t(-1.0, -2.0),
        policy_rejected=_t(-3.0, -1.0),
        chosen_tokens=_t(2.0, 1.0),
        rejected_tokens=_t(4.0, 1.0),
        ref_chosen=_t(-2.0, -1.0),
        ref_rejected=_t(-2.0, -1.0),
    )
    _, m = preference_loss(lp, LossConfig(beta=0.5))
    assert float(m["rewards/chosen"]) == pytest.approx(0.0)  # (0.5 - 0.5) / 2
    assert float(m["rewards/rejected"]) == pytest.approx(-0.25)  # (-0.5 + 0) / 2
    assert float(m["rewards/margins"]) == pytest.approx(0.25)  # (1 + -0.5) / 2
    assert float(m["rewards/accuracies"]) == pytest.approx(0.5)
    # log-ratios 1, -1 (pair 1) and -1, 0 (pair 2): mean over chosen -> 0, rejected -> -0.5; KL = -0.25
    assert float(m["kl/implicit"]) == pytest.approx(-0.25)


def test_reference_free_metrics():
    # SimPO rewards beta * logp / |y|: 0.5 * (-1/2) = -0.25, 0.5 * (-3/4) = -0.375
    lp = _one(ref_chosen=None, ref_rejected=None)
    loss, m = preference_loss(lp, LossConfig(beta=0.5, simpo_gamma=0.125, weights={"simpo": 1.0, "sft": 0.0}))
    assert float(loss) == pytest.approx(LOG2, abs=1e-12)
    assert float(m["rewards/chosen"]) == pytest.approx(-0.25)
    assert float(m["rewards/rejected"]) == pytest.approx(-0.375)
    assert float(m["rewards/margins"]) == pytest.approx(0.125)
    assert "kl/implicit" not in m
    # with references given but only reference-free losses, rewards stay reference-free
    _, m2 = preference_loss(_one(), LossConfig(beta=0.5, weights="simpo"))
    assert float(m2["rewards/chosen"]) == pytest.approx(-0.25)


def test_bco_reward_shift_state():
    # batch rewards 0.5 and -0.5 -> running mean 0 after the first batch -> loss as with delta 0
    state = RewardShift()
    cfg = LossConfig(beta=0.5, weights={"bco_pair": 1.0})
    loss, m = preference_loss(_one(), cfg, state)
    assert state.count == 2 and state.mean == pytest.approx(0.0)
    assert float(loss) == pytest.approx(2 * SP_M05, abs=1e-12)
    assert float(m["bco/delta"]) == pytest.approx(0.0)
    # second batch shifted: policy up by 2 on both -> rewards 1.5 and 0.5, mean of all four = 0.5
    lp2 = _one(policy_chosen=_t(1.0), policy_rejected=_t(-1.0))
    loss2, m2 = preference_loss(lp2, cfg, state)
    assert state.count == 4 and state.mean == pytest.approx(0.5)
    # softplus(-(1.5 - 0.5)) + softplus(0.5 - 0.5) = softplus(-1) + log 2
    assert float(loss2) == pytest.approx(SP_M1 + LOG2, abs=1e-12)
    assert float(m2["bco/delta"]) == pytest.approx(0.5)
    restored = RewardShift()
    restored.load_state_dict(state.state_dict())
    assert restored == state


# ------------------------------------------------------------------------------ invariants


def test_policy_equal_reference_gives_log2_and_zero_rewards():
    lp = PreferenceLogps(
        policy_chosen=_t(-5.0, -7.5),
        policy_rejected=_t(-6.0, -2.0),
        chosen_tokens=_t(3.0, 5.0),
        rejected_tokens=_t(4.0, 2.0),
        ref_chosen=_t(-5.0, -7.5),
        ref_rejected=_t(-6.0, -2.0),
    )
    loss, m = preference_loss(lp, LossConfig(beta=0.1))
    assert float(loss) == pytest.approx(LOG2, abs=1e-12)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "kl/implicit"):
        assert float(m[key]) == 0.0
    assert float(m["rewards/accuracies"]) == 0.0  # ties are not counted as correct


def test_zero_smoothing_and_zero_alpha_reduce_to_dpo():
    g = torch.Generator().manual_seed(1)
    lp = _random_logps(g, 8)
    cfg = LossConfig(beta=0.2)
    dpo = -torch.nn.functional.logsigmoid(
        0.2 * ((lp.policy_chosen - lp.ref_chosen) - (lp.policy_rejected - lp.ref_rejected))
    )
    for name in ("sigmoid", "robust", "rdpo"):
        torch.testing.assert_close(LOSSES[name](lp, cfg), dpo, rtol=0, atol=1e-12)


def test_larger_margin_lowers_sigmoid_loss():
    cfg = LossConfig(beta=0.5)
    losses = [float(LOSSES["sigmoid"](_one(policy_chosen=_t(pc)), cfg)[0]) for pc in (-3.0, -2.0, -1.0, 0.0, 2.0)]
    assert all(a > b for a, b in zip(losses, losses[1:]))


def test_gradients_flow_to_policy_only():
    g = torch.Generator().manual_seed(2)
    lp = _random_logps(g, 4, corrupt=True)
    policy = [lp.policy_chosen, lp.policy_rejected, lp.policy_chosen_corrupt]
    for t in policy:
        t.requires_grad_(True)
    weights = {name: 1.0 for name in LOSSES}
    loss, metrics = preference_loss(lp, LossConfig(beta=0.3, label_smoothing=0.1, length_alpha=0.01, weights=weights))
    loss.backward()
    for t in policy:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert all(not v.requires_grad for v in metrics.values())
    # DPO pushes the chosen log-prob up (negative gradient of the loss) and the rejected down
    lp2 = _random_logps(g, 4)
    lp2.policy_chosen.requires_grad_(True)
    lp2.policy_rejected.requires_grad_(True)
    preference_loss(lp2, LossConfig())[0].backward()
    assert (lp2.policy_chosen.grad < 0).all() and (lp2.policy_rejected.grad > 0).all()


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("name", sorted(set(LOSSES) - REFERENCE_FREE))
def test_missing_reference_raises_naming_the_loss(name):
    lp = _one(ref_chosen=None, ref_rejected=None, ref_chosen_corrupt=None)
    with pytest.raises(ValueError, match=rf"loss '{name}' needs"):
        preference_loss(lp, LossConfig(weights={name: 1.0}))


def test_missing_corrupt_logps_raises():
    lp = _one(policy_chosen_corrupt=None, ref_chosen_corrupt=None)
    with pytest.raises(ValueError, match=r"'mdpo_image'.*policy_chosen_corrupt"):
        preference_loss(lp, LossConfig(weights="mdpo"))


def test_unknown_names_rejected():
    with pytest.raises(ValueError, match=r"unknown loss name.*'dpo_typo'.*known losses.*sigmoid"):
        LossConfig(weights={"sigmoid": 1.0, "dpo_typo": 1.0})
    with pytest.raises(ValueError, match=r"unknown loss or mixture 'nope'"):
        LossConfig(weights="nope")
    cfg = LossConfig()
    cfg.weights = {"bogus": 1.0}  # mutated after construction: caught by preference_loss too
    with pytest.raises(ValueError, match=r"unknown loss name.*'bogus'"):
        preference_loss(_one(), cfg)


def test_config_and_input_validation():
    with pytest.raises(ValueError, match="beta"):
        LossConfig(beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        LossConfig(label_smoothing=0.7)
    assert LossConfig(weights={}).weights == {"sigmoid": 1.0}  # empty = the default (YAML weights replace it)
    assert LossConfig(weights={"sft": 1.0}, mixture="mpo").weights == MIXTURES["mpo"]  # a mixture decides
    with pytest.raises(ValueError, match="mixture"):
        LossConfig(mixture="nope")
    with pytest.raises(ValueError, match="corruption"):
        LossConfig(corruption="blur")
    with pytest.raises(ValueError, match="robust"):
        LOSSES["robust"](_one(), LossConfig(label_smoothing=0.5, weights="robust"))
    with pytest.raises(ValueError, match="rejected_tokens"):
        _one(rejected_tokens=_t(1.0, 2.0))


def test_mixtures_name_known_losses():
    for name, weights in MIXTURES.items():
        assert LossConfig(weights=name).weights == weights
    assert MIXTURES["mpo"] == {"sigmoid": 0.8, "bco_pair": 0.2, "sft": 1.0}


# ------------------------------------------------------------------------------ parity with TRL 1.16


def _random_logps(g: torch.Generator, batch: int, corrupt: bool = False) -> PreferenceLogps:
    def logp(n):
        return -torch.rand(batch, generator=g, dtype=DT) * n

    tokens_w = torch.randint(1, 9, (batch,), generator=g).to(DT)
    tokens_l = torch.randint(1, 9, (batch,), generator=g).to(DT)
    return PreferenceLogps(
        policy_chosen=logp(tokens_w * 2),
        policy_rejected=logp(tokens_l * 2),
        chosen_tokens=tokens_w,
        rejected_tokens=tokens_l,
        ref_chosen=logp(tokens_w * 2),
        ref_rejected=logp(tokens_l * 2),
        policy_chosen_corrupt=logp(tokens_w * 2) if corrupt else None,
        ref_chosen_corrupt=logp(tokens_w * 2) if corrupt else None,
    )


class _FakeModel:
    """Stands in for the policy inside TRL's ``_compute_loss``: returns fixed per-token log-probs."""

    training = True

    def __init__(self, per_token_logps: torch.Tensor):
        self.per_token_logps = per_token_logps

    def __call__(self, **kwargs):
        z = torch.zeros_like(self.per_token_logps)
        return SimpleNamespace(log_probs=self.per_token_logps, entropy=z, mean_logits=z, is_top1=z.bool())


def _trl_dpo_batch_loss(loss_type: str, rows: list[torch.Tensor], ref_w, ref_l, beta, label_smoothing=0.0):
    """Run TRL 1.16's own ``DPOTrainer._compute_loss`` on given per-token log-probs, without a model.

    A trainer needs a real model, tokenizer and dataset, which is too heavy for a unit test; the loss
    code only reads a handful of attributes, so it is called unbound on a namespace holding them, with
    precomputed reference log-probs and a fake model whose output carries the per-token log-probs
    (``rows``: chosen sequences then rejected ones, each a 1-D tensor of its completion tokens).
    """
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    width = max(len(r) for r in rows)
    per_token = torch.zeros(len(rows), width, dtype=DT)
    completion_mask = torch.zeros(len(rows), width + 1, dtype=torch.long)  # position 0 is the prompt
    for i, row in enumerate(rows):
        per_token[i, : len(row)] = row
        completion_mask[i, 1 : 1 + len(row)] = 1
    model = _FakeModel(per_token)
    fake_trainer = SimpleNamespace(
        model=model,
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
        args=SimpleNamespace(discopop_tau=0.05),
    )
    inputs = {
        "input_ids": torch.zeros_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_w,
        "ref_rejected_logps": ref_l,
    }
    return dpo_trainer.DPOTrainer._compute_loss(fake_trainer, model, inputs, return_outputs=False)


def _random_pairs(g: torch.Generator, batch: int, equal_lengths: bool = False):
    """Per-token policy rows for chosen and rejected, their ``PreferenceLogps`` and the rows."""
    lengths = torch.randint(1, 7, (2 * batch,), generator=g)
    if equal_lengths:
        lengths[:] = 4
    rows = [-torch.rand(int(n), generator=g, dtype=DT) * 2 for n in lengths]
    sums = torch.stack([r.sum() for r in rows])
    ref = sums + torch.randn(2 * batch, generator=g, dtype=DT)
    lp = PreferenceLogps(
        policy_chosen=sums[:batch],
        policy_rejected=sums[batch:],
        chosen_tokens=lengths[:batch].to(DT),
        rejected_tokens=lengths[batch:].to(DT),
        ref_chosen=ref[:batch],
        ref_rejected=ref[batch:],
    )
    return lp, rows


TRL_PARITY = [
    ("sigmoid", 0.0),
    ("ipo", 0.0),
    ("hinge", 0.0),
    ("robust", 0.2),
    ("bco_pair", 0.0),
    ("nca_pair", 0.0),
    ("apo_zero", 0.0),
    ("sft", 0.0),
]


@pytest.mark.parametrize(("name", "eps"), TRL_PARITY)
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_per_pair_parity_with_trl_dpo_trainer(name, eps, beta):
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}-{beta}".encode()))
    batch = 6
    lp, rows = _random_pairs(g, batch)
    ours = LOSSES[name](lp, LossConfig(beta=beta, label_smoothing=eps, weights={name: 1.0}))
    for i in range(batch):  # batch of one: TRL's scalar loss is then this pair's loss
        theirs = _trl_dpo_batch_loss(
            name, [rows[i], rows[batch + i]], lp.ref_chosen[i : i + 1], lp.ref_rejected[i : i + 1], beta, eps
        )
        assert float(ours[i]) == pytest.approx(float(theirs), abs=1e-6)
    if name != "sft":  # whole batch: TRL's mean of per-pair losses
        theirs = _trl_dpo_batch_loss(name, rows, lp.ref_chosen, lp.ref_rejected, beta, eps)
        assert float(ours.mean()) == pytest.approx(float(theirs), abs=1e-6)


def test_sft_batch_parity_with_trl_when_lengths_are_equal():
    # TRL pools chosen tokens over the batch; with equal lengths that is our mean of per-pair means
    g = torch.Generator().manual_seed(5)
    lp, rows = _random_pairs(g, 5, equal_lengths=True)
    ours = LOSSES["sft"](lp, LossConfig(weights="sft")).mean()
    theirs = _trl_dpo_batch_loss("sft", rows, lp.ref_chosen, lp.ref_rejected, 0.1)
    assert float(ours) == pytest.approx(float(theirs), abs=1e-6)


def test_mpo_mixture_parity_with_trl():
    # TRL combines loss types as sum(weight * mean); bco_pair there has no reward shift (state=None)
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")  # noqa: F841
    g = torch.Generator().manual_seed(6)
    lp, rows = _random_pairs(g, 1)
    ours, _ = preference_loss(lp, LossConfig(beta=0.2, weights="mpo"))
    theirs = sum(
        w * _trl_dpo_batch_loss(n, rows, lp.ref_chosen, lp.ref_rejected, 0.2) for n, w in MIXTURES["mpo"].items()
    )
    assert float(ours) == pytest.approx(float(theirs), abs=1e-6)


@pytest.mark.parametrize(("beta", "gamma", "eps"), [(2.0, 0.5, 0.0), (0.3, 1.2, 0.1)])
def test_simpo_parity_with_trl_cpo(beta, gamma, eps):
    """SimPO lives in TRL's CPO trainer; its ``cpo_loss`` takes length-averaged log-probs."""
    cpo = pytest.importorskip("trl.experimental.cpo")
    g = torch.Generator().manual_seed(7)
    lp, _ = _random_pairs(g, 8)
    fake_trainer = SimpleNamespace(
        alpha=0.0,
        beta=beta,
        simpo_gamma=gamma,
        label_smoothing=eps,
        loss_type="simpo",
        accelerator=SimpleNamespace(device=torch.device("cpu")),
    )
    theirs, _, _ = cpo.CPOTrainer.cpo_loss(
        fake_trainer, lp.policy_chosen / lp.chosen_tokens, lp.policy_rejected / lp.rejected_tokens
    )
    ours = LOSSES["simpo"](lp, LossConfig(beta=beta, simpo_gamma=gamma, label_smoothing=eps, weights="simpo"))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
