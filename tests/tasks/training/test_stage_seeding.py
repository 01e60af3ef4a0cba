"""A stage's result depends on its seed alone: weights its trainer creates (the reward model's score head on a
causal-LM backbone) do not depend on what the process's random generator did before."""

from __future__ import annotations

import torch
from scale_out_helpers import max_weight_difference, stage_spec

from tasks.training.run import run_stage_training


def test_reward_stage_is_reproducible_whatever_the_generator_did_before(stage_data, mlflow_store, tmp_path):
    finals = []
    for ambient in (1, 2):
        torch.manual_seed(ambient)
        spec = stage_spec("reward", stage_data["reward"], tmp_path / f"run-{ambient}", 4, max_steps=1)
        finals.append(run_stage_training(spec).final_dir)
    assert max_weight_difference(*finals) == 0.0
