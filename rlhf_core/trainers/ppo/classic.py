"""The classic TRL PPO API (``generate`` / ``step`` / ``save_pretrained``), kept working on the new trainer.

``step(queries, responses, scores)`` runs one PPO update on exactly the episodes it is given. Fewer than
``batch_size`` episodes (one at a time, as in the README example) is allowed: the update runs on what it got,
split into mini-batches of ``mini_batch_size`` (a short batch simply makes fewer, smaller optimizer steps). There
is no hidden buffer, so the returned statistics always describe an update that happened.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlhf_core.models.module_state import eval_mode
from rlhf_core.rollout.generation import generate as sample_responses
from rlhf_core.rollout.generation import truncate_after_stop
from rlhf_core.rollout.logprobs import ResponseBatch
from rlhf_core.rollout.sampling import SamplingParams
from rlhf_core.trainers.ppo.experience import Experience

logger = logging.getLogger(__name__)

__all__ = ["ClassicPPOMixin"]

_SAMPLER_KWARGS = {"max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_new_tokens", "min_length",
                   "pad_token_id", "eos_token_id", "use_cache", "attention_mask"}  # fmt: skip


def _pad(rows: Sequence[torch.Tensor], value: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    return ids, mask


class ClassicPPOMixin:
    """``generate``, ``step``, ``save_pretrained``, ``log_stats`` and ``dataloader`` of TRL's old PPOTrainer."""

    # ---- generate --------------------------------------------------------------------------------------

    def generate(
        self,
        query_tensor: torch.Tensor | Sequence[torch.Tensor],
        length_sampler: Callable[[], int] | None = None,
        batch_size: int = 4,
        return_prompt: bool = True,
        generate_ref_response: bool = False,
        remove_padding: bool = True,
        **generation_kwargs: Any,
    ) -> Any:
        """Sample responses with the policy (KV cache, stop at eos).

        query_tensor: a 1-D tensor (-> a [1, T + R] tensor), a 2-D tensor of unpadded equal-length rows
        (-> [B, T + R], right padded), or a list of 1-D tensors (-> a list of 1-D tensors, padding removed,
        generated ``batch_size`` at a time). Sampling uses PPOConfig's temperature/top_k/top_p unless
        overridden, so ``step`` scores the tokens under the distribution they were drawn from. Keyword
        arguments outside plain sampling (e.g. ``num_beams``) are handed to the model's own ``generate``.
        """
        if length_sampler is not None:
            generation_kwargs["max_new_tokens"] = int(length_sampler())
        as_list = isinstance(query_tensor, (list, tuple))
        queries = list(query_tensor) if as_list else _rows(query_tensor)
        responses: list[torch.Tensor] = []
        ref_responses: list[torch.Tensor] = []
        step = batch_size if as_list else len(queries)
        for start in range(0, len(queries), step):
            chunk = queries[start : start + step]
            responses += self._generate_rows(chunk, generation_kwargs, reference=False)
            if generate_ref_response:
                ref_responses += self._generate_rows(chunk, generation_kwargs, reference=True)
        outputs = [
            self._finish_output(q, r, return_prompt, remove_padding) for q, r in zip(queries, responses)
        ]
        ref_outputs = [
            self._finish_output(q, r, return_prompt, remove_padding) for q, r in zip(queries, ref_responses)
        ]
        if not as_list:
            outputs = _pad(outputs, self.processing_class.pad_token_id, left=False)[0]
            ref_outputs = (
                _pad(ref_outputs, self.processing_class.pad_token_id, left=False)[0] if ref_outputs else []
            )
        return (outputs, ref_outputs) if generate_ref_response else outputs

    def _finish_output(
        self, query: torch.Tensor, response: torch.Tensor, return_prompt: bool, remove_padding: bool
    ):
        if remove_padding:
            response = response[: self._response_length(response)]
        return torch.cat([query.to(response.device), response]) if return_prompt else response

    def _response_length(self, response: torch.Tensor) -> int:
        """Tokens up to and including the first stop token; trailing padding excluded."""
        stop_ids = self.rollout.stop_ids
        _, mask = truncate_after_stop(response[None], stop_ids, self.processing_class.pad_token_id)
        length = int(mask.sum())
        pad = self.processing_class.pad_token_id
        while length > 0 and int(response[length - 1]) == pad and pad not in stop_ids:
            length -= 1
        return length

    @torch.no_grad()
    def _generate_rows(
        self, rows: list[torch.Tensor], kwargs: dict[str, Any], *, reference: bool
    ) -> list[torch.Tensor]:
        model = self.rollout.ref_model if reference else self.accelerator.unwrap_model(self.model).policy
        if model is None:
            raise ValueError("generate_ref_response=True needs a reference model (ref_model)")
        device = self.accelerator.device
        ids, mask = _pad(rows, self.processing_class.pad_token_id, left=True)
        ids, mask = ids.to(device), mask.to(device)
        unknown = set(kwargs) - _SAMPLER_KWARGS
        if unknown:
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            return list(out[:, ids.shape[1] :])
        with eval_mode(model):
            out = sample_responses(
                model,
                ids,
                mask,
                max_new_tokens=int(kwargs.get("max_new_tokens", self.args.response_length)),
                pad_token_id=int(kwargs.get("pad_token_id", self.processing_class.pad_token_id)),
                stop_token_ids=_stop_ids(kwargs.get("eos_token_id"), self.rollout.stop_ids),
                sampling=self._sampling_params(kwargs),
                min_new_tokens=int(kwargs.get("min_new_tokens", 0) or 0),
            )
        return list(out.response_ids)

    def _sampling_params(self, kwargs: dict[str, Any]) -> SamplingParams:
        temperature = float(kwargs.get("temperature", self.args.temperature))
        if not math.isclose(temperature, self.args.temperature):
            logger.warning(
                "generate(temperature=%s) differs from PPOConfig.temperature=%s, which step() uses to score the "
                "tokens: the PPO ratio will be off. Set the temperature in PPOConfig instead.",
                temperature,
                self.args.temperature,
            )
        top_k = kwargs.get("top_k", self.args.top_k)
        return SamplingParams(
            temperature=temperature,
            top_k=int(top_k) if top_k else None,
            top_p=float(kwargs.get("top_p", self.args.top_p)),
            do_sample=bool(kwargs.get("do_sample", True)),
        )

    # ---- step ------------------------------------------------------------------------------------------

    def step(
        self,
        queries: Sequence[str | torch.Tensor | Sequence[int]],
        responses: Sequence[str | torch.Tensor | Sequence[int]],
        scores: Sequence[float | torch.Tensor],
        response_masks: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """One PPO update on these episodes (any number >= 1; see the module docstring). Returns its statistics."""
        if not (len(queries) == len(responses) == len(scores)) or not queries:
            raise ValueError(
                f"step() needs as many queries, responses and scores (at least one); got {len(queries)}, "
                f"{len(responses)} and {len(scores)}"
            )
        batch = self._episode_batch(queries, responses, response_masks)
        score_tensor = _score_tensor(scores).to(batch.response_ids.device)
        score_tensor = self.rollout.apply_missing_eos_penalty(batch, score_tensor)
        self._prepare(None)  # no known horizon: a constant learning rate after warm-up
        started, kl_coef = time.time(), self.kl_ctl.value
        # The given episodes join the full loop's path after sampling and scoring: the same Experience.
        exp = self.rollout.add_advantages(Experience(batch, scores=score_tensor), kl_coef)
        metrics = self._optimise(exp, kl_coef, rollout_seconds=time.time() - started)
        metrics["episode"] = float(self.state.episode)
        if _due(self.state.global_step, self.args):
            self.log(dict(metrics))
        return metrics

    def _episode_batch(self, queries, responses, response_masks) -> ResponseBatch:
        tok = self.processing_class
        query_rows = [
            _token_row(q, tok, add_special_tokens=True, what=f"queries[{i}]") for i, q in enumerate(queries)
        ]
        response_rows = [
            _token_row(r, tok, add_special_tokens=False, what=f"responses[{i}]")
            for i, r in enumerate(responses)
        ]
        prompt_ids, prompt_mask = _pad(query_rows, tok.pad_token_id, left=True)
        response_ids, response_mask = _pad(response_rows, tok.pad_token_id, left=False)
        for i, row in enumerate(response_rows):
            response_mask[i, self._response_length(row) :] = 0
        # The given masks choose the tokens to learn from; the masked-out ones (gaps) stay attended context.
        loss_mask = None
        if response_masks is not None:
            given, _ = _pad([torch.as_tensor(m).long().reshape(-1) for m in response_masks], 0, left=False)
            loss_mask = response_mask * _pad_columns_to(given, response_mask.shape[1])
        for i in range(len(response_rows)):
            if (response_mask if loss_mask is None else loss_mask)[i].sum() == 0:
                raise ValueError(f"responses[{i}] has no token to learn from (empty or only padding)")
        device = self.accelerator.device
        return ResponseBatch(
            prompt_ids.to(device),
            prompt_mask.to(device),
            response_ids.to(device),
            response_mask.to(device),
            None if loss_mask is None else loss_mask.to(device),
        )

    # ---- saving, logging, data ---------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str) -> None:
        """The policy (loadable as a plain causal LM), its value head or value model, and the tokenizer."""
        self.save_model(save_directory)

    def log_stats(self, stats: dict[str, Any], batch: Any = None, rewards: Any = None, **_: Any) -> None:
        """Send the numeric entries of ``stats`` to every logging callback (TRL's ``log_stats``)."""
        numeric = {
            k: float(v) for k, v in stats.items() if isinstance(v, (int, float)) or _is_scalar_tensor(v)
        }
        if rewards is not None:
            numeric["env/reward_mean"] = float(_score_tensor(list(rewards)).mean())
        self.log(numeric)

    @property
    def dataloader(self) -> torch.utils.data.DataLoader:
        """TRL's ``ppo_trainer.dataloader``: batches of ``batch_size`` rows as dicts of lists, shuffled."""
        if self.train_dataset is None:
            raise ValueError(
                "no dataset: pass dataset= (or train_dataset=) to PPOTrainer to get a dataloader"
            )
        return torch.utils.data.DataLoader(
            self.train_dataset.with_format("torch"),
            batch_size=self.args.batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=lambda rows: {key: [row[key] for row in rows] for key in rows[0]},
        )


def _pad_columns_to(mask: torch.Tensor, width: int) -> torch.Tensor:
    """[B, W'] -> [B, width]: a mask cut or zero-padded on the right."""
    if mask.shape[1] >= width:
        return mask[:, :width]
    return torch.nn.functional.pad(mask, (0, width - mask.shape[1]))


def _rows(query_tensor: torch.Tensor) -> list[torch.Tensor]:
    if not torch.is_tensor(query_tensor):
        raise TypeError(
            f"generate() takes a token tensor or a list of them, got {type(query_tensor).__name__}"
        )
    if query_tensor.dim() == 1:
        return [query_tensor]
    if query_tensor.dim() == 2:
        return list(query_tensor)
    raise ValueError(f"generate() takes a 1-D or 2-D token tensor, got shape {tuple(query_tensor.shape)}")


def _stop_ids(eos_token_id: Any, default: list[int]) -> list[int]:
    if eos_token_id is None:
        return default
    return [int(i) for i in eos_token_id] if isinstance(eos_token_id, (list, tuple)) else [int(eos_token_id)]


def _token_row(value: Any, tokenizer: Any, *, add_special_tokens: bool, what: str) -> torch.Tensor:
    if isinstance(value, str):
        ids = tokenizer(value, add_special_tokens=add_special_tokens)["input_ids"]
        row = torch.tensor(ids, dtype=torch.long)
    else:
        row = (
            torch.as_tensor(value).long().reshape(-1)
            if not torch.is_tensor(value)
            else value.long().reshape(-1)
        )
    if row.numel() == 0:
        raise ValueError(f"{what} is empty")
    return row.cpu()


def _is_scalar_tensor(value: Any) -> bool:
    return torch.is_tensor(value) and value.numel() == 1


def _score_tensor(scores: Sequence[Any]) -> torch.Tensor:
    values = []
    for i, score in enumerate(scores):
        if torch.is_tensor(score):
            if score.numel() != 1:
                raise ValueError(
                    f"scores[{i}] must be a number or a one-element tensor, got shape {tuple(score.shape)}"
                )
            score = score.item()
        value = float(score)
        if not math.isfinite(value):
            raise ValueError(f"scores[{i}] is not finite ({value})")
        values.append(value)
    return torch.tensor(values, dtype=torch.float32)


def _due(step: int, args: Any) -> bool:
    every = args.logging_steps if args.logging_steps and args.logging_steps >= 1 else 1
    return (step == 1 and args.logging_first_step) or step % int(every) == 0
