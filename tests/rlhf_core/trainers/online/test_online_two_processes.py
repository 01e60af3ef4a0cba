"""GRPO and RLOO under `accelerate launch` with 2 CPU processes (gloo): the ranks stay identical, and equal one
process that holds the whole generation.

Each rank answers different prompts (and, with num_generations=8 over 2 x 4 completions, half of each group), so
their local gradients differ: only the DDP all-reduce keeps the weights equal, and only the reward gather makes
every group's advantages whole. Each completion samples from its own seed (its place in the generation), so one
process with per_device_train_batch_size 8 samples the same completions as 2 processes with 4 each.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from rlhf_core import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer, SyntheticTask

    out, per_device, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    def reward_len(completions, **_):
        return [-abs(30 - len(c[0]["content"])) / 30 for c in completions]
    common = dict(per_device_train_batch_size=per_device, temperature=1.0, max_completion_length=8, max_steps=2, logging_steps=1,
                  learning_rate=1e-1, optim="sgd", gradient_checkpointing=False, save_strategy="no", disable_tqdm=True, seed=0)
    for name, trainer_cls, config in (("grpo", GRPOTrainer, GRPOConfig(output_dir=out + "/g", num_generations=8,
                                                                       beta=0.04, **common)),
                                      ("rloo", RLOOTrainer, RLOOConfig(output_dir=out + "/r", num_generations=4,
                                                                       **common))):
        trainer = trainer_cls(model="rlhf-tiny", reward_funcs=reward_len, args=config,
                              train_dataset=SyntheticTask(0).prompt_dataset(8, "train"))
        start = [p.detach().clone() for p in trainer.model.parameters()]
        trainer.train()
        params = [p.detach().clone() for p in trainer.model.parameters()]
        rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
        rank = trainer.accelerator.process_index
        torch.save({"start": start, "params": params, "rewards": rewards}, f"{out}/{name}-{tag}{rank}.pt")
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_keep_identical_weights(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(_free_port()), "--multi_gpu", "--mixed_precision", "no",
           "--dynamo_backend", "no", str(script), str(tmp_path), "4", "rank"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    single = [sys.executable, str(script), str(tmp_path), "8", "single"]
    done = subprocess.run(single, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for name in ("grpo", "rloo"):
        rank0, rank1 = (torch.load(tmp_path / f"{name}-rank{r}.pt") for r in (0, 1))
        assert (
            rank0["rewards"] == rank1["rewards"] and len(rank0["rewards"]) == 2
        )  # gathered: the same on both
        moved = any(not torch.equal(a, b) for a, b in zip(rank0["start"], rank0["params"]))
        assert moved, name  # the update did something ...
        for a, b in zip(rank0["params"], rank1["params"]):
            assert torch.equal(a, b), name  # ... and the same thing on both ranks
        one = torch.load(tmp_path / f"{name}-single0.pt")
        # The same completions, hence the same rewards and, up to the all-reduce's float summation order, the same
        # update (SGD: Adam's first steps, ~lr * sign(g), would blow that float noise up on near-zero gradients).
        # Measured: 3.7e-9 (GRPO), 7.5e-9 (RLOO) against weights moved by ~1e-2; 3.0e-3 when each process
        # sampled from its own generator.
        assert one["rewards"] == rank0["rewards"], name
        gap = max((a - b).abs().max().item() for a, b in zip(one["params"], rank0["params"]))
        assert gap < 1e-6, (name, gap)
