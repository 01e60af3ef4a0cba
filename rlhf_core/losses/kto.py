"""Kahneman-Tversky optimisation losses: unpaired preference losses on sequence log-probabilities.

KTO (Ethayarajh et al. 2024, arXiv:2402.01306, Eq. 7 / 8). Each example is one completion `y` of a prompt `x`
with a binary label (desirable or undesirable); no pairing is needed. With the implied reward
`r(x, y) = log pi(y|x) - log pi_ref(y|x)` and the reference point `z0 = KL(pi(y'|x) || pi_ref(y'|x))`::

    v(x, y) = lambda_D * sigmoid(beta * (r(x, y) - z0))   if y is desirable
              lambda_U * sigmoid(beta * (z0 - r(x, y)))   if y is undesirable
    L_KTO   = E_{x,y}[ lambda_y - v(x, y) ]

so the per-example loss is `lambda_y * (1 - sigmoid(...))`. `z0` gets no gradient: it is estimated from
mismatched pairs (each prompt with another example's completion, `kto_reference_point`), averaged over the batch
and clamped at 0 (a KL is never negative; the estimate can be).

`KTO_LOSSES` maps the `loss_type` names to their per-example functions; `kto_loss` applies one and the class
weights. A new variant is a new registered function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from rlhf_core.losses.registry import LossRegistry

__all__ = ["KTO_LOSSES", "KTOLossOutput", "kto_loss", "kto_reference_point", "register_kto_loss"]

# (logratios [N], desirable [N] bool, z0 scalar, beta) -> unweighted per-example losses [N]
KTOLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
KTO_LOSSES: LossRegistry[KTOLossFn] = LossRegistry("KTO")
# Decorator adding a variant to `KTO_LOSSES` under a name (the value users pass as `loss_type`).
register_kto_loss = KTO_LOSSES.register


@register_kto_loss("kto")
def kto_prospect_loss(
    logratios: torch.Tensor, desirable: torch.Tensor, z0: torch.Tensor, beta: float
) -> torch.Tensor:
    """KTO (arXiv:2402.01306, Eq. 7): `1 - sigmoid(beta (r - z0))` for desirable, `1 - sigmoid(beta (z0 - r))`
    for undesirable examples."""
    sign = desirable.to(logratios.dtype) * 2 - 1
    return 1 - torch.sigmoid(beta * sign * (logratios - z0))


@register_kto_loss("apo_zero_unpaired")
def apo_zero_unpaired_loss(
    logratios: torch.Tensor, desirable: torch.Tensor, z0: torch.Tensor, beta: float
) -> torch.Tensor:
    """Unpaired APO-zero (D'Oosterlinck et al. 2024, arXiv:2408.06266, Eq. 7 unpaired): `1 - sigmoid(beta r)` for
    desirable, `sigmoid(beta r)` for undesirable examples. No reference point (`z0` is ignored)."""
    z = beta * logratios
    return torch.where(desirable, 1 - torch.sigmoid(z), torch.sigmoid(z))


class KTOLossOutput(NamedTuple):
    """losses: `[N]` weighted per-example losses (the trainer sums them and divides by the example count);
    rewards: `[N]` detached implied rewards `beta * r`; z0: the detached reference point used (scalar)."""

    losses: torch.Tensor
    rewards: torch.Tensor
    z0: torch.Tensor


def kto_reference_point(kl_logratio_sum: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """`z0` (arXiv:2402.01306, Sec. 4.1): the mean of `log pi(y'|x) - log pi_ref(y'|x)` over mismatched pairs
    `(x, y')`, clamped at 0, without gradient.

    Args:
        kl_logratio_sum: scalar, the log-ratios summed over the mismatched pairs (of every process, when the
            caller gathers them: the estimate is then the same on every rank).
        count: how many pairs the sum covers (0 gives 0).
    """
    count = torch.as_tensor(count, dtype=kl_logratio_sum.dtype, device=kl_logratio_sum.device)
    return (kl_logratio_sum.detach() / count.clamp(min=1)).clamp(min=0)


def kto_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    desirable: torch.Tensor,
    *,
    z0: torch.Tensor | float = 0.0,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
) -> KTOLossOutput:
    """Per-example KTO losses of a batch of labelled completions.

    Args:
        policy_logps: `[N]` summed completion log-probs under the policy, `log pi(y|x)`.
        reference_logps: `[N]` the same under the reference model.
        desirable: `[N]` bool, True for desirable (label True) completions.
        z0: the reference point (see `kto_reference_point`), a scalar; no gradient flows through it.
        beta: inverse temperature of the implied reward (> 0).
        desirable_weight, undesirable_weight: `lambda_D`, `lambda_U` (Eq. 8 of the paper suggests
            `lambda_D n_D / (lambda_U n_U)` in [1, 4/3] for imbalanced data).
        loss_type: a name in `KTO_LOSSES` ("kto", "apo_zero_unpaired").
    """
    if loss_type not in KTO_LOSSES:
        raise ValueError(f"unknown KTO loss_type {loss_type!r}; known: {sorted(KTO_LOSSES)}")
    desirable = desirable.to(device=policy_logps.device, dtype=torch.bool)
    logratios = policy_logps - reference_logps.to(policy_logps.dtype)
    z0 = torch.as_tensor(z0, dtype=logratios.dtype, device=logratios.device).detach()
    unweighted = KTO_LOSSES[loss_type](logratios, desirable, z0, beta)
    weights = torch.where(
        desirable,
        torch.as_tensor(desirable_weight, dtype=logratios.dtype, device=logratios.device),
        torch.as_tensor(undesirable_weight, dtype=logratios.dtype, device=logratios.device),
    )
    return KTOLossOutput(losses=weights * unweighted, rewards=(beta * logratios).detach(), z0=z0)
