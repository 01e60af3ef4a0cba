"""Direct preference optimisation losses, as pure functions on sequence log-probabilities.

Every variant is its own function of a `PairLogRatios` (the policy/reference log-ratios of a batch of pairs plus
the hyperparameters) returning per-pair losses `[B]`; `DPO_LOSSES` maps the `loss_type` names to them, and
`dpo_loss` combines one or several of them with weights. A new variant is a new registered function.

Notation (per pair b): `rho_w = logpi(y_w|x) - logpi_ref(y_w|x)` (chosen log-ratio), `rho_l` the same for the
rejected response, `d = rho_w - rho_l`, `beta` the inverse temperature / KL strength, `e` = `label_smoothing`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rlhf_core.losses.registry import LossRegistry

__all__ = [
    "DPO_LOSSES",
    "F_DIVERGENCES",
    "F_DIVERGENCE_LOSSES",
    "DPOLossOutput",
    "PairLogRatios",
    "dpo_loss",
    "f_divergence_scores",
    "ld_token_weights",
    "register_dpo_loss",
    "wpo_pair_weights",
]

# EXO's target distribution puts mass e on the rejected response; log(0) is -inf, so when label_smoothing is 0 a
# small flip rate stands in for it.
EXO_DEFAULT_EPSILON = 1e-3


@dataclass(frozen=True)
class PairLogRatios:
    """Inputs shared by every DPO variant (all tensors `[B]`).

    chosen_logratios / rejected_logratios: `logpi - logpi_ref` summed over each completion's tokens.
    policy_chosen_logps: `logpi(y_w|x)` (for the SFT / RPO term).
    chosen_lengths / rejected_lengths: completion token counts, or None (then IPO and SFT use sequence sums).
    """

    chosen_logratios: torch.Tensor
    rejected_logratios: torch.Tensor
    policy_chosen_logps: torch.Tensor
    beta: float
    label_smoothing: float
    chosen_lengths: torch.Tensor | None = None
    rejected_lengths: torch.Tensor | None = None

    @property
    def delta(self) -> torch.Tensor:
        return self.chosen_logratios - self.rejected_logratios


DPOLossFn = Callable[[PairLogRatios], torch.Tensor]
DPO_LOSSES: LossRegistry[DPOLossFn] = LossRegistry("DPO")
# Decorator adding a variant to `DPO_LOSSES` under a name (the value users pass as `loss_type`).
register_dpo_loss = DPO_LOSSES.register


@register_dpo_loss("sigmoid")
def sigmoid_loss(p: PairLogRatios) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290, Eq. 7): `-logsigmoid(beta * d)`.

    With `e > 0` this is conservative DPO (cDPO; Mitchell 2023, "A note on DPO with noisy preferences"), the
    cross-entropy against labels flipped with probability e: `-(1-e) logsigmoid(beta d) - e logsigmoid(-beta d)`.
    """
    z = p.beta * p.delta
    e = p.label_smoothing
    return -(1 - e) * F.logsigmoid(z) - e * F.logsigmoid(-z)


@register_dpo_loss("robust")
def robust_loss(p: PairLogRatios) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, arXiv:2403.00409: the de-biased loss for flip rate e < 1/2):

    `(-(1-e) logsigmoid(beta d) + e logsigmoid(-beta d)) / (1 - 2e)`.
    """
    z = p.beta * p.delta
    e = p.label_smoothing
    return (-(1 - e) * F.logsigmoid(z) + e * F.logsigmoid(-z)) / (1 - 2 * e)


@register_dpo_loss("hinge")
def hinge_loss(p: PairLogRatios) -> torch.Tensor:
    """SLiC-HF calibration loss on the log-ratio margin (Zhao et al. 2023, arXiv:2305.10425, the
    calibration loss L_cal with the reference log-ratio as score):
    `max(0, 1 - beta * d)`."""
    return torch.relu(1 - p.beta * p.delta)


@register_dpo_loss("ipo")
def ipo_loss(p: PairLogRatios) -> torch.Tensor:
    """IPO (Azar et al. 2023, arXiv:2310.12036, Eq. 17, beta playing tau): `(d - 1/(2 beta))^2`.

    When completion lengths are given the log-ratios are averaged per token before the difference: the squared
    loss otherwise grows with completion length, and the paper's results use this normalised form.
    """
    if p.chosen_lengths is not None and p.rejected_lengths is not None:
        delta = p.chosen_logratios / p.chosen_lengths.clamp(
            min=1
        ) - p.rejected_logratios / p.rejected_lengths.clamp(min=1)
    else:
        delta = p.delta
    return (delta - 1 / (2 * p.beta)) ** 2


@register_dpo_loss("exo_pair")
def exo_pair_loss(p: PairLogRatios) -> torch.Tensor:
    """EXO for a pair (Ji et al. 2024, arXiv:2402.00856, Eq. 16): reverse KL from the policy's pair distribution
    `q = softmax(beta * [rho_w, rho_l])` to the target `[1-e, e]` (e = label_smoothing, default 1e-3):

    `sigmoid(z) (logsigmoid(z) - log(1-e)) + sigmoid(-z) (logsigmoid(-z) - log e)` with `z = beta d`.
    """
    e = p.label_smoothing if p.label_smoothing > 0 else EXO_DEFAULT_EPSILON
    z = p.beta * p.delta
    return torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-e)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(e)
    )


@register_dpo_loss("nca_pair")
def nca_pair_loss(p: PairLogRatios) -> torch.Tensor:
    """NCA for a pair (Chen et al. 2024, arXiv:2402.05369, the NCA loss with K = 2 responses), on the rewards
    `r = beta rho`:

    `-logsigmoid(r_w) - 1/2 logsigmoid(-r_w) - 1/2 logsigmoid(-r_l)`.
    """
    r_w = p.beta * p.chosen_logratios
    r_l = p.beta * p.rejected_logratios
    return -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)


@register_dpo_loss("bco_pair")
def bco_pair_loss(p: PairLogRatios) -> torch.Tensor:
    """Binary classifier optimisation on a pair (Jung et al. 2024, arXiv:2404.04656, the BCO loss with the
    reward shift delta = 0): `-logsigmoid(beta rho_w) - logsigmoid(-beta rho_l)`."""
    return -F.logsigmoid(p.beta * p.chosen_logratios) - F.logsigmoid(-p.beta * p.rejected_logratios)


@register_dpo_loss("sppo_hard")
def sppo_hard_loss(p: PairLogRatios) -> torch.Tensor:
    """SPPO with hard win probabilities (Wu et al. 2024, arXiv:2405.00675, Eq. 4.7 with P = 1 for the winner and 0
    for the loser): `(rho_w - 1/(2 beta))^2 + (rho_l + 1/(2 beta))^2`."""
    half = 0.5 / p.beta
    return (p.chosen_logratios - half) ** 2 + (p.rejected_logratios + half) ** 2


@register_dpo_loss("apo_zero")
def apo_zero_loss(p: PairLogRatios) -> torch.Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, arXiv:2408.06266, Eq. 7), for chosen answers better than the model's:
    `1 - sigmoid(beta rho_w) + sigmoid(beta rho_l)`."""
    return 1 - torch.sigmoid(p.beta * p.chosen_logratios) + torch.sigmoid(p.beta * p.rejected_logratios)


@register_dpo_loss("apo_down")
def apo_down_loss(p: PairLogRatios) -> torch.Tensor:
    """APO-down (D'Oosterlinck et al. 2024, arXiv:2408.06266, Eq. 8), for chosen answers worse than the model's:
    `sigmoid(beta rho_w) + 1 - sigmoid(beta d)`."""
    return torch.sigmoid(p.beta * p.chosen_logratios) + 1 - torch.sigmoid(p.beta * p.delta)


@register_dpo_loss("sft")
def sft_nll_loss(p: PairLogRatios) -> torch.Tensor:
    """NLL of the chosen completion, the extra term of RPO (Pang et al. 2024, arXiv:2404.19733, the L_NLL term):
    `-logpi(y_w|x) / |y_w|` (per-token mean when lengths are given, the sequence NLL otherwise)."""
    nll = -p.policy_chosen_logps
    if p.chosen_lengths is not None:
        nll = nll / p.chosen_lengths.clamp(min=1)
    return nll


# ---- f-DPO -------------------------------------------------------------------------------------------------

# The variants built on the chosen-rejected difference d (and the SFT term, which reads no log-ratio): the ones
# for which replacing the log-ratios by f'(u) is the f-DPO objective.
F_DIVERGENCE_LOSSES = frozenset({"sigmoid", "robust", "hinge", "ipo", "exo_pair", "sft"})
_EXP_CAP = {torch.float16: 11.0, torch.bfloat16: 80.0, torch.float32: 80.0, torch.float64: 80.0}


def _reverse_kl(logratio: torch.Tensor, alpha: float) -> torch.Tensor:
    return logratio


def _forward_kl(logratio: torch.Tensor, alpha: float) -> torch.Tensor:
    return 1 - torch.exp(-logratio)


def _js_divergence(logratio: torch.Tensor, alpha: float) -> torch.Tensor:
    return math.log(2) + F.logsigmoid(logratio)


def _alpha_divergence(logratio: torch.Tensor, alpha: float) -> torch.Tensor:
    if abs(alpha - 1.0) < 1e-6:  # the limit is log u: reverse KL
        return logratio
    t = ((alpha - 1.0) * logratio).float().clamp(max=_EXP_CAP.get(logratio.dtype, 80.0))
    return ((torch.exp(t) - 1.0) / (alpha - 1.0)).to(logratio.dtype)


F_DIVERGENCES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "reverse_kl": _reverse_kl,
    "forward_kl": _forward_kl,
    "js_divergence": _js_divergence,
    "alpha_divergence": _alpha_divergence,
}


def f_divergence_scores(logratio: torch.Tensor, f_divergence_type: str, alpha: float = 0.5) -> torch.Tensor:
    """``f'(u)`` at ``u = pi / pi_ref`` from ``log u`` (any shape): f-DPO (Wang et al. 2023, arXiv:2309.16240,
    Theorem 1 and Table 1) puts ``f'(u)`` where DPO has ``log u``.

    reverse_kl: ``log u`` (DPO). forward_kl: ``1 - 1/u``. js_divergence: ``log(2u / (1 + u))``.
    alpha_divergence: ``(u^(alpha-1) - 1) / (alpha - 1)`` (TRL 1.16's parametrisation: the paper's
    ``(1 - u^-a) / a`` with ``a = 1 - alpha``; alpha = 1 is the reverse-KL limit); the exponent is capped so that
    ``exp`` stays finite in the tensor's dtype.
    """
    if f_divergence_type not in F_DIVERGENCES:
        raise ValueError(f"unknown f_divergence_type {f_divergence_type!r}; known: {sorted(F_DIVERGENCES)}")
    return F_DIVERGENCES[f_divergence_type](logratio, alpha)


# ---- LD-DPO and WPO: how sequence log-probs are formed and pairs weighted ------------------------------------


def ld_token_weights(rows: torch.Tensor, num_tokens: torch.Tensor, alpha: float) -> torch.Tensor:
    """LD-DPO (Liu et al. 2024, arXiv:2409.06411, Eq. 7) per-token weights of a chosen-then-rejected batch.

    ``log pi(y) = sum_{t <= l_p} log pi(y_t) + alpha * sum_{t > l_p} log pi(y_t)`` where ``l_p`` is the shorter
    completion's length of the pair: the tokens beyond it (the "verbose" part) count ``alpha`` (1: plain DPO).

    Args:
        rows: ``[N]`` the row of each completion token, row-major (``mask.nonzero()`` order), rows ``[2B]``
            being the B chosen completions then the B rejected ones.
        num_tokens: ``[2B]`` completion tokens per row.
    Returns:
        ``[N]`` weights, 1 on each pair's shared length and ``alpha`` after it.
    """
    chosen, rejected = num_tokens.chunk(2)
    shared = torch.minimum(chosen, rejected).repeat(2)
    offsets = torch.cumsum(num_tokens, 0) - num_tokens
    position = torch.arange(rows.numel(), device=rows.device) - offsets[rows]
    ones = torch.ones(rows.shape, dtype=torch.float32, device=rows.device)
    return torch.where(position < shared[rows], ones, ones * alpha)


def wpo_pair_weights(
    token_logps: torch.Tensor, token_log_sum_sq: torch.Tensor, rows: torch.Tensor, num_tokens: torch.Tensor
) -> torch.Tensor:
    """WPO (Zhou et al. 2024, arXiv:2406.11827, Eq. 2 with the aligned normalisation, as TRL 1.16) pair weights.

    ``w(x, y) = exp(mean_t [log pi(y_t) - log sum_v pi(v)^2])`` per completion, and the pair's weight is
    ``w(x, y_w) * w(x, y_l)``, detached. Args: ``token_logps``/``token_log_sum_sq`` ``[N]`` per completion token
    (``log sum_v pi(v | .)^2`` at its position), ``rows`` ``[N]`` and ``num_tokens`` ``[2B]`` as in
    `ld_token_weights`. Returns ``[B]``.
    """
    aligned = (token_logps - token_log_sum_sq).detach().float()
    sums = torch.zeros(num_tokens.shape[0], dtype=aligned.dtype, device=aligned.device).index_add(
        0, rows, aligned
    )
    weights = torch.exp(sums / num_tokens.clamp(min=1).to(aligned.dtype))
    chosen, rejected = weights.chunk(2)
    return chosen * rejected


class DPOLossOutput(NamedTuple):
    """What `dpo_loss` returns.

    losses: `[B]` weighted sum of the requested variants per pair (differentiable).
    chosen_rewards / rejected_rewards: `[B]` implicit rewards `beta * (logpi - logpi_ref)`, detached.
    terms: `{loss_type: scalar}` mean of each unweighted variant over the batch, detached (for logging).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    terms: dict[str, torch.Tensor]


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
    pair_weights: torch.Tensor | None = None,
) -> DPOLossOutput:
    """Per-pair DPO-family losses from sequence log-probabilities.

    Args:
        policy_chosen_logps, policy_rejected_logps: `[B]` summed completion log-probs under the policy.
        ref_chosen_logps, ref_rejected_logps: `[B]` the same under the reference model (no gradient needed).
        beta: strength of the implicit KL constraint (> 0).
        loss_type: a name in `DPO_LOSSES` or a list of names (e.g. `["sigmoid", "sft"]` for RPO).
        loss_weights: one weight per name in `loss_type` (default 1.0 each).
        label_smoothing: assumed label-flip rate e (cDPO for "sigmoid", rDPO for "robust", EXO's target).
        chosen_lengths, rejected_lengths: optional `[B]` completion token counts (per-token IPO and SFT terms).
        f_divergence_type, f_alpha_divergence_coef: f-DPO (`f_divergence_scores`): the losses see ``f'(u)`` in
            place of the log-ratios (only the variants of `F_DIVERGENCE_LOSSES`); the reported rewards stay
            ``beta * log-ratio``.
        pair_weights: optional `[B]` weights of the per-pair losses (WPO: `wpo_pair_weights`), detached.

    Returns:
        `DPOLossOutput`; the trainer reduces `losses` (sum / pairs in the accumulated batch).

    At policy == reference every log-ratio is 0 and the "sigmoid" loss is exactly ln 2 per pair.
    """
    names = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = _check_dpo_arguments(names, loss_weights, beta, label_smoothing)
    _check_f_divergence(names, f_divergence_type)
    _check_logp_shapes(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps.detach().to(policy_chosen_logps.dtype)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps.detach().to(policy_rejected_logps.dtype)
    pair = PairLogRatios(
        chosen_logratios=f_divergence_scores(chosen_logratios, f_divergence_type, f_alpha_divergence_coef),
        rejected_logratios=f_divergence_scores(
            rejected_logratios, f_divergence_type, f_alpha_divergence_coef
        ),
        policy_chosen_logps=policy_chosen_logps,
        beta=beta,
        label_smoothing=label_smoothing,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    losses, terms = _weighted_terms(pair, names, weights, pair_weights)
    return DPOLossOutput(
        losses=losses,
        chosen_rewards=(beta * chosen_logratios).detach(),
        rejected_rewards=(beta * rejected_logratios).detach(),
        terms=terms,
    )


def _check_logp_shapes(*logps: torch.Tensor) -> None:
    shapes = {t.shape for t in logps}
    if len(shapes) != 1 or logps[0].dim() != 1:
        raise ValueError(f"dpo_loss expects four [B] tensors of the same shape, got shapes {sorted(shapes)}")


def _weighted_terms(
    pair: PairLogRatios, names: list[str], weights: Sequence[float], pair_weights: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``sum_k w_k * loss_k`` per pair (each optionally scaled by its WPO pair weight) and each term's batch mean."""
    losses = torch.zeros_like(pair.policy_chosen_logps)
    terms: dict[str, torch.Tensor] = {}
    for name, weight in zip(names, weights):
        term = DPO_LOSSES[name](pair)
        if pair_weights is not None:
            term = term * pair_weights.detach().to(term.dtype)
        terms[name] = term.detach().mean()
        losses = losses + weight * term
    return losses, terms


def _check_f_divergence(names: list[str], f_divergence_type: str) -> None:
    if f_divergence_type != "reverse_kl" and not set(names) <= F_DIVERGENCE_LOSSES:
        raise ValueError(
            f"f_divergence_type={f_divergence_type!r} applies to the losses {sorted(F_DIVERGENCE_LOSSES)} only, "
            f"got {names}"
        )


def _check_dpo_arguments(
    names: list[str], loss_weights: Sequence[float] | None, beta: float, label_smoothing: float
) -> list[float]:
    if not names:
        raise ValueError("loss_type must name at least one DPO loss")
    unknown = [n for n in names if n not in DPO_LOSSES]
    if unknown:
        raise ValueError(f"unknown DPO loss_type {unknown}; known: {sorted(DPO_LOSSES)}")
    if loss_weights is None:
        weights = [1.0] * len(names)
    else:
        weights = [float(w) for w in loss_weights]
        if len(weights) != len(names):
            raise ValueError(
                f"loss_weights has {len(weights)} entries for {len(names)} loss types {names}; give one per type"
            )
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(
            f"label_smoothing is a label-flip rate and must be in [0, 0.5), got {label_smoothing}"
        )
    return weights
