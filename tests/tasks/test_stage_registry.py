"""The stage registry: every stage is declared once, and config, plan, training dispatch and CLI follow it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from transformers import Trainer, TrainingArguments

from tasks.config import PipelineConfig, config_from_mapping
from tasks.config.sources import DataSettings
from tasks.config.stages import StagesSettings
from tasks.stage_registry import STAGES, preference_stages, reward_model_stage, stage_names

REPO = Path(__file__).resolve().parents[2]


def test_every_entry_names_a_trainer_and_its_config():
    for stage in STAGES.values():
        assert issubclass(stage.load_config_class(), TrainingArguments), stage.name
        assert issubclass(stage.load_trainer_class(), Trainer), stage.name
        assert stage.starts_from is None or stage.starts_from in STAGES
    assert stage_names() == ("sft", "reward", "dpo", "kto", "ppo", "grpo")
    assert preference_stages() == ("dpo", "kto", "ppo", "grpo") and reward_model_stage() == "reward"


def test_config_sections_follow_the_registry():
    assert list(StagesSettings.model_fields) == list(STAGES)
    assert {"reward", "dpo", "ppo"} <= set(DataSettings.model_fields)
    config = PipelineConfig()
    opt_in = [name for name, stage in STAGES.items() if not stage.enabled_by_default]
    assert opt_in == ["kto", "grpo"] and not config.stages.kto.enabled and not config.stages.grpo.enabled
    assert config.stages.enabled() == [s for s in STAGES if s not in opt_in]
    assert config.scale_out.stages == list(STAGES)
    assert config.stages.ppo.reward == "reward_model" and not hasattr(config.stages.dpo, "reward")
    assert (
        config.data.for_role("ppo") == config.data.preference
        and config.data.for_role("sft") == config.data.sft
    )


def test_unknown_stage_names_are_configuration_errors():
    from tasks.config import ConfigError

    try:
        config_from_mapping(
            {"scale_out": {"stages": ["sft", "grpo2"]}, "tracking": {"register_policy": "sft"}}
        )
    except ConfigError as err:
        problems = err.problems
    else:
        raise AssertionError("no ConfigError")
    assert any(p.startswith("scale_out.stages: unknown stage 'grpo2'") for p in problems)
    assert "tracking.register_policy: expected 'best' or one of dpo, kto, ppo, grpo, got 'sft'" in problems


def test_a_reward_function_that_does_not_import_is_a_configuration_error(tmp_path, monkeypatch):
    from tasks.config import ConfigError

    (tmp_path / "my_rewards.py").write_text(
        "def short(completions, **_):\n    return [0.0] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    def problems(reward: str) -> list[str]:
        try:
            config_from_mapping({"stages": {"grpo": {"enabled": True, "reward": reward}}})
        except ConfigError as err:
            return err.problems
        return []

    assert problems("my_rewards:short") == []
    assert any("module 'my_rewards' has no attribute 'shrot'" in p for p in problems("my_rewards:shrot"))
    assert any("cannot import module 'my_rewardz'" in p for p in problems("my_rewardz:short"))
    assert any("'__name__' is a str, not a function" in p for p in problems("my_rewards:__name__"))
    # the pass was remembered with the module's file: once the function is gone, it is checked again
    (tmp_path / "my_rewards.py").write_text(
        "def long(completions, **_):\n    return [1.0] * len(completions)\n"
    )
    sys.modules.pop("my_rewards")
    assert any("has no attribute 'short'" in p for p in problems("my_rewards:short"))


def test_the_kto_stage_trains_through_the_training_dispatch(tmp_path):
    from rlhf_core.data.synthetic import SyntheticTask
    from rlhf_core.trainers.preference.kto import KTOTrainer
    from tasks.stage_specs import StageSpec
    from tasks.training import run as training

    config = config_from_mapping({"stages": {"kto": {"enabled": True, "args": {"max_steps": 2}}}})
    assert "kto" in config.stages.enabled() and "kto" in config.preference_stages()
    SyntheticTask().preference_dataset(8).save_to_disk(str(tmp_path / "pairs"))
    args = {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 48, "logging_steps": 1,
            "save_strategy": "no", "disable_tqdm": True}  # fmt: skip
    spec = StageSpec(stage="kto", model="rlhf-tiny", train_data=str(tmp_path / "pairs"),
                     stage_dir=str(tmp_path / "kto"), args=args)  # fmt: skip
    built = training.build_trainer(spec, training.resolve_trainer_config(spec))
    assert isinstance(built, KTOTrainer) and built.ref_model is not None  # a frozen copy of the SFT policy
    outcome = training.run_stage_training(spec)
    assert outcome.global_step == 2 and (tmp_path / "kto" / "final" / "model.safetensors").is_file()


def length_reward(completions, **_):  # named by the grpo stage below as "test_stage_registry:length_reward"
    return [-abs(10 - len(c[0]["content"])) / 10 for c in completions]


def test_the_grpo_stage_trains_with_the_judge_or_a_named_function(tmp_path, monkeypatch):
    from rlhf_core.data.synthetic import SyntheticTask
    from rlhf_core.rewards import synthetic_judge_reward
    from rlhf_core.trainers.online.grpo import GRPOTrainer
    from tasks import stage_tasks
    from tasks.config import ConfigError
    from tasks.stage_specs import StageSpec
    from tasks.training import run as training

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    config = config_from_mapping({"stages": {"grpo": {"enabled": True, "reward": "judge"}}})
    assert "grpo" in config.stages.enabled() and config.stages.grpo.reward == "judge"
    try:
        config_from_mapping({"stages": {"grpo": {"enabled": True, "reward": "a judge"}}})
    except ConfigError as err:
        assert any("reward='a judge'" in p for p in err.problems), err.problems
    else:
        raise AssertionError("no ConfigError")
    SyntheticTask().prompt_dataset(8, "train").save_to_disk(str(tmp_path / "prompts"))
    args = {"max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 8,
            "gradient_checkpointing": False, "logging_steps": 1, "save_strategy": "no", "disable_tqdm": True}  # fmt: skip
    for reward, expected in (
        ("judge", synthetic_judge_reward),
        ("test_stage_registry:length_reward", length_reward),
    ):
        spec = StageSpec(stage="grpo", model="rlhf-tiny", train_data=str(tmp_path / "prompts"),
                         stage_dir=str(tmp_path / reward.replace(":", "-")), args=args, reward=reward)  # fmt: skip
        built = training.build_trainer(spec, training.resolve_trainer_config(spec))
        assert isinstance(built, GRPOTrainer) and built.rewards.sources[0].fn is expected
    outcome = training.run_stage_training(spec)
    assert outcome.global_step == 1 and (Path(spec.stage_dir) / "final" / "model.safetensors").is_file()
    # the completions table of each log reaches the stage's MLflow run as samples/training
    logged = []
    monkeypatch.setattr(stage_tasks.tracking, "log_samples", lambda rows, name: logged.append((name, rows)))
    stage_tasks._log_training_samples(spec)
    [(name, rows)] = logged
    assert name == "training" and len(rows) == 4  # 1 prompt x 4 completions at step 1's log
    assert {"step", "prompt", "completion", "length_reward", "advantage"} <= set(rows[0]) and rows[0][
        "step"
    ] == 1
    assert [r["length_reward"] for r in rows] == pytest.approx(
        [-abs(10 - len(r["completion"])) / 10 for r in rows]
    ), rows


# A new stage is one registry entry: here a second SFT pass on top of the first, added before anything else is
# imported (in a fresh interpreter, as a new entry in tasks/stage_registry.py would be).
_NEW_STAGE = textwrap.dedent(
    """
    import dataclasses
    from tasks import stage_registry
    sft = stage_registry.STAGES["sft"]
    stage_registry.STAGES["polish"] = dataclasses.replace(sft, name="polish", starts_from="sft")

    from deployments.cli import build_parser
    from tasks.config import config_from_mapping
    from tasks.plan import build_plan
    from tasks.results import PreparedData, PreparedDataset
    from tasks.stage_tasks import TRAINING_TASKS

    config = config_from_mapping({"output_dir": "/out", "stages": {"polish": {"args": {"max_steps": 3}}},
                                  "data": {"polish": {"source": "synthetic", "num_examples": 5}}})
    assert config.stages.enabled()[-1] == "polish" and config.stages.polish.args == {"max_steps": 3}
    assert config.data.for_role("polish").num_examples == 5
    data = PreparedData(datasets={r: PreparedDataset(role=r, path=f"/d/{r}", digest=r, num_rows=1, description="")
                                  for r in [*config.stages.enabled(), "eval"]})
    plan = build_plan(config, data)
    polish = plan.stages["polish"]
    assert polish.spec.model == str(plan.stages["sft"].spec.final_dir) and "polish" in plan.policies()
    assert TRAINING_TASKS["polish"].name == "train-polish"
    assert build_parser().parse_args(["train", "polish", "c.yaml"]).stage == "polish"
    print("ok")
    """
)


def test_a_new_stage_is_one_registry_entry():
    proc = subprocess.run(
        [sys.executable, "-c", _NEW_STAGE], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_a_crashed_grpo_stage_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    import json

    import pytest
    from transformers import TrainerCallback

    from rlhf_core.data.synthetic import SyntheticTask
    from tasks.stage_specs import StageSpec
    from tasks.training import run as training

    class CrashAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt(f"simulated crash after saving step {state.global_step}")

    build = training.build_trainer

    def crashing(spec, args):
        trainer = build(spec, args)
        trainer.add_callback(CrashAfterFirstSave())
        return trainer

    SyntheticTask().prompt_dataset(8, "train").save_to_disk(str(tmp_path / "prompts"))
    args = {"max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 6,
            "gradient_checkpointing": False, "logging_steps": 1, "save_steps": 1, "disable_tqdm": True}  # fmt: skip
    spec = StageSpec(stage="grpo", model="rlhf-tiny", train_data=str(tmp_path / "prompts"),
                     stage_dir=str(tmp_path / "grpo"), args=args, reward="judge")  # fmt: skip
    monkeypatch.setattr(training, "build_trainer", crashing)
    with pytest.raises(KeyboardInterrupt):
        training.run_stage_training(spec)
    assert (spec.checkpoints_dir / "checkpoint-1").is_dir() and not spec.final_dir.exists()
    monkeypatch.setattr(training, "build_trainer", build)
    outcome = training.run_stage_training(spec)
    assert outcome.resumed_from == str(spec.checkpoints_dir / "checkpoint-1") and outcome.global_step == 2
    state = json.loads((spec.checkpoints_dir / "checkpoint-2" / "trainer_state.json").read_text())
    # step 1 from the first attempt, step 2 from the resumed one: each logged once
    assert [entry["step"] for entry in state["log_history"] if "reward" in entry] == [1, 2]
