"""The rollout half of a PPO update: sample responses, score them, compute old log-probs, values and rewards.

Everything here runs without gradients: generation with a KV cache in chunks of
``local_rollout_forward_batch_size`` rows, then the policy (+ value) and the reference in micro-batches of the
same size through the fused log-prob kernel. Log-probs use the sampling temperature, so they are those of the
distribution the tokens came from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlhf_core.rollout.generation import generate
from rlhf_core.rollout.logprobs import ResponseBatch, pad_columns, response_logprobs
from rlhf_core.rollout.sampling import SamplingParams
from rlhf_core.rollout.scoring import RewardFn, reward_function_scores, reward_model_scores
from rlhf_core.trainers.ppo.config import PPOConfig
from rlhf_core.trainers.ppo.experience import Experience, build_experience
from rlhf_core.trainers.ppo.policy_value import PolicyAndValue

__all__ = ["RolloutEngine", "Sampled", "stop_token_ids"]


@dataclass
class Sampled:
    """A sampled batch, with the old log-probs and values [B, R] when sampling could provide them."""

    batch: ResponseBatch
    logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None


def stop_token_ids(config: PPOConfig, tokenizer: Any) -> list[int]:
    """The ids that end a response: ``stop_token_id`` if set, else eos when ``stop_token="eos"``."""
    if config.stop_token_id is not None:
        return [int(config.stop_token_id)]
    if config.stop_token == "eos":
        if tokenizer.eos_token_id is None:
            raise ValueError(
                "stop_token='eos' but the tokenizer has no eos token: set stop_token_id or stop_token=None"
            )
        return [int(tokenizer.eos_token_id)]
    return []


@dataclass
class RolloutEngine:
    """Samples and scores episodes for ``PolicyAndValue`` ``model`` (a callable returning the unwrapped module)."""

    config: PPOConfig
    tokenizer: Any
    model: Callable[[], PolicyAndValue]
    ref_model: nn.Module | None
    reward_model: nn.Module | None = None
    reward_fn: RewardFn | None = None

    def __post_init__(self) -> None:
        self.stop_ids = stop_token_ids(self.config, self.tokenizer)
        self.pad_id = int(self.tokenizer.pad_token_id)

    @property
    def sampling(self) -> SamplingParams:
        cfg = self.config
        return SamplingParams(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)

    @torch.no_grad()
    def sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> Sampled:
        """Responses to left-padded prompts, in chunks; [B, R] with R the longest response of the batch.

        Unless ``recompute_rollout_logprobs``, the sampled tokens' log-probs are read off the sampling logits
        and, with a value head on the policy, the values off the hidden states the tokens were sampled from:
        the rollout then needs no policy pass of its own.
        """
        model = self.model()
        chunk = self.config.local_rollout_forward_batch_size
        keep = not self.config.recompute_rollout_logprobs
        with_values = keep and model.v_head is not None
        parts: list[tuple[torch.Tensor, ...]] = []
        with _eval_mode(model):
            for start in range(0, prompt_ids.shape[0], chunk):
                out = generate(
                    model.policy,
                    prompt_ids[start : start + chunk],
                    prompt_mask[start : start + chunk],
                    max_new_tokens=self.config.response_length,
                    pad_token_id=self.pad_id,
                    stop_token_ids=self.stop_ids,
                    sampling=self.sampling,
                    return_logprobs=keep,
                    return_hidden_states=with_values,
                )
                values = model.v_head(out.hidden_states).float() * out.response_mask if with_values else None
                parts.append((out.response_ids, out.response_mask, out.logprobs, values))
        width = max(p[0].shape[1] for p in parts)

        def column(i: int, fill: float = 0) -> torch.Tensor | None:
            if parts[0][i] is None:
                return None
            return torch.cat([pad_columns(p[i], width, fill) for p in parts])

        batch = ResponseBatch(prompt_ids, prompt_mask.long(), column(0, self.pad_id).long(), column(1).long())
        return Sampled(batch, column(2), column(3))

    def decode_responses(self, batch: ResponseBatch) -> list[str]:
        ids = batch.response_ids.masked_fill(batch.response_mask == 0, self.pad_id)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def score(self, batch: ResponseBatch, prompts: Sequence[Any] | None = None) -> torch.Tensor:
        """Scores [B] from the reward model or ``reward_fn(prompts, responses)``, minus ``missing_eos_penalty``
        for responses that never emitted a stop token."""
        if self.reward_fn is not None:
            if prompts is None:
                prompts = self.tokenizer.batch_decode(
                    batch.prompt_ids.masked_fill(batch.prompt_mask == 0, self.pad_id),
                    skip_special_tokens=True,
                )
            scores = reward_function_scores(
                self.reward_fn, prompts, self.decode_responses(batch), device=batch.response_ids.device
            )
        elif self.reward_model is not None:
            with _eval_mode(self.reward_model):
                scores = reward_model_scores(
                    self.reward_model, batch, micro_batch_size=self.config.local_rollout_forward_batch_size
                )
        else:
            raise ValueError(
                "no reward: pass reward_model= or reward_fn= to PPOTrainer (or scores to step())"
            )
        return self.apply_missing_eos_penalty(batch, scores)

    def apply_missing_eos_penalty(self, batch: ResponseBatch, scores: torch.Tensor) -> torch.Tensor:
        if self.config.missing_eos_penalty is None or not self.stop_ids:
            return scores
        stops = torch.as_tensor(self.stop_ids, device=batch.response_ids.device)
        has_stop = (torch.isin(batch.response_ids, stops) & (batch.response_mask == 1)).any(-1)
        return scores - self.config.missing_eos_penalty * (~has_stop).to(scores.dtype)

    @torch.no_grad()
    def evaluate(self, sampled: Sampled) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(policy log-probs, reference log-probs, values), each [B, R], before any update.

        What sampling already produced is reused: known log-probs leave only the values to compute (nothing at
        all when those are known too); the reference pass always runs.
        """
        batch, model = sampled.batch, self.model()
        size, temperature = self.config.local_rollout_forward_batch_size, self.config.temperature
        logps, values = [], []
        with _eval_mode(model):
            for start in range(0, len(batch), size):
                if sampled.logprobs is not None and sampled.values is not None:
                    break
                part, width = batch.select(slice(start, start + size)).trimmed()
                if sampled.logprobs is not None:
                    values.append(pad_columns(model.values(part).float(), width))
                    continue
                out = model(
                    part.prompt_ids,
                    part.prompt_mask,
                    part.response_ids,
                    part.response_mask,
                    temperature=temperature,
                )
                logps.append(pad_columns(out.logprobs, width))
                values.append(pad_columns(out.values.float(), width))
            with self._reference() as ref:
                ref_logps = response_logprobs(ref, batch, temperature=temperature, micro_batch_size=size)
        policy_logps = sampled.logprobs if sampled.logprobs is not None else torch.cat(logps)
        policy_values = sampled.values if sampled.values is not None else torch.cat(values)
        return policy_logps, ref_logps, policy_values

    @contextlib.contextmanager
    def _reference(self):
        if self.ref_model is not None:
            with _eval_mode(self.ref_model):
                yield self.ref_model
            return
        policy = self.model().policy  # a PEFT policy: the reference is the base model, adapters off
        with _eval_mode(policy), policy.disable_adapter():
            yield policy

    def experience(
        self, sampled: Sampled | ResponseBatch, scores: torch.Tensor, kl_coef: float
    ) -> Experience:
        """Experience of a scored batch (a ``ResponseBatch`` from ``step()`` is scored from scratch)."""
        if isinstance(sampled, ResponseBatch):
            sampled = Sampled(sampled)
        logps, ref_logps, values = self.evaluate(sampled)
        cfg = self.config
        return build_experience(
            sampled.batch,
            logprobs=logps,
            ref_logprobs=ref_logps,
            values=values,
            scores=scores,
            kl_coef=kl_coef,
            kl_estimator=cfg.kl_estimator,
            gamma=cfg.gamma,
            lam=cfg.lam,
            whiten_rewards=cfg.whiten_rewards,
            whiten_advantages=cfg.whiten_advantages,
        )


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
