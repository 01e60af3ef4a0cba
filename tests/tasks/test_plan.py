"""The plan: each stage's digest covers exactly what determines its result, and names its folder."""

from __future__ import annotations

from tasks.config import config_from_mapping
from tasks.plan import build_plan
from tasks.results import PreparedData, PreparedDataset


def _data(**digests: str) -> PreparedData:
    roles = {"sft": "a", "reward": "b", "dpo": "b", "ppo": "c", "eval": "d", **digests}
    return PreparedData(datasets={
        role: PreparedDataset(role=role, path=f"/data/{role}", digest=d, num_rows=1, description="x")
        for role, d in roles.items()
    })  # fmt: skip


def _digests(raw: dict, data: PreparedData | None = None) -> dict[str, str]:
    plan = build_plan(config_from_mapping({"output_dir": "/out", **raw}), data or _data())
    return {stage: p.digest for stage, p in plan.stages.items()}


def test_stages_chain_through_the_sft_folder():
    plan = build_plan(config_from_mapping({"output_dir": "/out"}), _data())
    sft = plan.stages["sft"].spec
    assert sft.stage_dir == f"/out/stages/sft-{plan.stages['sft'].digest[:16]}"
    for stage in ("reward", "dpo", "ppo"):
        assert plan.stages[stage].spec.model == str(sft.final_dir)  # all start from the SFT checkpoint
    assert plan.stages["ppo"].spec.reward_model == str(plan.stages["reward"].spec.final_dir)
    assert plan.policies() == {"base": plan.base_model, **{s: str(plan.stages[s].spec.final_dir)
                                                           for s in ("sft", "dpo", "ppo")}}  # fmt: skip
    assert plan.reference == "sft"


def test_digests_change_with_what_determines_the_result():
    base = _digests({})
    more_sft = _digests({"stages": {"sft": {"args": {"max_steps": 7}}}})
    assert all(more_sft[s] != base[s] for s in ("sft", "reward", "dpo", "ppo"))  # everything builds on SFT
    beta = _digests({"stages": {"dpo": {"args": {"beta": 0.3}}}})
    assert beta["dpo"] != base["dpo"] and {s: beta[s] for s in ("sft", "reward", "ppo")} == {
        s: base[s] for s in ("sft", "reward", "ppo")
    }
    new_pairs = _digests({}, _data(reward="z", dpo="z"))
    assert new_pairs["sft"] == base["sft"] and new_pairs["reward"] != base["reward"]
    assert new_pairs["ppo"] != base["ppo"]  # PPO is scored by the reward model trained on the pairs
    judged = _digests({"stages": {"ppo": {"reward": "judge"}}}, _data(reward="z", dpo="z"))
    assert (
        judged["ppo"] == _digests({"stages": {"ppo": {"reward": "judge"}}})["ppo"]
    )  # ... unless the judge scores
    # settings that do not change the result leave the digest alone
    assert _digests({"stages": {"sft": {"retries": 3, "timeout_s": 10}}}) == base
    assert _digests({"seed": 1})["sft"] != base["sft"]


def test_without_sft_everything_starts_from_the_base_model():
    plan = build_plan(
        config_from_mapping({"output_dir": "/out", "stages": {"sft": {"enabled": False}}}), _data()
    )
    assert plan.reference == "base" and "sft" not in plan.policies()
    assert plan.stages["dpo"].spec.model == plan.base_model == plan.stages["reward"].spec.model


def test_a_reward_function_is_part_of_the_online_stage_digest(tmp_path, monkeypatch):
    module = tmp_path / "plan_rewards.py"
    module.write_text("def score(completions, **_):\n    return [0.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    named, data = {"stages": {"grpo": {"enabled": True, "reward": "plan_rewards:score"}}}, _data(grpo="e")
    first = _digests(named, data)
    spec = build_plan(config_from_mapping({"output_dir": "/out", **named}), data).stages["grpo"].spec
    assert spec.reward == "plan_rewards:score" and spec.reward_model is None  # what the trainer is given
    assert first["grpo"] != _digests({"stages": {"grpo": {"enabled": True, "reward": "judge"}}}, data)["grpo"]
    assert _digests(named, data) == first
    module.write_text("def score(completions, **_):\n    return [1.0] * len(completions)\n")
    edited = _digests(named, data)
    assert edited["grpo"] != first["grpo"]  # trained again, not reused with the old reward
    assert {s: d for s, d in edited.items() if s != "grpo"} == {s: d for s, d in first.items() if s != "grpo"}
