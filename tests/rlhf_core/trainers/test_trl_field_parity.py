"""Every field of TRL 1.16's SFTConfig, DPOConfig, RewardConfig, KTOConfig and TRL 1.12's PPOConfig is accepted by
ours.

TRL's dataclass fields are read in a subprocess (TRL 1.16 from the venv: the `bench` extra; TRL 1.12 from
``.venv/trl112``, where the Makefile installs it with ``pip --target``), so neither version is imported here and
the two never meet. Each field either works (a config built with TRL's defaults, and the implemented ones with
non-default values) or is in the config's table of unimplemented fields, whose non-default value raises
``NotImplementedError`` naming the field and what to use instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainingArguments

from rlhf_core import DPOConfig, KTOConfig, PPOConfig, RewardConfig, SFTConfig
from rlhf_core.trainers.config_defaults import unimplemented_table

TRL112 = (
    Path(sys.prefix) / "trl112"
)  # the Makefile's `pip install --no-deps --target .venv/trl112 trl==1.12.0`

_DUMP = """
import dataclasses, json, sys
if sys.argv[1]:
    sys.path.insert(0, sys.argv[1])
import trl
module = __import__(sys.argv[2], fromlist=["x"])
out = {"version": trl.__version__, "classes": {}}
for name in sys.argv[3:]:
    fields = {}
    for f in dataclasses.fields(getattr(module, name)):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        try:
            fields[f.name] = json.loads(json.dumps(value))
        except TypeError:
            fields[f.name] = repr(value)
    out["classes"][name] = fields
print(json.dumps(out))
"""


def trl_fields(path: str, module: str, *classes: str) -> dict:
    """``{"version", "classes": {class: {field: default}}}`` read from TRL in a fresh interpreter."""
    env = {**os.environ, "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _DUMP, path, module, *classes],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _trl116() -> dict:
    pytest.importorskip(
        "trl", reason="TRL 1.16 is not installed (the `bench` extra; `make test` installs it)"
    )
    return trl_fields("", "trl", "SFTConfig", "DPOConfig", "RewardConfig", "KTOConfig")


def _trl112() -> dict:
    if not (TRL112 / "trl").is_dir():
        pytest.skip(f"TRL 1.12 is not installed at {TRL112} (`make setup` puts it there with pip --target)")
    return trl_fields(str(TRL112), "trl.experimental.ppo", "PPOConfig")


# Non-default values of the TRL fields this project implements (beyond TrainingArguments), checked to be taken.
IMPLEMENTED = {
    SFTConfig: {
        "loss_type": "dft",
        "truncation_mode": "keep_end",
        "pad_token": "<|pad|>",
        "eos_token": "<|end|>",
        "chat_template_path": "template.jinja",
        "shuffle_dataset": True,
        "pad_to_multiple_of": 8,
    },
    DPOConfig: {
        "pad_token": "<|pad|>",
        "pad_to_multiple_of": 8,
        "f_divergence_type": "alpha_divergence",
        "f_alpha_divergence_coef": 0.3,
        "ld_alpha": 0.5,
        "use_weighting": True,
        "sync_ref_model": True,
        "ref_model_mixup_alpha": 0.5,
        "ref_model_sync_steps": 4,
    },
    RewardConfig: {
        "pad_token": "<|pad|>",
        "eos_token": "<|end|>",
        "chat_template_path": "x",
        "pad_to_multiple_of": 8,
    },
    KTOConfig: {
        "loss_type": "apo_zero_unpaired",
        "desirable_weight": 1.33,
        "undesirable_weight": 0.5,
        "pad_to_multiple_of": 8,
        "precompute_ref_log_probs": True,
        "trust_remote_code": True,
        "router_aux_loss_coef": 0.0,  # no MoE loss: the only other value accepted (a non-zero one raises)
        "sync_ref_model": True,
        "ref_model_mixup_alpha": 0.5,
        "ref_model_sync_steps": 8,
    },
    PPOConfig: {
        "num_sample_generations": 3,
        "sft_model_path": "rlhf-tiny",
        "reward_model_path": "rlhf-tiny",
        "model_adapter_name": "policy",
        "ref_adapter_name": "ref",
    },
}


def _non_default(value):
    if isinstance(value, bool):
        return not value
    if value is None:
        return "other"
    if isinstance(value, (int, float)):
        return value + 1
    return f"{value}-other"


def check_parity(ours: type, trl_defaults: dict, tmp_path) -> None:
    names = {f.name for f in dataclasses.fields(ours)}
    missing = sorted(set(trl_defaults) - names)
    assert not missing, f"{ours.__name__} lacks TRL fields {missing}"
    table = unimplemented_table(ours)
    base = {"output_dir": str(tmp_path), "report_to": "none"}
    # a config with every one of TRL's defaults (JSON-able ones) at once is accepted
    usable = {k: v for k, v in trl_defaults.items() if not (isinstance(v, str) and v.startswith("<"))}
    usable.pop("output_dir", None), usable.pop("report_to", None)
    ours(**base, **usable)
    for name, entry in table.items():
        value = _non_default(entry.default)
        with pytest.raises(NotImplementedError) as err:
            ours(**base, **{name: value})
        message = str(err.value)
        assert f"{ours.__name__}.{name}=" in message and entry.instead in message
    trl_only = set(trl_defaults) - {f.name for f in dataclasses.fields(TrainingArguments)}
    for name, value in IMPLEMENTED[ours].items():
        assert name in trl_only and name not in table, name
        assert getattr(ours(**base, **{name: value}), name) == value


def test_trl_116_sft_dpo_reward_kto_fields(tmp_path):
    dump = _trl116()
    assert dump["version"].startswith("1.16")
    for ours in (SFTConfig, DPOConfig, RewardConfig, KTOConfig):
        check_parity(ours, dump["classes"][ours.__name__], tmp_path)


def test_trl_112_ppo_fields(tmp_path):
    dump = _trl112()
    assert dump["version"].startswith("1.12")
    check_parity(PPOConfig, dump["classes"]["PPOConfig"], tmp_path)
    # TRL declares world_size as a field; ours stays the process count the Trainer reads
    assert PPOConfig(output_dir=str(tmp_path)).world_size == 1


def test_trl_values_without_an_implementation_raise_not_implemented(tmp_path):
    for loss in ("aot", "discopop", "sigmoid_norm"):
        with pytest.raises(NotImplementedError, match=f"TRL's \\['{loss}'\\] is not implemented"):
            DPOConfig(output_dir=str(tmp_path), loss_type=["sigmoid", loss])
    with pytest.raises(NotImplementedError, match="packing_strategy='wrapped' is not implemented"):
        SFTConfig(output_dir=str(tmp_path), packing=True, packing_strategy="wrapped")


def test_unimplemented_fields_are_parsed_from_a_command_line(tmp_path):
    """TRL scripts parse configs with HfArgumentParser / TrlParser: the declared fields take part."""
    from transformers import HfArgumentParser

    (config,) = HfArgumentParser(SFTConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--loss_type", "dft", "--pad_to_multiple_of", "16"]
    )
    assert (config.loss_type, config.pad_to_multiple_of, config.activation_offloading) == ("dft", 16, False)
    with pytest.raises(
        NotImplementedError, match=r"SFTConfig\.activation_offloading=True is not implemented"
    ):
        HfArgumentParser(SFTConfig).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--activation_offloading", "true"]
        )
