"""`scale_out` in the pipeline config: the backend, its settings, and the messages for settings that cannot work."""

from __future__ import annotations

import pytest

from tasks.config import ConfigError, PipelineConfig, ScaleOutSettings, config_from_mapping
from tasks.training.launch import accelerate_command


def _problems(scale_out: dict) -> list[str]:
    with pytest.raises(ConfigError) as failure:
        config_from_mapping({"scale_out": scale_out})
    return failure.value.problems


def test_backend_defaults_and_what_older_configs_meant():
    assert ScaleOutSettings().backend == "local" and not ScaleOutSettings().launches("sft")
    assert ScaleOutSettings(num_processes=1).backend == "local"  # configs/default.yaml says num_processes: 1
    assert ScaleOutSettings(num_processes=2).backend == "accelerate"
    ray = ScaleOutSettings(backend="ray", num_workers=3, stages=["dpo"])
    assert ray.launches("dpo") and not ray.launches("sft")
    assert (ray.world_size("dpo"), ray.world_size("sft")) == (3, 1)
    assert ScaleOutSettings(num_processes=4).world_size("ppo") == 4


def test_the_stage_digest_counts_processes_not_the_backend():
    from tasks.digests import stage_digest

    def digest(scale_out: dict) -> str:
        config = PipelineConfig.model_validate({"scale_out": scale_out})
        return stage_digest(config, "sft", start_model="m", data_digests={}, upstream={})

    two = digest({"backend": "ray", "num_workers": 2})
    assert two == digest({"backend": "accelerate", "num_processes": 2}) and two != digest({})
    assert digest({}) == digest({"num_processes": 1})


@pytest.mark.parametrize(
    ("scale_out", "expected"),
    [
        ({"backend": "ray", "num_processes": 2}, "num_processes is a setting of another backend, but backend is 'ray'"),
        ({"backend": "local", "num_workers": 4}, "num_workers is a setting of another backend, but backend is 'local'"),
        ({"num_processes": 2, "address": "h:1"}, "address is a setting of another backend, but backend is 'accelerate'"),
        ({"backend": "accelerate", "num_processes": 2, "num_machines": 2}, "num_machines > 1 needs main_process_ip"),
        ({"backend": "accelerate", "num_processes": 3, "num_machines": 2, "main_process_ip": "10.0.0.1"},
         "num_processes 3 (all machines together) is not a multiple of num_machines 2"),
        ({"backend": "accelerate", "num_machines": 2, "machine_rank": 2, "num_processes": 2,
          "main_process_ip": "10.0.0.1"}, "machine_rank 2 must be below num_machines 2"),
        ({"backend": "ray", "use_gpu": True, "resources_per_worker": {"CPU": 1, "GPU": 0}},
         "use_gpu is true but resources_per_worker gives GPU: 0"),
    ],
)  # fmt: skip
def test_settings_that_cannot_work_are_named(scale_out, expected):
    (problem,) = _problems(scale_out)
    assert problem.startswith("scale_out: ") and expected in problem


@pytest.mark.parametrize(
    ("scale_out", "expected"),
    [
        ({"backend": "slurm"}, "scale_out.backend: Input should be 'local', 'accelerate' or 'ray'"),
        ({"backend": "ray", "address": "head"}, "scale_out.address: 'head' is not a Ray address"),
        ({"backend": "ray", "num_workers": 0}, "scale_out.num_workers: Input should be greater than or equal to 1"),
        ({"backend": "ray", "max_failures": -2}, "scale_out.max_failures: Input should be greater than or equal to -1"),
        ({"backend": "ray", "resources_per_worker": {"CPU": -1}}, "scale_out.resources_per_worker: negative"),
    ],
)  # fmt: skip
def test_field_problems_name_the_key(scale_out, expected):
    (problem,) = _problems(scale_out)
    assert problem.startswith(expected), problem


def test_ray_addresses_accepted():
    for address in ("127.0.0.1:6379", "ray://head.svc:10001", "auto", "[::1]:6379"):
        assert ScaleOutSettings(backend="ray", address=address).address == address


def test_multi_node_accelerate_command(tmp_path):
    settings = ScaleOutSettings(num_processes=4, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1")
    cmd = accelerate_command(tmp_path / "spec.json", settings)

    def flag(name: str) -> str:
        return cmd[cmd.index(name) + 1]

    assert (flag("--num_processes"), flag("--num_machines"), flag("--machine_rank")) == ("4", "2", "1")
    assert flag("--main_process_ip") == "10.0.0.1"
    assert flag("--main_process_port") == "29500"  # every machine must agree on it: no random free port
