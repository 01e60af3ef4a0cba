"""One PPO batch of experience, made in one straight path (OpenRLHF's make_experience -> advantages -> train).

``RolloutEngine.make_experience(prompts)`` samples responses, scores them, computes the old log-probs and values
and the reference log-probs (no gradients, micro-batches of ``local_rollout_forward_batch_size`` through the fused
log-prob kernel), then the KL-penalised per-token rewards, GAE advantages and returns: an ``Experience``. The
classic ``step()`` wraps the episodes it is given into the same ``Experience`` and joins the path after sampling.
The PPO epochs (``optimisation.run_ppo_epochs``) then run over it.

The sampling, scoring and reference pieces are plain functions that need no value model, for the online trainers
(GRPO, RLOO) to call. Log-probs use the sampling temperature, so they are those of the distribution the tokens
came from. The rewards and advantages (``Experience`` itself, ``build_experience``) are in ``advantages.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlhf_core.models.module_state import eval_mode
from rlhf_core.rollout.generation import generate
from rlhf_core.rollout.logprobs import ResponseBatch, pad_columns, response_logprobs
from rlhf_core.rollout.sampling import SamplingParams
from rlhf_core.rollout.scoring import RewardFn, reward_function_scores, reward_model_scores
from rlhf_core.trainers.ppo.advantages import AllReduce, Experience, build_experience
from rlhf_core.trainers.ppo.config import PPOConfig
from rlhf_core.trainers.ppo.policy_value import PolicyAndValue

__all__ = [
    "Experience",
    "RolloutEngine",
    "build_experience",
    "mini_batch_indices",
    "missing_eos_penalty",
    "reference_logprobs",
    "sample_responses",
    "score_responses",
    "stop_token_ids",
]


# ---- sampling, scoring, reference: no value model needed ---------------------------------------------------


def stop_token_ids(config: Any, tokenizer: Any) -> list[int]:
    """The ids that end a response: ``stop_token_id`` if set, else eos when ``stop_token="eos"``."""
    if getattr(config, "stop_token_id", None) is not None:
        return [int(config.stop_token_id)]
    if getattr(config, "stop_token", None) == "eos":
        if tokenizer.eos_token_id is None:
            raise ValueError(
                "stop_token='eos' but the tokenizer has no eos token: set stop_token_id or stop_token=None"
            )
        return [int(tokenizer.eos_token_id)]
    return []


@torch.no_grad()
def sample_responses(
    policy: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    pad_token_id: int,
    stop_token_ids: list[int],
    sampling: SamplingParams,
    chunk_size: int,
    return_logprobs: bool = True,
    value_head: nn.Module | None = None,
    row_seeds: Sequence[int] | None = None,
) -> Experience:
    """Responses to left-padded prompts, ``chunk_size`` rows at a time; [B, R], R the batch's longest response.

    With ``return_logprobs`` the sampled tokens' log-probs are read off the sampling logits, and with a
    ``value_head`` on the policy's hidden states the values too: the rollout then needs no policy pass of its own.
    ``row_seeds`` (one per row, `episode_seeds`): each row's sample depends on its seed, not on the chunking.
    """
    parts: list[tuple[torch.Tensor | None, ...]] = []
    with eval_mode(policy, value_head):
        for start in range(0, prompt_ids.shape[0], chunk_size):
            out = generate(
                policy,
                prompt_ids[start : start + chunk_size],
                prompt_mask[start : start + chunk_size],
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_token_id,
                stop_token_ids=stop_token_ids,
                sampling=sampling,
                return_logprobs=return_logprobs,
                return_hidden_states=value_head is not None,
                row_seeds=None if row_seeds is None else row_seeds[start : start + chunk_size],
            )
            values = (
                value_head(out.hidden_states).float() * out.response_mask if value_head is not None else None
            )
            parts.append((out.response_ids, out.response_mask, out.logprobs, values))
    width = max(p[0].shape[1] for p in parts)

    def column(i: int, fill: float = 0) -> torch.Tensor | None:
        if parts[0][i] is None:
            return None
        return torch.cat([pad_columns(p[i], width, fill) for p in parts])

    batch = ResponseBatch(prompt_ids, prompt_mask.long(), column(0, pad_token_id).long(), column(1).long())
    return Experience(batch, logprobs=column(2), values=column(3))


def decode_responses(batch: ResponseBatch, tokenizer: Any) -> list[str]:
    ids = batch.response_ids.masked_fill(batch.response_mask == 0, tokenizer.pad_token_id)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


@torch.no_grad()
def score_responses(
    batch: ResponseBatch,
    *,
    tokenizer: Any,
    reward_model: nn.Module | None = None,
    reward_fn: RewardFn | None = None,
    prompts: Sequence[Any] | None = None,
    micro_batch_size: int = 8,
) -> torch.Tensor:
    """Scores [B] from ``reward_fn(prompts, responses)`` (prompts decoded when not given) or the reward model."""
    if reward_fn is not None:
        if prompts is None:
            prompts = tokenizer.batch_decode(
                batch.prompt_ids.masked_fill(batch.prompt_mask == 0, tokenizer.pad_token_id),
                skip_special_tokens=True,
            )
        responses = decode_responses(batch, tokenizer)
        return reward_function_scores(reward_fn, prompts, responses, device=batch.response_ids.device)
    if reward_model is not None:
        with eval_mode(reward_model):
            return reward_model_scores(reward_model, batch, micro_batch_size=micro_batch_size)
    raise ValueError("no reward: pass reward_model= or reward_fn= to PPOTrainer (or scores to step())")


def missing_eos_penalty(
    batch: ResponseBatch, scores: torch.Tensor, *, stop_ids: list[int], penalty: float | None
) -> torch.Tensor:
    """``scores`` minus ``penalty`` for each response that never emitted a stop token."""
    if penalty is None or not stop_ids:
        return scores
    stops = torch.as_tensor(stop_ids, device=batch.response_ids.device)
    has_stop = (torch.isin(batch.response_ids, stops) & (batch.response_mask == 1)).any(-1)
    return scores - penalty * (~has_stop).to(scores.dtype)


@contextlib.contextmanager
def reference_model(
    ref_model: nn.Module | None,
    policy: nn.Module,
    *,
    ref_adapter: str | None = None,
    model_adapter: str | None = None,
):
    """The frozen reference in eval mode; with ``ref_model=None`` the (PEFT) policy with its adapters off, or with
    its adapter ``ref_adapter`` active (TRL 1.12's ``ref_adapter_name``; ``model_adapter`` is re-activated after)."""
    if ref_model is not None:
        with eval_mode(ref_model):
            yield ref_model
        return
    if ref_adapter is None:
        with eval_mode(policy), policy.disable_adapter():
            yield policy
        return
    with eval_mode(policy):
        policy.set_adapter(ref_adapter)
        try:
            yield policy
        finally:
            policy.set_adapter(model_adapter or "default")


@torch.no_grad()
def reference_logprobs(
    batch: ResponseBatch,
    *,
    ref_model: nn.Module | None,
    policy: nn.Module,
    temperature: float,
    micro_batch_size: int,
    ref_adapter: str | None = None,
    model_adapter: str | None = None,
) -> torch.Tensor:
    """Reference log-probs [B, R] of the response tokens (see ``reference_model``)."""
    with reference_model(ref_model, policy, ref_adapter=ref_adapter, model_adapter=model_adapter) as ref:
        return response_logprobs(ref, batch, temperature=temperature, micro_batch_size=micro_batch_size)


@torch.no_grad()
def old_logprobs_and_values(
    model: PolicyAndValue, exp: Experience, *, temperature: float, micro_batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy log-probs, values), each [B, R], before any update; what sampling already gave is reused.

    Known log-probs leave only the values to compute (nothing at all when those are known too).
    """
    if exp.logprobs is not None and exp.values is not None:
        return exp.logprobs, exp.values
    batch, logps, values = exp.batch, [], []
    with eval_mode(model):
        for start in range(0, len(batch), micro_batch_size):
            part, width = batch.select(slice(start, start + micro_batch_size)).trimmed()
            if exp.logprobs is not None:
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
    return (exp.logprobs if exp.logprobs is not None else torch.cat(logps)), torch.cat(values)


def _has_active_dropout(model: nn.Module) -> bool:
    """Whether a training-mode forward of ``model`` can differ from an eval-mode one: an ``nn.Dropout`` with p > 0,
    or an attention module's own dropout rate (transformers' ``attention_dropout``, applied in training only)."""
    for module in model.modules():
        rate = module.p if isinstance(module, nn.Dropout) else getattr(module, "attention_dropout", 0.0)
        if isinstance(rate, (int, float)) and rate > 0:
            return True
    return False


# ---- the PPO path, bound to a trainer's config and models --------------------------------------------------


@dataclass
class RolloutEngine:
    """Makes PPO ``Experience`` for ``PolicyAndValue`` ``model`` (a callable returning the unwrapped module)."""

    config: PPOConfig
    tokenizer: Any
    model: Callable[[], PolicyAndValue]
    ref_model: nn.Module | None
    reward_model: nn.Module | None = None
    reward_fn: RewardFn | None = None
    # The training pass's mixed precision (``accelerator.autocast``): sampling, the old log-probs and values and
    # the reference log-probs run under it too, so that with bf16 the first PPO ratio is exactly 1.
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    # A sum over processes (None: one process): advantage/reward whitening over the global batch.
    all_reduce: AllReduce | None = None
    # Leave the separate critic's old values to the first training forward where that gives the same values.
    defer_values: bool = True

    def __post_init__(self) -> None:
        self.stop_ids = stop_token_ids(self.config, self.tokenizer)
        self.pad_id = int(self.tokenizer.pad_token_id)

    def make_experience(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        prompts: Sequence[Any] | None,
        kl_coef: float,
        row_seeds: Sequence[int] | None = None,
    ) -> Experience:
        """Prompts -> sampled, scored episodes -> old/reference log-probs, values, rewards, advantages."""
        exp = self.sample(prompt_ids, prompt_mask, row_seeds)
        exp.scores = self.score(exp.batch, prompts)
        return self.add_advantages(exp, kl_coef)

    def sample(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, row_seeds: Sequence[int] | None = None
    ) -> Experience:
        """Sampled episodes (from ``row_seeds``, one per row, when given), with old log-probs and values unless
        ``recompute_rollout_logprobs``.

        Under bf16/fp16 they are always recomputed: the KV-cache decode rounds differently from a full forward
        (measured: log-probs 1e-3 apart in bf16 on the CPU), and only the training pass's own computation makes
        the first PPO ratio exactly 1.
        """
        cfg, model = self.config, self.model()
        keep = not (cfg.recompute_rollout_logprobs or cfg.bf16 or cfg.fp16)
        with self.autocast():
            return sample_responses(
                model.policy,
                prompt_ids,
                prompt_mask,
                max_new_tokens=cfg.response_length,
                pad_token_id=self.pad_id,
                stop_token_ids=self.stop_ids,
                sampling=SamplingParams(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p),
                chunk_size=cfg.local_rollout_forward_batch_size,
                return_logprobs=keep,
                value_head=model.v_head if keep else None,
                row_seeds=row_seeds,
            )

    def score(self, batch: ResponseBatch, prompts: Sequence[Any] | None = None) -> torch.Tensor:
        """Scores [B] from the reward model or ``reward_fn``, minus ``missing_eos_penalty`` where it applies."""
        scores = score_responses(
            batch,
            tokenizer=self.tokenizer,
            reward_model=self.reward_model,
            reward_fn=self.reward_fn,
            prompts=prompts,
            micro_batch_size=self.config.local_rollout_forward_batch_size,
        )
        return self.apply_missing_eos_penalty(batch, scores)

    def apply_missing_eos_penalty(self, batch: ResponseBatch, scores: torch.Tensor) -> torch.Tensor:
        return missing_eos_penalty(
            batch, scores, stop_ids=self.stop_ids, penalty=self.config.missing_eos_penalty
        )

    def old_logprobs_and_values(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        return old_logprobs_and_values(
            self.model(),
            exp,
            temperature=cfg.temperature,
            micro_batch_size=cfg.local_rollout_forward_batch_size,
        )

    def defers_values(self, exp: Experience) -> bool:
        """Whether the critic's rollout pass is left to the first training forward (``Experience.finish``).

        When one micro-batch holds the whole batch (``len(exp) <= min(mini_batch_size,
        per_device_train_batch_size)``), the first forward of the PPO epochs runs the separate ``value_model`` on
        every episode with the parameters that made the rollout: its values are the old values, so the no-grad
        pass that would compute them first is skipped. Only where that forward computes the same function as the
        rollout's (no dropout active in training mode) and the old log-probs are known already (fp32 sampling).
        ``defer_values=False`` turns it off.
        """
        cfg, model = self.config, self.model()
        return (
            self.defer_values
            and model.value_model is not None
            and exp.logprobs is not None
            and exp.values is None
            and len(exp) <= min(cfg.mini_batch_size, cfg.per_device_train_batch_size)
            and not _has_active_dropout(model.value_model)
        )

    def add_advantages(self, exp: Experience, kl_coef: float) -> Experience:
        """A scored ``Experience`` completed: old and reference log-probs, values, rewards, advantages, returns."""
        cfg = self.config
        with self.autocast():
            if self.defers_values(exp):
                logps, values = exp.logprobs, None
            else:
                logps, values = self.old_logprobs_and_values(exp)
            ref_logps = reference_logprobs(
                exp.batch,
                ref_model=self.ref_model,
                policy=self.model().policy,
                temperature=cfg.temperature,
                micro_batch_size=cfg.local_rollout_forward_batch_size,
                ref_adapter=getattr(cfg, "ref_adapter_name", None),
                model_adapter=getattr(cfg, "model_adapter_name", None),
            )
        return build_experience(
            exp.batch,
            logprobs=logps,
            ref_logprobs=ref_logps,
            values=values,
            scores=exp.scores,
            kl_coef=kl_coef,
            kl_estimator=cfg.kl_estimator,
            gamma=cfg.gamma,
            lam=cfg.lam,
            whiten_rewards=cfg.whiten_rewards,
            whiten_advantages=cfg.whiten_advantages,
            all_reduce=self.all_reduce,
        )


def mini_batch_indices(
    n: int, mini_batch_size: int, micro_batch_size: int, generator: torch.Generator | None = None
) -> Iterator[list[torch.Tensor]]:
    """One shuffled epoch: yields each mini-batch as its list of micro-batch row indices.

    A last mini-batch shorter than ``mini_batch_size`` (``step`` given fewer episodes) is still used.
    """
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, mini_batch_size):
        rows = order[start : start + mini_batch_size]
        yield [rows[i : i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]
