"""SFT, Reward, DPO, KTO and PPO (full loop and classic step() with unequal lengths per rank) under 2 CPU processes (gloo, `accelerate launch`): both ranks end with identical
weights, equal (within 1e-5) to one process training on the same global batches, after a few SGD steps.

One launch trains all of them in each rank (one process start-up instead of one per trainer); each trainer has its own test.
Run as a script (``python this_file TRAINER... OUT``), this file is the worker every rank executes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

STEPS = 3
GLOBAL_BATCH = 4
SGD = {"optim": "sgd", "lr_scheduler_type": "constant", "max_steps": STEPS, "logging_steps": 1,
       "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 0}  # fmt: skip


def _pairs(n: int):
    from datasets import Dataset

    from rlhf_core.data.synthetic import SyntheticTask

    rows = SyntheticTask(0).preference_dataset(n)
    return Dataset.from_dict(
        {k: [r[0]["content"] for r in rows[k]] for k in ("prompt", "chosen", "rejected")}
    )


def train_sft(per_device: int, out: str) -> list[torch.Tensor]:
    from rlhf_core import SFTConfig, SFTTrainer
    from rlhf_core.models.families import family_model_path
    from rlhf_core.models.loading import load_causal_lm, load_tokenizer

    path = family_model_path("llama")
    data = _pairs(STEPS * GLOBAL_BATCH).rename_column("chosen", "completion").remove_columns("rejected")
    args = SFTConfig(
        output_dir=out, per_device_train_batch_size=per_device, learning_rate=1.0, max_length=64, **SGD
    )
    trainer = SFTTrainer(
        model=load_causal_lm(path), args=args, train_dataset=data, processing_class=load_tokenizer(path)
    )
    trainer.train()
    return [p.detach().clone() for p in trainer.model.parameters()]


def train_reward(per_device: int, out: str) -> list[torch.Tensor]:
    from rlhf_core import RewardConfig, RewardTrainer
    from rlhf_core.models.families import family_model_path
    from rlhf_core.models.loading import load_sequence_classifier, load_tokenizer

    path = family_model_path("gpt2")  # pad == eos: the pooling position matters
    torch.manual_seed(0)
    model = load_sequence_classifier(path, num_labels=1)
    args = RewardConfig(
        output_dir=out, per_device_train_batch_size=per_device, learning_rate=1.0, max_length=64, **SGD
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=_pairs(STEPS * GLOBAL_BATCH),
                            processing_class=load_tokenizer(path))  # fmt: skip
    trainer.train()
    return [p.detach().clone() for p in trainer.model.parameters()]


def train_dpo(per_device: int, out: str) -> list[torch.Tensor]:
    from rlhf_core import DPOConfig, DPOTrainer
    from rlhf_core.models.families import family_model_path
    from rlhf_core.models.loading import load_causal_lm, load_tokenizer

    path = family_model_path("llama")
    args = DPOConfig(
        output_dir=out, per_device_train_batch_size=per_device, learning_rate=1.0, max_length=64, **SGD
    )
    trainer = DPOTrainer(model=load_causal_lm(path), args=args, train_dataset=_pairs(STEPS * GLOBAL_BATCH),
                         processing_class=load_tokenizer(path))  # fmt: skip
    trainer.train()
    return [p.detach().clone() for p in trainer.model.parameters()]


def train_ppo(per_device: int, out: str) -> list[torch.Tensor]:
    from rlhf_core import PPOConfig, PPOTrainer
    from rlhf_core.models.families import family_model_path
    from rlhf_core.models.loading import load_causal_lm, load_tokenizer

    path = family_model_path("llama")
    # Sampled responses (temperature 0.7): each episode draws from its own seed, so both layouts sample the same.
    args = PPOConfig(output_dir=out, batch_size=per_device, mini_batch_size=per_device, per_device_train_batch_size=per_device,
                     num_ppo_epochs=2, response_length=6, learning_rate=0.3,
                     **{**SGD, "lr_scheduler_type": "constant_with_warmup"})  # fmt: skip
    trainer = PPOTrainer(args=args, model=load_causal_lm(path), train_dataset=_pairs(STEPS * GLOBAL_BATCH).select_columns(["prompt"]),
                         reward_fn=lambda p, r: [float(sum(map(ord, x)) % 7) for x in r],
                         processing_class=load_tokenizer(path))  # fmt: skip
    trainer.train()
    return [p.detach().clone() for p in trainer.accelerator.unwrap_model(trainer.model).parameters()]


def train_ppo_step(per_device: int, out: str) -> list[torch.Tensor]:
    """Classic ``step()`` on given episodes of unequal lengths: each rank a slice of the same global batch."""
    from rlhf_core import PPOConfig, PPOTrainer
    from rlhf_core.models.families import family_model_path
    from rlhf_core.models.loading import load_causal_lm, load_tokenizer

    path = family_model_path("llama")
    args = PPOConfig(output_dir=out, batch_size=per_device, mini_batch_size=per_device, ppo_epochs=2,
                     learning_rate=0.3, **{**SGD, "lr_scheduler_type": "constant_with_warmup"})  # fmt: skip
    trainer = PPOTrainer(args, load_causal_lm(path), None, load_tokenizer(path))
    rank = int(os.environ.get("RANK", "0")) if per_device < GLOBAL_BATCH else 0
    rows = slice(rank * per_device, (rank + 1) * per_device)
    queries = [torch.arange(10, 10 + n) for n in (5, 3, 6, 4)][rows]
    responses = [torch.arange(60, 60 + n) for n in (2, 3, 8, 7)][rows]  # rank 0: 5 tokens, rank 1: 15
    for step in range(STEPS):
        trainer.step(queries, responses, [float(step + i) for i in range(GLOBAL_BATCH)][rows])
    return [p.detach().clone() for p in trainer.accelerator.unwrap_model(trainer.model).parameters()]


def train_kto(per_device: int, out: str) -> list[torch.Tensor]:
    """KTO's reference point z0 is averaged over both ranks' mismatched pairs (a per-rank z0 changes the weights)."""
    from rlhf_core import KTOConfig, KTOTrainer
    from rlhf_core.models.families import family_model_path
    from rlhf_core.models.loading import load_causal_lm, load_tokenizer
    from rlhf_core.trainers.preference.kto_data import prepare_kto_dataset

    path = family_model_path("llama")
    tokenizer = load_tokenizer(path)
    # mismatched completions fixed in the data (blocks of the global batch), so both layouts score the same pairs
    data = prepare_kto_dataset(
        _pairs(STEPS * GLOBAL_BATCH // 2), tokenizer, max_length=64, kl_block=GLOBAL_BATCH
    )
    model, reference = load_causal_lm(path), load_causal_lm(path)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():  # reference != policy, so that z0 > 0 from the first step
        for p in reference.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=noise))
    args = KTOConfig(
        output_dir=out,
        per_device_train_batch_size=per_device,
        learning_rate=1.0,
        beta=0.5,
        max_length=64,
        **SGD,
    )
    trainer = KTOTrainer(
        model=model, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer
    )
    trainer.train()
    kls = [log["kl"] for log in trainer.state.log_history if "kl" in log]
    assert kls[0] > 0.01, kls  # the reference point is in play
    return [p.detach().clone() for p in trainer.model.parameters()]


TRAINERS = {"sft": train_sft, "reward": train_reward, "dpo": train_dpo, "kto": train_kto, "ppo": train_ppo,
            "ppo_step": train_ppo_step}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_ranks(script: str, out: Path, *script_args: str) -> None:
    """``accelerate launch`` ``script`` as 2 CPU processes (gloo); fails the test with the tail of its output."""
    repo = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(_free_port()), "--multi_gpu", "--mixed_precision", "no",
           "--dynamo_backend", "no", script, *script_args, str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two-ranks")
    launch_two_ranks(__file__, out, *TRAINERS)
    return {name: [torch.load(out / f"{name}-rank{r}.pt") for r in (0, 1)] for name in TRAINERS}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_two_processes_match_each_other_and_one_process(name, two_ranks, tmp_path):
    rank0, rank1 = two_ranks[name]
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank1)), f"{name}: the ranks diverged"
    torch.manual_seed(0)
    single = TRAINERS[name](GLOBAL_BATCH, str(tmp_path / "single"))
    moved = max(float((a - b).abs().max()) for a, b in zip(single, rank0))
    assert moved <= 1e-5, f"{name}: 2 processes differ from 1 by {moved:.2e}"


if __name__ == "__main__":
    torch.set_num_threads(1)
    *names, folder = sys.argv[1:]
    rank = int(os.environ.get("RANK", "0"))
    for trainer_name in names:
        torch.manual_seed(0)
        params = TRAINERS[trainer_name](GLOBAL_BATCH // 2, os.path.join(folder, trainer_name))
        torch.save(params, os.path.join(folder, f"{trainer_name}-rank{rank}.pt"))
