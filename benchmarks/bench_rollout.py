"""Rollout throughput: sampled tokens per second at batch 1, 8 and 32.

Model: the ~11M-parameter Llama of ``benchmarks/models.py`` (vocabulary 30,522), fp32, CPU. Each batch size samples
``--new-tokens`` tokens per row (no stop token, so every row generates the same count) from HH-RLHF prompts cut to
their last ``--max-prompt-length`` tokens (``--prompts synthetic``: the bundled task's short chat prompts), left
padded. Printed side by side:

* ``generate (ours)``: rlhf_core.rollout.generate, the KV-cache loop PPO uses (with log-probs, as in PPO);
* ``HF generate``: ``model.generate(do_sample=True)`` with the same prompts and length;
* ``rollout (ours)``: what a PPO update spends before optimising: sampling, then reference log-probs
  through the fused kernel, the values and a reward-model score (policy, reference, value and reward all
  the same architecture, as in bench_ppo.py).

Wall tokens/s and CPU tokens/s (tokens per second of process CPU time; steadier on a shared machine) are
medians over ``--repeats`` runs after one warm-up. Printed, never asserted.

    python benchmarks/bench_rollout.py
    python benchmarks/bench_rollout.py --batch-sizes 1,8 --new-tokens 32 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _prompt_batch(tokenizer, batch_size: int, source: str, max_prompt_length: int):
    from bench_ppo import _prompts

    from rlhf_core.data.collators import PromptCollator

    rows = _prompts(tokenizer, batch_size, source, max_prompt_length)
    return PromptCollator(tokenizer.pad_token_id)([{"input_ids": r} for r in rows["input_ids"]])


def _models(threads: int):
    """(tokenizer, policy, reference, reward model, policy + separate critic) of the shared benchmark Llama."""
    import torch
    import transformers
    from models import bench_model_path
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_core.trainers.ppo.policy_value import PolicyAndValue

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()  # the "score.weight newly initialised" load report is expected
    folder = bench_model_path()
    policy = AutoModelForCausalLM.from_pretrained(folder).eval()
    ref = AutoModelForCausalLM.from_pretrained(folder).eval()
    reward = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    critic = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    return (
        AutoTokenizer.from_pretrained(folder),
        policy,
        ref,
        reward,
        PolicyAndValue(policy, value_model=critic).eval(),
    )


def _workloads(models, ids, mask, n_new: int):
    """The three timed callables of one batch: our sampler, HF generate, our whole rollout."""
    import torch

    from rlhf_core.rollout.generation import generate
    from rlhf_core.rollout.logprobs import ResponseBatch, response_logprobs
    from rlhf_core.rollout.sampling import SamplingParams
    from rlhf_core.rollout.scoring import reward_model_scores

    tok, policy, ref, reward, value = models

    def ours():
        return generate(policy, ids, mask, max_new_tokens=n_new, pad_token_id=tok.pad_token_id,
                        sampling=SamplingParams(temperature=1.0), return_logprobs=True)  # fmt: skip

    @torch.no_grad()
    def hf():
        return policy.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new,
                               do_sample=True, top_k=0, temperature=1.0, pad_token_id=tok.pad_token_id)  # fmt: skip

    @torch.no_grad()
    def rollout():
        out = ours()
        batch = ResponseBatch(out.prompt_ids, out.prompt_mask, out.response_ids, out.response_mask)
        response_logprobs(ref, batch, temperature=1.0, micro_batch_size=64)
        value.values(batch)
        reward_model_scores(reward, batch, micro_batch_size=64)

    return ours, hf, rollout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", choices=("hh", "synthetic"), default="hh")
    parser.add_argument("--max-prompt-length", type=int, default=128)
    args = parser.parse_args(argv)
    models = _models(args.threads)
    n_new = args.new_tokens
    print(f"rollout throughput: ~11M Llama (V=30522), fp32, CPU, {args.threads} thread(s), {args.prompts} prompts "
          f"(<= {args.max_prompt_length} tokens), {n_new} new tokens per row")  # fmt: skip
    print(
        f"{'batch':>5}  {'generate (ours)':>22}  {'HF generate':>22}  {'speed-up':>8}  {'rollout (ours)':>22}"
    )
    print(
        f"{'':>5}  {'tok/s wall | CPU':>22}  {'tok/s wall | CPU':>22}  {'(CPU)':>8}  {'tok/s wall | CPU':>22}"
    )
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        prompts = _prompt_batch(models[0], batch_size, args.prompts, args.max_prompt_length)
        workloads = _workloads(models, prompts["input_ids"], prompts["attention_mask"], n_new)
        tokens = batch_size * n_new
        rows = [_timed(fn, args.repeats) for fn in workloads]
        cells = [f"{tokens / w:>10.0f} | {tokens / c:<9.0f}" for w, c in rows]
        ratio = rows[1][1] / rows[0][1]  # CPU seconds HF / ours = our speed-up
        print(f"{batch_size:>5}  {cells[0]:>22}  {cells[1]:>22}  {ratio:>7.2f}x  {cells[2]:>22}")


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
    main()
