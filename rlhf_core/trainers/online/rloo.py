"""RLOOTrainer: REINFORCE Leave-One-Out (Ahmadian et al. 2024, arXiv:2402.14740), TRL 1.16's API.

    RLOOTrainer(model=..., reward_funcs=..., args=RLOOConfig(...), train_dataset=prompts,
                processing_class=tokenizer).train()

Each prompt is answered ``num_generations`` (k) times; a completion's reward, minus ``beta`` times its summed k1
KL to the reference (in the reward, as the paper), is compared with the mean reward of its k - 1 siblings. The
loss is the clipped sequence-level surrogate (``rlhf_core.losses.grpo.rloo_policy_loss``). No value model.
"""

from __future__ import annotations

import torch

from rlhf_core.losses.grpo import PolicyLossOutput, rloo_advantages, rloo_policy_loss, weighted_rewards
from rlhf_core.trainers.online.config import RLOOConfig
from rlhf_core.trainers.online.trainer import OnlineTrainer

__all__ = ["RLOOTrainer"]


class RLOOTrainer(OnlineTrainer):
    """RLOO with TRL 1.16's RLOOConfig (beta in the reward, reward_clip_range, normalize_advantages)."""

    config_class = RLOOConfig
    _name = "rloo"
    _kl_in_loss = False

    def _needs_old_logps(self) -> bool:
        return True  # the KL penalty in the reward is taken at the sampling policy

    def _loss_ignores_micro_batching(self) -> bool:
        return True  # per-sequence terms, averaged over equal-sized micro-batches

    def _advantages(self, rewards_per_func, group, ref_logps) -> tuple[torch.Tensor, dict[str, float]]:
        args, acc = self.args, self.accelerator
        rewards = weighted_rewards(rewards_per_func, self.rewards.weights.to(rewards_per_func.device))
        if args.reward_clip_range:
            rewards = rewards.clamp(min=args.reward_clip_range[0], max=args.reward_clip_range[1])
        extra: dict[str, float] = {}
        if args.beta != 0.0:
            mask = group.batch.response_mask.to(group.logprobs.dtype)
            per_token_kl = (group.logprobs - ref_logps) * mask
            rewards = rewards - args.beta * acc.gather(per_token_kl.sum(-1))
            totals = acc.reduce(torch.stack([per_token_kl.sum(), mask.sum()]), reduction="sum")
            extra["kl"] = float(totals[0] / totals[1].clamp(min=1))
        grouped = rewards.view(-1, args.num_generations)
        extra["frac_reward_zero_std"] = float(
            torch.isclose(grouped.std(dim=1), torch.zeros(())).float().mean()
        )
        advantages = rloo_advantages(rewards, num_generations=args.num_generations,
                                     normalize=args.normalize_advantages)  # fmt: skip
        return advantages, extra

    def _loss(self, logps, old_logps, ref_logps, advantages, mask, num_items) -> PolicyLossOutput:
        args = self.args
        return rloo_policy_loss(
            logps, old_logps, advantages, mask, epsilon_low=args.epsilon, epsilon_high=args.epsilon_high,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
        )  # fmt: skip
