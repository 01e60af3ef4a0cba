"""KTO under 2 CPU processes (gloo, `accelerate launch`): both ranks end with identical weights, equal to one process
training on the same global batches. The KL reference point is averaged over both ranks' mismatched pairs (a per-rank
estimate would give other weights: the policy starts away from the reference, so z0 > 0).

Run as a script, this file is the worker that each rank executes.
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


def _dataset():
    from rlhf_core.data.synthetic import SyntheticTask
    from rlhf_core.models.loading import load_tokenizer
    from rlhf_core.trainers.preference.kto_data import prepare_kto_dataset

    tokenizer = load_tokenizer("rlhf-tiny")
    pairs = SyntheticTask(0).preference_dataset(8)
    # Mismatched completions fixed in the data (blocks of the global batch), so both layouts score the same pairs.
    return prepare_kto_dataset(pairs, tokenizer, max_length=64, kl_block=GLOBAL_BATCH), tokenizer


def train(per_device_batch: int, output_dir: str) -> tuple[list[torch.Tensor], list[float]]:
    from rlhf_core.models.loading import load_causal_lm
    from rlhf_core.trainers.preference.kto import KTOTrainer
    from rlhf_core.trainers.preference.kto_config import KTOConfig

    torch.set_num_threads(1)
    dataset, tokenizer = _dataset()
    model, reference = load_causal_lm("rlhf-tiny"), load_causal_lm("rlhf-tiny")
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():  # policy != reference, so that z0 > 0 from the first step
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=noise))
    args = KTOConfig(output_dir=output_dir, per_device_train_batch_size=per_device_batch, max_steps=STEPS,
                     optim="sgd", learning_rate=3.0, lr_scheduler_type="constant", beta=0.5, logging_steps=1,
                     save_strategy="no", report_to="none", disable_tqdm=True, seed=0)  # fmt: skip
    trainer = KTOTrainer(
        model=model, ref_model=reference, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    kls = [log["kl"] for log in trainer.state.log_history if "kl" in log]
    return [p.detach().clone() for p in model.parameters()], kls


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_each_other_and_one_process(tmp_path):
    repo = str(Path(__file__).resolve().parents[4])
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(_free_port()), "--multi_gpu", "--mixed_precision", "no",
           "--dynamo_backend", "no", __file__, str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["params"], ranks[1]["params"]))
    single, kls = train(GLOBAL_BATCH, str(tmp_path / "single"))
    assert kls[0] > 0.01 and kls[1] > 0.01  # the reference point is in play
    assert ranks[0]["kl"] == pytest.approx(kls, rel=1e-4, abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(single, ranks[0]["params"]))


if __name__ == "__main__":
    params, kl = train(GLOBAL_BATCH // 2, os.path.join(sys.argv[1], "out"))
    rank = int(os.environ.get("RANK", "0"))
    torch.save({"params": params, "kl": kl}, os.path.join(sys.argv[1], f"rank{rank}.pt"))
