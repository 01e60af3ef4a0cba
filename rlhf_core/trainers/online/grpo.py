"""GRPOTrainer: Group Relative Policy Optimization (Shao et al. 2024, arXiv:2402.03300), TRL 1.16's API.

    GRPOTrainer(model="rlhf-tiny" or a causal LM, reward_funcs=fn or [fn, "path/to/reward-model", ...],
                args=GRPOConfig(...), train_dataset=prompts, processing_class=tokenizer).train()

Each generation answers every prompt ``num_generations`` times; a completion's advantage is its reward relative
to its group (``scale_rewards``); the loss is the clipped surrogate of ``loss_type`` with an optional k3 KL
(``beta``) to a frozen reference (no reference at all when ``beta=0``). No value model. The pure functions are
in ``rlhf_core.losses.grpo``; the shared loop in ``rlhf_core.trainers.online.trainer``.
"""

from __future__ import annotations

import torch

from rlhf_core.losses.grpo import PolicyLossOutput, group_advantages, grpo_policy_loss
from rlhf_core.trainers.online.config import GRPOConfig
from rlhf_core.trainers.online.trainer import OnlineTrainer

__all__ = ["GRPOTrainer"]


class GRPOTrainer(OnlineTrainer):
    """GRPO (and Dr. GRPO, DAPO, GSPO through GRPOConfig's loss_type / scale_rewards / importance_sampling_level)."""

    config_class = GRPOConfig
    _name = "grpo"

    def _loss_ignores_micro_batching(self) -> bool:
        # token sums over the accumulation window, a fixed length or per-sequence means of equal-sized micro-batches;
        # "bnpo" (each micro-batch's own token mean) and registered loss types may depend on the cut
        return self.args.loss_type in ("grpo", "dr_grpo", "dapo")

    def _advantages(self, rewards_per_func, group, ref_logps) -> tuple[torch.Tensor, dict[str, float]]:
        args = self.args
        out = group_advantages(
            rewards_per_func, self.rewards.weights, num_generations=args.num_generations,
            scale_rewards=args.scale_rewards, aggregation=args.multi_objective_aggregation,
        )  # fmt: skip
        return out.advantages, {"frac_reward_zero_std": float(out.zero_std.float().mean())}

    def _loss(self, logps, old_logps, ref_logps, advantages, mask, num_items) -> PolicyLossOutput:
        args = self.args
        window_items = num_items * args.gradient_accumulation_steps / args.steps_per_generation
        return grpo_policy_loss(
            logps, old_logps, advantages, mask, loss_type=args.loss_type, epsilon_low=args.epsilon,
            epsilon_high=args.epsilon_high, delta=args.delta, importance_sampling_level=args.importance_sampling_level,
            beta=args.beta, ref_logps=ref_logps, bias_corrected_kl=args.use_bias_correction_kl,
            max_completion_length=args.max_completion_length, num_items=window_items,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
        )  # fmt: skip
