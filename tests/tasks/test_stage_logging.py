"""What a training stage tells the Prefect logs when it starts: what it starts from, its data, length and scorer."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from tasks.results import PreparedDataset
from tasks.stage_logging import log_stage_start
from tasks.stage_specs import StageJob, StagePlan, StageSpec


def _start_line(caplog, reward: str, reward_model: str | None) -> str:
    args = {"max_steps": 3, "per_device_train_batch_size": 4}
    spec = StageSpec(stage="grpo", model="/m/sft", train_data="/d/grpo", stage_dir="/out/grpo", args=args,
                     reward=reward, reward_model=reward_model)  # fmt: skip
    plan = StagePlan(stage="grpo", digest="d", spec=spec, input_policy="/m/sft", data_roles=["grpo"],
                     retries=0, timeout_s=None)  # fmt: skip
    data = PreparedDataset(
        role="grpo", path="/d/grpo", digest="x", num_rows=90, description="synthetic(n=90)"
    )
    job = StageJob(plan=plan, parent_run_id="p", output_dir="/out", eval_prompts="/d/eval",
                   evaluation={}, scale_out={}, datasets=[data])  # fmt: skip
    logger = logging.getLogger("test_stage_logging")
    with caplog.at_level(logging.INFO, logger=logger.name):
        log_stage_start(logger, job, SimpleNamespace(**args, learning_rate=3e-4), "http://mlflow/run")
    return caplog.records[-1].getMessage()


def test_the_start_line_names_what_scores_the_rollouts(caplog):
    line = _start_line(caplog, "my_rewards:short", None)
    assert line.startswith("grpo: starts from /m/sft on 90 grpo rows from synthetic(n=90), 3 steps (batch 4 ")
    assert "; rollouts scored by the reward function my_rewards:short; MLflow run http://mlflow/run" in line
    assert "rollouts scored by the synthetic judge;" in _start_line(caplog, "judge", None)
    assert "rollouts scored by the reward model /m/rm;" in _start_line(caplog, "reward_model", "/m/rm")
