"""The optimisation half of a PPO update: ``num_ppo_epochs`` shuffled passes of clipped policy + value loss.

Each mini-batch is one optimizer step. Its micro-batches each contribute their summed token losses divided by
the token count of the whole mini-batch, so gradient accumulation gives the same update as one big batch.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from rlhf_core.losses.ppo import clipped_policy_loss, clipped_value_loss, masked_mean
from rlhf_core.trainers.ppo.config import PPOConfig
from rlhf_core.trainers.ppo.experience import Experience, mini_batch_indices

__all__ = ["OptimisationStats", "run_ppo_epochs"]

# (what, value, micro-batch index or None) -> raises
NonFiniteHandler = Callable[[str, float, int | None], None]


@dataclass
class OptimisationStats:
    """Token-weighted averages over every micro-batch of the update."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    weight: float = 0.0
    optimizer_steps: int = 0
    loss_total: float = 0.0

    def add(self, values: dict[str, torch.Tensor], tokens: float) -> None:
        for key, value in values.items():
            self.sums[key] += float(value) * tokens
        self.weight += tokens

    def means(self) -> dict[str, float]:
        return {key: value / max(self.weight, 1.0) for key, value in self.sums.items()}


def _micro_batch_loss(
    model: nn.Module, exp: Experience, rows: torch.Tensor, num_tokens: torch.Tensor, cfg: PPOConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor], float, Experience]:
    """The micro-batch's loss, its statistics and token count, and ``exp`` (completed if it was waiting)."""
    part, _ = exp.batch.select(rows).trimmed()
    width = part.response_ids.shape[1]
    out = model(
        part.prompt_ids,
        part.prompt_mask,
        part.response_ids,
        part.response_mask,
        temperature=cfg.temperature,
        return_entropy=True,
    )
    if exp.finish is not None:
        # The rollout left the old values to this forward (RolloutEngine.defers_values): these rows are the
        # whole batch and the parameters are still the rollout's, so its values are the old ones.
        values = out.values.new_zeros(exp.batch.response_ids.shape)
        values[rows, :width] = out.values.detach()
        exp = exp.finish(values)
    mask = part.learn_mask

    def old(t: torch.Tensor) -> torch.Tensor:
        return t[rows][:, :width]

    pg = clipped_policy_loss(
        out.logprobs,
        old(exp.logprobs),
        old(exp.advantages),
        mask,
        clip_range=cfg.cliprange,
        num_items=num_tokens,
    )
    vf = clipped_value_loss(
        out.values,
        old(exp.values),
        old(exp.returns),
        mask,
        clip_range_value=cfg.cliprange_value,
        num_items=num_tokens,
    )
    loss = pg.loss + cfg.vf_coef * vf.loss
    tokens = float(mask.sum())
    # The losses are divided by the mini-batch's tokens; the logged values are this micro-batch's token means.
    share = float(num_tokens) / max(tokens, 1.0)
    stats = {
        "loss/policy": pg.loss.detach() * share,
        "loss/value": vf.loss.detach() * share,
        "policy/approxkl": pg.approxkl,
        "policy/clipfrac": pg.clipfrac,
        "policy/entropy": masked_mean(out.entropy, mask),
        "val/ratio": pg.ratio_mean,
        "val/clipfrac": vf.clipfrac,
        "val/mean": vf.values_mean,
    }
    return loss, stats, tokens, exp


def run_ppo_epochs(
    exp: Experience,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    accelerator,
    config: PPOConfig,
    on_nonfinite: NonFiniteHandler,
    generator: torch.Generator | None = None,
) -> OptimisationStats:
    """Optimise ``model`` (the prepared ``PolicyAndValue``) on ``exp``; returns the averaged statistics."""
    stats = OptimisationStats()
    model.train()
    for _ in range(config.num_ppo_epochs):
        for micro_batches in mini_batch_indices(
            len(exp), config.mini_batch_size, config.per_device_train_batch_size, generator
        ):
            num_tokens = (
                sum(exp.mask[rows].sum() for rows in micro_batches).clamp(min=1).to(exp.logprobs.dtype)
            )
            if accelerator.num_processes > 1:
                # DDP averages the ranks' gradients: dividing by the global mini-batch's tokens / world size makes
                # the update that of one process with the whole global mini-batch (ranks' token counts differ).
                num_tokens = accelerator.reduce(num_tokens, reduction="sum") / accelerator.num_processes
            for index, rows in enumerate(micro_batches):
                last = index == len(micro_batches) - 1
                sync = (
                    contextlib.nullcontext()
                    if last or accelerator.num_processes == 1
                    else accelerator.no_sync(model)
                )
                with sync:
                    with accelerator.autocast():
                        loss, values, tokens, exp = _micro_batch_loss(model, exp, rows, num_tokens, config)
                    if not math.isfinite(float(loss.detach())):
                        on_nonfinite("loss", float(loss.detach()), index)
                    accelerator.backward(loss)
                stats.add(values, tokens)
                stats.loss_total += float(loss.detach())
            _optimizer_step(model, optimizer, lr_scheduler, accelerator, config, on_nonfinite)
            stats.optimizer_steps += 1
    return stats


def _optimizer_step(model, optimizer, lr_scheduler, accelerator, config: PPOConfig, on_nonfinite) -> None:
    if config.max_grad_norm is not None and config.max_grad_norm > 0:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            on_nonfinite("gradient norm", float(grad_norm), None)
    optimizer.step()
    if lr_scheduler is not None:
        lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
