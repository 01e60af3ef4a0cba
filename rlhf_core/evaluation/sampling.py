"""Sample responses from a policy checkpoint and score them: judge, reward model, KL to a reference.

Used for the per-stage sample tables and for the evaluation stage. Generation goes through
`rlhf_core.rollout` (batched, KV cache, left-padded prompts); log-probs and reward scores through the same
rollout helpers the PPO trainer uses, so an evaluation number means what the training number means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf_core.data.collators import PromptCollator, pad_sequences
from rlhf_core.data.tokenization import encode_prompt, special_tokens, tokenize_prompts
from rlhf_core.models.loading import load_causal_lm, load_sequence_classifier, load_tokenizer
from rlhf_core.rollout.generation import generate
from rlhf_core.rollout.logprobs import ResponseBatch, response_logprobs
from rlhf_core.rollout.sampling import SamplingParams
from rlhf_core.rollout.scoring import reward_model_scores

__all__ = ["ModelCache", "Samples", "judge_scores", "kl_to_reference", "reward_scores", "sample_responses"]


class ModelCache:
    """Models and tokenizers loaded once per evaluation (each policy is sampled, scored and compared)."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], Any] = {}

    def _get(self, kind: str, path: str, load: Any) -> Any:
        key = (kind, path)
        if key not in self._items:
            self._items[key] = load(path)
        return self._items[key]

    def tokenizer(self, path: str) -> Any:
        return self._get("tokenizer", path, load_tokenizer)

    def causal_lm(self, path: str) -> Any:
        return self._get("causal_lm", path, lambda p: load_causal_lm(p).eval())

    def reward_model(self, path: str) -> Any:
        return self._get("reward_model", path, lambda p: load_sequence_classifier(p).eval())


def _quiet_progress_bars() -> None:
    """Loading many small checkpoints would otherwise print a progress bar each."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


@dataclass
class Samples:
    """Prompts (as given: strings or message lists), decoded responses and the token batch they came from."""

    prompts: list[Any]
    responses: list[str]
    batch: ResponseBatch
    tokenizer_path: str


def sample_responses(
    model_path: str,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    batch_size: int = 32,
    seed: int = 0,
    models: ModelCache | None = None,
) -> Samples:
    """Generate one response per prompt from the causal LM at ``model_path`` (temperature 0 = greedy)."""
    _quiet_progress_bars()
    models = models or ModelCache()
    tokenizer = models.tokenizer(model_path)
    model = models.causal_lm(model_path)
    rows = tokenize_prompts([{"prompt": p} for p in prompts], tokenizer)
    collate = PromptCollator(tokenizer.pad_token_id)
    stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    sampling = SamplingParams(temperature=temperature or 1.0, top_k=top_k or None, do_sample=temperature > 0)
    generator = torch.Generator().manual_seed(seed)
    parts: list[ResponseBatch] = []
    texts: list[str] = []
    for start in range(0, len(rows), batch_size):
        batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        out = generate(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            stop_token_ids=stop_ids,
            sampling=sampling,
            generator=generator,
        )
        parts.append(ResponseBatch(out.prompt_ids, out.prompt_mask, out.response_ids, out.response_mask))
        for ids, mask in zip(out.response_ids, out.response_mask):
            texts.append(tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True).strip())
    return Samples(list(prompts), texts, _concat(parts, tokenizer.pad_token_id), model_path)


def _concat(parts: list[ResponseBatch], pad_id: int) -> ResponseBatch:
    """Join batches of different widths: prompts stay left padded, responses right padded."""

    def rows(tensors: list[torch.Tensor]) -> list[list[int]]:
        return [r.tolist() for t in tensors for r in t]

    prompt_ids = [
        [t for t, m in zip(ids, mask) if m]
        for ids, mask in zip(rows([p.prompt_ids for p in parts]), rows([p.prompt_mask for p in parts]))
    ]
    response_ids = [
        [t for t, m in zip(ids, mask) if m]
        for ids, mask in zip(rows([p.response_ids for p in parts]), rows([p.response_mask for p in parts]))
    ]
    return _batch(prompt_ids, response_ids, pad_id)


def _batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> ResponseBatch:
    def ones(seqs: list[list[int]]) -> list[list[int]]:
        return [[1] * len(s) for s in seqs]

    return ResponseBatch(
        prompt_ids=pad_sequences(prompt_ids, pad_id, side="left"),
        prompt_mask=pad_sequences(ones(prompt_ids), 0, side="left"),
        response_ids=pad_sequences([r or [pad_id] for r in response_ids], pad_id, side="right"),
        response_mask=pad_sequences([[1] * len(r) if r else [0] for r in response_ids], 0, side="right"),
    )


def judge_scores(prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
    """The bundled synthetic task's ground-truth judge, one score in [0, 1] per response."""
    from rlhf_core.data.synthetic import judge_responses

    return list(judge_responses(list(prompts), list(responses)))


def reward_scores(
    reward_model_path: str, samples: Samples, *, batch_size: int = 32, models: ModelCache | None = None
) -> list[float]:
    """The reward model's score of each prompt + response (re-tokenised when its tokenizer differs)."""
    models = models or ModelCache()
    model = models.reward_model(reward_model_path)
    batch = samples.batch
    rm_tokenizer = models.tokenizer(reward_model_path)
    if rm_tokenizer.get_vocab() != models.tokenizer(samples.tokenizer_path).get_vocab():
        batch = _retokenise(rm_tokenizer, samples)
    return reward_model_scores(model, batch, micro_batch_size=batch_size).tolist()


def _retokenise(tokenizer: Any, samples: Samples) -> ResponseBatch:
    sp = special_tokens(tokenizer)
    prompts = [encode_prompt(tokenizer, p, sp) for p in samples.prompts]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    responses = [tokenizer(r, add_special_tokens=False)["input_ids"] + eos for r in samples.responses]
    return _batch(prompts, responses, tokenizer.pad_token_id)


def kl_to_reference(
    policy_path: str,
    reference_path: str,
    samples: Samples,
    *,
    temperature: float = 1.0,
    batch_size: int = 32,
    models: ModelCache | None = None,
) -> list[float]:
    """Per-response KL estimate sum_t [log pi(y_t) - log ref(y_t)] on the policy's own samples (k1 estimator).

    Unbiased for KL(pi || ref) when the samples were drawn from pi at temperature 1; at other temperatures both
    distributions are tempered the same way.
    """
    temperature = temperature or 1.0
    models = models or ModelCache()
    policy, reference = models.causal_lm(policy_path), models.causal_lm(reference_path)
    logp = response_logprobs(policy, samples.batch, temperature=temperature, micro_batch_size=batch_size)
    ref = response_logprobs(reference, samples.batch, temperature=temperature, micro_batch_size=batch_size)
    return ((logp - ref) * samples.batch.response_mask).sum(-1).tolist()
