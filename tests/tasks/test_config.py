"""PipelineConfig: YAML <-> model, dotted overrides, and errors that name the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tasks.config import (
    ConfigError,
    PipelineConfig,
    apply_overrides,
    config_from_mapping,
    config_to_yaml,
    load_config,
    parse_override,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def _problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(raw)
    return info.value.problems


def test_default_config_is_the_offline_tiny_pipeline():
    config = load_config(CONFIGS / "default.yaml")
    assert config.model.name_or_path == "rlhf-tiny"
    assert config.stages.enabled() == ["sft", "reward", "dpo", "ppo"]
    assert config.data.sft.source == "synthetic" and config.data.eval.split == "heldout"
    # trainer arguments were checked against the trainer configs and coerced to the fields' types
    assert isinstance(config.stages.sft.args["learning_rate"], float)
    assert config.data.for_role("dpo") == config.data.preference


def test_every_shipped_config_validates(tmp_path):
    hh = tmp_path / "hh.jsonl"
    hh.write_text(
        '{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: go"}\n'
    )
    for path in sorted(CONFIGS.glob("*.yaml")):
        overrides = (
            [f"data.{k}.path={hh}" for k in ("sft", "preference", "eval")] if "hh" in path.name else []
        )
        assert isinstance(load_config(path, overrides), PipelineConfig), path


def test_yaml_round_trip(tmp_path):
    config = load_config(CONFIGS / "default.yaml", ["stages.dpo.args.beta=0.2", "name=x"])
    file = tmp_path / "again.yaml"
    file.write_text(config_to_yaml(config))
    assert load_config(file) == config


def test_overrides_are_typed_by_yaml():
    raw = apply_overrides(
        {"stages": {"sft": {"args": {"max_steps": 5}}}},
        [
            "stages.sft.args.max_steps=7",
            "stages.dpo.enabled=false",
            "scale_out.stages=[sft, dpo]",
            "stages.sft.args.learning_rate=1e-4",  # YAML 1.1 reads this as a string; the field type makes it a float
            "name=my run",
        ],
    )
    assert raw["stages"]["sft"]["args"]["max_steps"] == 7
    assert raw["stages"]["dpo"]["enabled"] is False
    assert raw["scale_out"]["stages"] == ["sft", "dpo"]
    config = config_from_mapping(raw)
    assert config.stages.sft.args["learning_rate"] == pytest.approx(1e-4)
    assert config.name == "my run" and config.stages.enabled() == ["sft", "reward", "ppo"]


def test_override_errors_name_the_override():
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        parse_override("stages.sft.args.max_steps")
    with pytest.raises(ConfigError, match="name is 'x', not a mapping"):
        apply_overrides({"name": "x"}, ["name.first=1"])


def test_unknown_keys_are_named_with_a_suggestion():
    assert _problems({"stages": {"sft": {"argz": {}}}}) == [
        "stages.sft.argz: unknown key (did you mean 'args'? allowed: enabled, args, lora, resume, retries, timeout_s)"
    ]
    (problem,) = _problems({"evaluaton": {}})
    assert problem.startswith("evaluaton: unknown key (did you mean 'evaluation'?")
    (problem,) = _problems({"data": {"sft": {"source": "synthetic", "num_exemples": 3}}})
    assert problem.startswith("data.sft.num_exemples: unknown key (did you mean 'num_examples'?")


def test_trainer_arguments_are_validated_by_the_trainer_config():
    assert _problems({"stages": {"dpo": {"args": {"bta": 0.1}}}}) == [
        "stages.dpo.args.bta: unknown DPOConfig argument (did you mean 'beta'?)"
    ]
    (problem,) = _problems({"stages": {"sft": {"args": {"learning_rate": "fast"}}}})
    assert (
        problem.startswith("stages.sft.args.learning_rate: Input should be a valid number")
        and "'fast'" in problem
    )
    (problem,) = _problems({"stages": {"reward": {"args": {"output_dir": "x"}}}})
    assert problem.startswith("stages.reward.args.output_dir: cannot be set here")
    # the config's own __post_init__ checks run too
    (problem,) = _problems({"stages": {"reward": {"args": {"overlong": "chop"}}}})
    assert (
        problem.startswith("stages.reward.args: RewardConfig rejected these arguments") and "chop" in problem
    )


def test_wrong_types_and_ranges():
    problems = _problems(
        {"seed": "abc", "scale_out": {"num_processes": 0}, "stages": {"sft": {"enabled": "maybe"}}}
    )
    assert len(problems) == 3
    assert any(p.startswith("seed: Input should be a valid integer") for p in problems)
    assert any(
        p.startswith("scale_out.num_processes: Input should be greater than or equal to 1") for p in problems
    )
    assert any(p.startswith("stages.sft.enabled: Input should be a valid boolean") for p in problems)


def test_missing_data_file_and_unknown_source(tmp_path):
    (problem,) = _problems({"data": {"sft": {"source": "file", "path": str(tmp_path / "nope.jsonl")}}})
    assert problem.startswith("data.sft.path: data file not found") and "nope.jsonl" in problem
    (problem,) = _problems({"data": {"preference": {"source": "files", "path": "x"}}})
    assert problem.startswith("data.preference: unknown source 'files'")
    (problem,) = _problems({"scale_out": {"accelerate_config": str(tmp_path / "fsdp.yaml")}})
    assert problem.startswith("scale_out.accelerate_config: accelerate config file not found")


def test_impossible_stage_combinations():
    (problem,) = _problems({"stages": {"reward": {"enabled": False}}})
    assert (
        problem.startswith("stages.ppo: PPO scores rollouts with a reward model")
        and "model.reward_model" in problem
    )
    # ... but a given reward model, or the judge, makes it possible
    config_from_mapping({"stages": {"reward": {"enabled": False}, "ppo": {"reward": "judge"}}})
    # ... and so does a reward function (it needs no reward model)
    functions = {"ppo": {"reward": "rlhf_core.data.synthetic:judge_responses"},
                 "grpo": {"enabled": True, "reward": "rlhf_core.rewards:synthetic_judge_reward"}}  # fmt: skip
    config_from_mapping({"stages": {"reward": {"enabled": False}, **functions}})
    problems = _problems({"stages": {s: {"enabled": False} for s in ("sft", "reward", "dpo", "ppo")}})
    assert any("every stage is disabled" in p for p in problems)
    (problem,) = _problems({"evaluation": {"judge": None}})
    assert problem == "tracking.champion.metric: judge_score needs evaluation.judge (it is null)"
    (problem,) = _problems({"stages": {"ppo": {"enabled": False}}, "tracking": {"register_policy": "ppo"}})
    assert problem == "tracking.register_policy: ppo but stages.ppo.enabled is false"


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  sft: [unclosed\n")
    with pytest.raises(ConfigError, match="line 3"):
        load_config(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_champion_rule():
    from tasks.config import ChampionRule

    up, down = ChampionRule(), ChampionRule(metric="kl_to_ref", direction="minimize", min_delta=0.1)
    assert up.beats(0.5, None) and up.beats(0.6, 0.5) and not up.beats(0.5, 0.5)
    assert down.beats(0.3, 0.5) and not down.beats(0.45, 0.5)
