"""Preference losses for DPO and its variants, as a table of small functions.

Every loss is a plain function ``loss(lp, cfg) -> Tensor[B]`` that maps the
per-pair log-probabilities in a :class:`PreferenceLogps` and the knobs in a
:class:`LossConfig` to one loss value per preference pair. The functions are
collected in :data:`LOSSES` (name -> function) and combined with weights by
:func:`preference_loss`; :data:`MIXTURES` names published combinations (MPO,
mDPO). There is no trainer state in here except the explicit
:class:`RewardShift` that BCO needs.

Notation used in the docstrings, per pair:

* ``pi_w``, ``pi_l``: summed completion-token log-probs of the chosen (w) and
  rejected (l) caption under the policy; ``ref_w``, ``ref_l`` the same under the
  frozen reference model.
* ``|y_w|``, ``|y_l|``: number of completion tokens.
* ``r_w = pi_w - ref_w``, ``r_l = pi_l - ref_l``: log-ratios ("implicit rewards"
  divided by beta); ``h = r_w - r_l``.
* ``softplus(-z) = -log sigmoid(z) = log(1 + exp(-z))``.

Relation to TRL 1.16 (``trl.DPOTrainer._compute_loss``, ``loss_type=...``): the
names ``sigmoid``, ``ipo``, ``hinge``, ``robust``, ``bco_pair``, ``nca_pair``,
``apo_zero`` and ``sft`` mean the same per-pair formula as there (with TRL's
default ``f_divergence_type="reverse_kl"`` and ``ld_alpha=None``); ``simpo``
matches ``trl.experimental.cpo`` with ``loss_type="simpo"``. The deliberate
differences are listed in each function's docstring: ``sigmoid`` honours
``label_smoothing`` (TRL 1.16 ignores it there), ``bco_pair`` can subtract a
running reward shift (TRL 1.16 never does), and ``sft`` averages per pair rather
than pooling all chosen tokens of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
LossFn = Callable[..., Tensor]

CORRUPTIONS = ("mask_boxes", "crop")

__all__ = [
    "LOSSES",
    "MIXTURES",
    "REFERENCE_FREE",
    "LossConfig",
    "PreferenceLogps",
    "RewardShift",
    "apo_zero",
    "bco_pair",
    "hinge",
    "ipo",
    "mdpo_anchor",
    "mdpo_image",
    "nca_pair",
    "preference_loss",
    "rdpo",
    "robust",
    "sft",
    "sigmoid",
    "simpo",
]


# --------------------------------------------------------------------------------------------
# Inputs, configuration, state
# --------------------------------------------------------------------------------------------


@dataclass
class PreferenceLogps:
    """Per-pair log-probabilities of one batch of preference pairs; every tensor has shape ``[B]``.

    ``policy_chosen`` / ``policy_rejected`` are the *sums* of the completion-token
    log-probs under the policy (gradients flow through them);
    ``chosen_tokens`` / ``rejected_tokens`` are the completion token counts as
    floats (used for length normalisation, clamped to at least 1).
    ``ref_chosen`` / ``ref_rejected`` are the reference model's sums, or ``None``
    when only reference-free losses (``simpo``, ``sft``) are used.
    ``policy_chosen_corrupt`` / ``ref_chosen_corrupt`` are the log-probs of the
    *chosen* caption when the image is replaced by a corrupted one (mDPO's
    ``m_l``); only ``mdpo_image`` needs them.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    policy_chosen_corrupt: Tensor | None = None
    ref_chosen_corrupt: Tensor | None = None

    def __post_init__(self) -> None:
        shape = self.policy_chosen.shape
        if len(shape) != 1:
            raise ValueError(f"PreferenceLogps tensors must have shape [B], got policy_chosen of shape {tuple(shape)}")
        for name in (
            "policy_rejected",
            "chosen_tokens",
            "rejected_tokens",
            "ref_chosen",
            "ref_rejected",
            "policy_chosen_corrupt",
            "ref_chosen_corrupt",
        ):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(
                    f"PreferenceLogps.{name} has shape {tuple(value.shape)}, expected {tuple(shape)} like policy_chosen"
                )

    @property
    def has_reference(self) -> bool:
        """True when both reference log-probs are present."""
        return self.ref_chosen is not None and self.ref_rejected is not None


@dataclass
class LossConfig:
    """Hyper-parameters shared by the losses, plus the weights that select and mix them.

    Attributes:
        beta: inverse temperature / KL strength of DPO-style losses (TRL's ``beta``).
            For ``simpo`` it is SimPO's reward scale, where the paper uses 2-10 rather than 0.1.
        label_smoothing: probability ``eps`` that a preference label is flipped. Used by
            ``sigmoid`` (which then is conservative DPO, cDPO), ``rdpo``, ``simpo`` and ``robust``
            (which needs ``eps < 0.5``).
        ipo_tau: IPO's regulariser tau. ``None`` (default) means "use ``beta``", the convention of
            TRL, which passes ``beta`` as tau; the IPO target margin is then ``1 / (2 * beta)``.
        simpo_gamma: SimPO's target reward margin gamma as an *absolute* value in reward units
            (the convention of TRL's ``CPOConfig.simpo_gamma``): the loss is
            ``softplus(-(beta * avg_margin - gamma))``. The SimPO paper tunes the ratio gamma/beta
            instead; multiply that ratio by ``beta`` to get this value.
        length_alpha: R-DPO's length penalty alpha (``0`` turns ``rdpo`` into ``sigmoid``).
        sft_mean: ``sft`` uses the token-mean NLL ``-pi_w / |y_w|`` (RPO/MPO) when True, the
            sequence-sum NLL ``-pi_w`` when False.
        anchor_delta: mDPO's anchor delta in ``mdpo_anchor`` (the paper uses 0).
        weights: which losses to use and with what weight, e.g. ``{"sigmoid": 1.0, "sft": 1.0}``.
            A string is accepted as a shortcut: the name of a :data:`MIXTURES` entry or of a single
            loss (weight 1). Resolved to a dict at construction; empty means ``{"sigmoid": 1.0}`` (the
            default is empty so that a YAML file's weights replace it rather than merge into it).
        mixture: the name of a :data:`MIXTURES` entry; when set it decides the weights.
        corruption: how mDPO's corrupted image is made (``mask_boxes`` | ``crop``), for losses that
            declare ``needs_corrupt``.

    This is also the ``train.loss`` section of the YAML config. After changing ``weights`` or
    ``mixture`` on an existing object, ``dataclasses.replace(cfg)`` resolves them again.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    ipo_tau: float | None = None
    simpo_gamma: float = 0.5
    length_alpha: float = 0.0
    sft_mean: bool = True
    anchor_delta: float = 0.0
    weights: dict[str, float] = field(default_factory=dict)
    mixture: str = ""
    corruption: str = "mask_boxes"

    def __post_init__(self) -> None:
        if self.mixture:
            if self.mixture not in MIXTURES:
                raise ValueError(f"unknown loss mixture {self.mixture!r}; known: {sorted(MIXTURES)}")
            self.weights = dict(MIXTURES[self.mixture])
        if isinstance(self.weights, str):
            name = self.weights
            if name in MIXTURES:
                self.weights = dict(MIXTURES[name])
            elif name in LOSSES:
                self.weights = {name: 1.0}
            else:
                raise ValueError(
                    f"unknown loss or mixture {name!r}; known losses: {sorted(LOSSES)}, mixtures: {sorted(MIXTURES)}"
                )
        else:
            self.weights = {str(k): float(v) for k, v in dict(self.weights).items()} or {"sigmoid": 1.0}
        _check_names(self.weights)
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {self.corruption!r}")
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not 0.0 <= self.label_smoothing <= 0.5:
            raise ValueError(f"label_smoothing must lie in [0, 0.5], got {self.label_smoothing}")
        if self.ipo_tau is not None and not self.ipo_tau > 0:
            raise ValueError(f"ipo_tau must be positive (or None to use beta), got {self.ipo_tau}")


@dataclass
class RewardShift:
    """Running mean ``delta`` of the implicit rewards, the reward shift of BCO (Jung et al. 2024).

    BCO subtracts ``delta`` from both rewards so that the binary classifier is centred on the
    rewards seen so far. The mean is cumulative over every reward passed to :meth:`update`
    (chosen and rejected alike), as TRL's former ``RunningMoments``-based ``bco_pair`` did.
    :func:`preference_loss` updates it with the current batch *before* using it, so the first
    batch is centred on its own mean. Under data parallelism set ``gather`` (e.g. accelerate's
    ``Accelerator.gather``): every rank then folds in every rank's rewards and all keep the same
    ``delta``, as one process with the global batch would.
    Keep it in the trainer and checkpoint it via :meth:`state_dict`.
    """

    mean: float = 0.0
    count: int = 0
    gather: Callable[[Tensor], Tensor] | None = field(default=None, repr=False, compare=False)

    def update(self, rewards: Tensor) -> float:
        """Fold ``rewards`` (any shape; detached) into the running mean and return the new mean."""
        rewards = rewards.detach().float().reshape(-1)
        if self.gather is not None:
            rewards = self.gather(rewards).reshape(-1)
        n = rewards.numel()
        if n:
            batch_mean = rewards.mean().item()
            total = self.count + n
            self.mean += (batch_mean - self.mean) * n / total
            self.count = total
        return self.mean

    def state_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        self.mean = float(state["mean"])
        self.count = int(state["count"])


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _require(lp: PreferenceLogps, loss: str, *names: str) -> list[Tensor]:
    """Return the named fields of ``lp``, or raise a ValueError that names the loss and the gap."""
    missing = [n for n in names if getattr(lp, n) is None]
    if missing:
        what = "reference" if all(n.startswith("ref_") for n in missing) else "corrupted-image/reference"
        raise ValueError(
            f"loss {loss!r} needs {what} log-probs {missing}, but PreferenceLogps has them as None"
        )
    return [getattr(lp, n) for n in names]


def _logratios(lp: PreferenceLogps, loss: str) -> tuple[Tensor, Tensor]:
    """``(pi_w - ref_w, pi_l - ref_l)``, demanding the reference log-probs."""
    ref_w, ref_l = _require(lp, loss, "ref_chosen", "ref_rejected")
    return lp.policy_chosen - ref_w, lp.policy_rejected - ref_l


def _per_token(logp: Tensor, tokens: Tensor) -> Tensor:
    return logp / tokens.clamp(min=1.0)


def _smoothed_bce(z: Tensor, eps: float) -> Tensor:
    """``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)``: logistic loss with flip probability eps."""
    loss = -F.logsigmoid(z)
    if eps:
        loss = (1.0 - eps) * loss - eps * F.logsigmoid(-z)
    return loss


def declares(*, reference: bool, corrupt: bool = False, length_normalised: bool = False,
             reward_shift: bool = False) -> Callable[[LossFn], LossFn]:
    """Mark a loss with what it needs, so the trainer asks the loss instead of testing its name:
    ``reference`` (reference log-probs), ``corrupt`` (log-probs under mDPO's corrupted image),
    ``length_normalised`` (divides by completion token counts), ``reward_shift`` (takes BCO's delta)."""
    def mark(fn: LossFn) -> LossFn:
        fn.needs_reference = reference
        fn.needs_corrupt = corrupt
        fn.length_normalised = length_normalised
        fn.needs_reward_shift = reward_shift
        return fn
    return mark


def needs_reference(weights: Mapping[str, float]) -> bool:
    """Does any of these losses read reference log-probs?"""
    _check_names(weights)
    return any(LOSSES[n].needs_reference for n in weights)


def needs_corrupt(weights: Mapping[str, float]) -> bool:
    """Does any of these losses read log-probs under a corrupted image?"""
    _check_names(weights)
    return any(LOSSES[n].needs_corrupt for n in weights)


def _check_names(weights: Mapping[str, float]) -> None:
    unknown = [n for n in weights if n not in LOSSES]
    if unknown:
        raise ValueError(f"unknown loss name(s) {unknown}; known losses: {sorted(LOSSES)}")


# --------------------------------------------------------------------------------------------
# The losses
# --------------------------------------------------------------------------------------------


@declares(reference=True)
def sigmoid(lp: PreferenceLogps, cfg: LossConfig) -> Tensor:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization"), conservative with label smoothing.

    ``loss = -(1 - eps) log sigmoid(beta * h) - eps log sigmoid(-beta * h)``, with
    ``h = (pi_w - ref_w) - (pi_l - ref_l)`` and ``eps = cfg.label_smoothing``.
    ``eps = 0`` is plain DPO and equals TRL 1.16's ``loss_type="sigmoid"``; ``eps > 0`` is
    conservative DPO (cDPO, Mitchell 2023, "A note on DPO with noisy preferences"), which TRL 1.16
    no longer applies to ``sigmoid`` (a deliberate difference).
    """
    r_w, r_l = _logratios(lp, "sigmoid")
    return _smoothed_bce(cfg.beta * (r_w - r_l), cfg.label_smoothing)


@declares(reference=True, length_normalised=True)
def ipo(lp: PreferenceLogps, cfg: LossConfig) -> Tensor:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences").

    ``loss = (h_avg - 1 / (2 * tau))**2`` with the *length-normalised* margin
    ``h_avg = (pi_w - ref_w) / |y_w| - (pi_l - ref_l) / |y_l|`` (token counts clamped to >= 1),
    Eq. 17 of the paper. The per-token normalisation follows TRL 1.16 (``loss_type="ipo"``), which
    reports it as agreed with the IPO authors; ``tau = cfg.ipo_tau`` or, when None, ``cfg.beta``
    (TRL passes beta as tau).
    """
    r_w, r_l = _logratios(lp, "ipo")
    tau = cfg.beta if cfg.ipo_tau is None else cfg.ipo_tau
    h_avg = _per_token(r_w, lp.chosen_tokens) - _per_token(r_l, lp.rejected_tokens)
    return (h_avg - 1.0 / (2.0 * tau)) ** 2


@declares(reference=True)
def hinge(lp: PreferenceLogps, cfg: LossConfig) -> Tensor:
    """SLiC hinge loss (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback").

    ``loss = max(0, 1 - beta * h)``, with the DPO margin ``h``; SLiC's margin delta is ``1 / beta``.
    Same as TRL 1.16's ``loss_type="hinge"`` (which, like DPO, uses reference log-ratios).
    """
    r_w, r_l = _logratios(lp, "hinge")
    return torch.relu(1.0 - cfg.beta * (r_w - r_l))


@declares(reference=True)
def robust(lp: PreferenceLogps, cfg: LossConfig) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback").

    Unbiased loss under label-flip rate ``eps = cfg.label_smoothing``:
    ``loss = ((1 - eps) * softplus(-beta h) - eps * softplus(beta h)) / (1 - 2 eps)``.
    Same as TRL 1.16's ``loss_type="robust"``. Needs ``0 <= eps < 0.5``; with ``eps = 0`` it is DPO.
    """
    eps = cfg.label_smoothing
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"loss 'robust' needs 0 <= label_smoothing < 0.5, got {eps}")
    r_w, r_l = _logratios(lp, "robust")
    z = cfg.beta * (r_w - r_l)
    return ((1.0 - eps) * -F.logsigmoid(z) - eps * -F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


@declares(reference=False, length_normalised=True)
def simpo(lp: PreferenceLogps, cfg: LossConfig) -> Tensor:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward").

    Reference-free and length-normalised:
    ``z = beta * (pi_w / |y_w| - pi_l / |y_l|) - gamma``, ``loss = smoothed softplus(-z)`` with
    ``gamma = cfg.simpo_gamma`` (absolute margin, see :class:`LossConfig`) and the same label
    smoothing as ``sigmoid``. Matches ``trl.experimental.cpo`` with ``loss_type="simpo"`` (whose
    ``simpo_gamma`` is also absolute: it subtracts ``gamma / beta`` before scaling by beta).
    Reference log-probs are ignored.
    """
    avg_w = _per_token(lp.policy_chosen, lp.chosen_tokens)
    avg_l = _per_token(lp.policy_rejected, lp.rejected_tokens)
    return _smoothed_bce(cfg.beta * (avg_w - avg_l) - cfg.simpo_gamma, cfg.label_smoothing)


@declares(reference=True)
def rdpo(lp: PreferenceLogps, cfg: LossConfig) -> Tensor:
    """R-DPO, length-regularised DPO (Park et al. 2024, "Disentangling Length from Quality in Direct
    Preference Optimization", Eq. 9).

    ``loss = smoothed softplus(-(beta * h + alpha * (|y_w| - |y_l|)))`` with ``alpha = cfg.length_alpha``:
    the length difference is added to the margin, so the part of a preference that length alone explains
    gives no gradient, and the policy is not rewarded for growing longer (a longer chosen caption
    already "wins" on length; a longer rejected one must be beaten by content). Uses the same label
    smoothing as ``sigmoid`` so that ``alpha = 0`` reproduces ``sigmoid`` exactly. Not in TRL 1.16.
    """
    r_w, r_l = _logratios(lp, "rdpo")
    length_term = cfg.length_alpha * (lp.chosen_tokens - lp.rejected_tokens)
    return _smoothed_bce(cfg.beta * (r_w - r_l) + length_term, cfg.label_smoothing)


@declares(reference=True, reward_shift=True)
def bco_pair(lp: PreferenceLogps, cfg: LossConfig, delta: float | Tensor = 0.0) -> Tensor:
    """Paired BCO (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment").

    Each reward ``rho = beta * (pi - ref)`` is classified on its own, chosen as positive and rejected
    as negative, after subtracting the reward shift ``delta``:
    ``loss = softplus(-(rho_w - delta)) + softplus(rho_l - delta)``.
    ``delta`` is BCO's running mean of past rewards; :func:`preference_loss` passes
    ``RewardShift.update(...)`` when given a :class:`RewardShift`, else 0. With ``delta = 0`` this is
    TRL 1.16's ``loss_type="bco_pair"`` (which dropped the shift; older TRL, the one MPO was trained
    with, kept it).
    """
    r_w, r_l = _logratios(lp, "bco_pair")
    return -F.logsigmoid(cfg.beta * r_w - delta) - F.logsigmoid(-(cfg.beta * r_l - delta))


@declares(reference=True)
def nca_pair(lp: PreferenceLogps, cfg: LossConfig) -> Tensor:
    """Paired NCA (Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards").

    With ``rho = beta * (pi - ref)``:
    ``loss = softplus(-rho_w) + 0.5 * softplus(rho_w) + 0.5 * softplus(rho_l)``;
    unlike DPO it pushes the chosen likelihood up in absolute terms. Same as TRL 1.16's ``"nca_pair"``.
    """
    r_w, r_l = _logratios(lp, "nca_pair")
    rho_w, rho_l = cfg.beta * r_w, cfg.beta * r_l
    return -F.logsigmoid(rho_w) - 0.5 * F.logsigmoid(-rho_w) - 0.5 * F.logsigmoid(-rho_l)


@declares(reference=True)
def apo_zero(lp: PreferenceLogps, cfg: LossConfig) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions").

    ``loss = (1 - sigmoid(beta * (pi_w - ref_w))) + sigmoid(beta * (pi_l - ref_l))`` (Eq. 7):
    raise the chosen and lower the rejected likelihood, for chosen captions better than the model's
    own. Same as TRL 1.16's ``loss_type="apo_zero"``.
    """
    r_w, r_l = _logratios(lp, "apo_zero")
    return (1.0 - torch.sigmoid(cfg.beta * r_w)) + torch.sigmoid(cfg.beta * r_l)


@declares(reference=False, length_normalised=True)
def sft(lp: PreferenceLogps, cfg: LossConfig) -> Tensor:
    """NLL of the chosen caption: RPO's regulariser (Pang et al. 2024, "Iterative Reasoning Preference
    Optimization"), MPO's generation loss.

    ``loss = -pi_w / |y_w|`` (token-mean, ``cfg.sft_mean=True``) or ``-pi_w`` (sequence sum).
    Reference-free. TRL 1.16's ``loss_type="sft"`` instead pools all chosen tokens of the batch
    before averaging; the two agree per pair and whenever the chosen lengths are equal, and ours
    weighs every pair equally (a deliberate difference).
    """
    if cfg.sft_mean:
        return -_per_token(lp.policy_chosen, lp.chosen_tokens)
    return -lp.policy_chosen


@declares(reference=True, corrupt=True)
def mdpo_image(lp: PreferenceLogps, cfg: LossConfig) -> Tensor:
    """mDPO conditional preference on the image (Wang et al. 2024, "mDPO: Conditional Preference
    Optimization for Multimodal Large Language Models").

    The chosen caption must be preferred with the true image ``m_w`` over a corrupted image ``m_l``:
    ``loss = softplus(-beta * ((pi_w - ref_w) - (pi_w^corrupt - ref_w^corrupt)))``.
    Needs ``ref_chosen``, ``policy_chosen_corrupt`` and ``ref_chosen_corrupt``. Not in TRL 1.16.
    """
    ref_w, pol_c, ref_c = _require(lp, "mdpo_image", "ref_chosen", "policy_chosen_corrupt", "ref_chosen_corrupt")
    return -F.logsigmoid(cfg.beta * ((lp.policy_chosen - ref_w) - (pol_c - ref_c)))


@declares(reference=True)
def mdpo_anchor(lp: PreferenceLogps, cfg: LossConfig) -> Tensor:
    """mDPO anchored preference (Wang et al. 2024, mDPO): keep the chosen reward above an anchor.

    ``loss = softplus(-(beta * (pi_w - ref_w) - delta))`` with ``delta = cfg.anchor_delta`` (0 in
    the paper), so the chosen likelihood cannot fall below the reference's. Needs ``ref_chosen``.
    """
    (ref_w,) = _require(lp, "mdpo_anchor", "ref_chosen")
    return -F.logsigmoid(cfg.beta * (lp.policy_chosen - ref_w) - cfg.anchor_delta)


LOSSES: dict[str, LossFn] = {
    "sigmoid": sigmoid,
    "ipo": ipo,
    "hinge": hinge,
    "robust": robust,
    "simpo": simpo,
    "rdpo": rdpo,
    "bco_pair": bco_pair,
    "nca_pair": nca_pair,
    "apo_zero": apo_zero,
    "sft": sft,
    "mdpo_image": mdpo_image,
    "mdpo_anchor": mdpo_anchor,
}
"""Loss name -> per-pair loss function. New entries with the signature ``(lp, cfg) -> Tensor[B]`` may be added."""

REFERENCE_FREE: frozenset[str] = frozenset(n for n, fn in LOSSES.items() if not fn.needs_reference)
"""Losses that never read reference log-probs (rewards are reported reference-free if only these are used)."""

MIXTURES: dict[str, dict[str, float]] = {
    # MPO (Wang et al. 2024, "Enhancing the Reasoning Ability of Multimodal Large Language Models via
    # Mixed Preference Optimization"): preference loss (DPO) w_p = 0.8, quality loss (BCO) w_q = 0.2,
    # generation loss (token-mean NLL of the chosen response) w_g = 1, the weights of the released
    # InternVL MPO scripts (--sigmoid_loss_weight 0.8 --bco_pair_loss_weight 0.2 --rpo_alpha 1)
    # and of TRL's documented MPO example. BCO there uses the reward shift: pass a RewardShift.
    "mpo": {"sigmoid": 0.8, "bco_pair": 0.2, "sft": 1.0},
    # mDPO (Wang et al. 2024): L = L_DPO + L_CoPO (image-conditional) + L_AncPO (anchor), unweighted.
    "mdpo": {"sigmoid": 1.0, "mdpo_image": 1.0, "mdpo_anchor": 1.0},
    # RPO (Pang et al. 2024): DPO plus token-mean NLL on the chosen response, alpha = 1.
    "rpo": {"sigmoid": 1.0, "sft": 1.0},
}
"""Named weight dicts for :class:`LossConfig` (``LossConfig(weights="mpo")``)."""


# --------------------------------------------------------------------------------------------
# Combination and metrics
# --------------------------------------------------------------------------------------------


def preference_loss(
    lp: PreferenceLogps, cfg: LossConfig, state: RewardShift | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the batch means of the losses named in ``cfg.weights``, plus metrics.

    ``loss = sum_name weight[name] * mean_B(LOSSES[name](lp, cfg))``.

    ``state`` is the :class:`RewardShift` of ``bco_pair``: when given (and ``bco_pair`` is used) it
    is updated with this batch's rewards ``beta * (pi - ref)`` of chosen and rejected, and its new
    mean is the shift delta; when None, delta = 0 (TRL 1.16 behaviour).

    Metrics (detached 0-dim tensors; call ``float()`` to log):

    * ``loss`` and ``loss/<name>`` (the unweighted batch mean of each term);
    * ``rewards/chosen``, ``rewards/rejected``: batch means of ``beta * (pi - ref)``; when no
      reference log-probs are given or every weighted loss is reference-free, of SimPO's
      ``beta * pi / |y|`` instead; ``rewards/margins`` (mean of chosen - rejected) and
      ``rewards/accuracies`` (fraction of pairs with chosen > rejected);
    * ``logps/chosen``, ``logps/rejected``: batch means of the summed policy log-probs;
    * ``kl/implicit`` (only with reference log-probs): the naive Monte-Carlo ("k1") estimate
      ``mean(pi - ref)`` of the sequence-level KL(policy || reference), averaged over the chosen and
      rejected captions. The captions are not sampled from the policy, so this is a drift
      indicator, not an unbiased KL; it starts at 0 and can be negative;
    * ``bco/delta`` when a ``RewardShift`` was used.

    Raises ValueError for an unknown loss name (listing the known ones) and when a loss needs
    reference or corrupted-image log-probs that are None (naming the loss).
    """
    weights = dict(cfg.weights)
    _check_names(weights)
    metrics: dict[str, Tensor] = {}

    delta: float = 0.0
    if state is not None and any(LOSSES[n].needs_reward_shift for n in weights):
        r_w, r_l = _logratios(lp, "bco_pair")
        delta = state.update(cfg.beta * torch.cat([r_w, r_l]))
        metrics["bco/delta"] = torch.tensor(delta)

    total: Tensor | None = None
    for name, weight in weights.items():
        fn = LOSSES[name]
        per_pair = fn(lp, cfg, delta=delta) if fn.needs_reward_shift else fn(lp, cfg)
        term = per_pair.mean()
        metrics[f"loss/{name}"] = term.detach()
        total = weight * term if total is None else total + weight * term
    assert total is not None  # weights is non-empty: LossConfig guarantees it
    metrics["loss"] = total.detach()

    with torch.no_grad():
        reference_free = not lp.has_reference or all(n in REFERENCE_FREE for n in weights)
        if reference_free:
            reward_w = cfg.beta * _per_token(lp.policy_chosen, lp.chosen_tokens)
            reward_l = cfg.beta * _per_token(lp.policy_rejected, lp.rejected_tokens)
        else:
            r_w, r_l = _logratios(lp, "metrics")
            reward_w, reward_l = cfg.beta * r_w, cfg.beta * r_l
        metrics["rewards/chosen"] = reward_w.mean()
        metrics["rewards/rejected"] = reward_l.mean()
        metrics["rewards/margins"] = (reward_w - reward_l).mean()
        metrics["rewards/accuracies"] = (reward_w > reward_l).float().mean()
        metrics["logps/chosen"] = lp.policy_chosen.detach().mean()
        metrics["logps/rejected"] = lp.policy_rejected.detach().mean()
        if lp.has_reference:
            r_w, r_l = _logratios(lp, "metrics")
            metrics["kl/implicit"] = 0.5 * (r_w.mean() + r_l.mean())
    return total, metrics
