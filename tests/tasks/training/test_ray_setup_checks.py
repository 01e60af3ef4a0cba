"""Bad Ray set-ups fail before any training, within seconds, with a message naming the problem."""

from __future__ import annotations

import sys
import time

import pytest
from scale_out_helpers import free_port, stage_spec

from tasks.config import ScaleOutSettings
from tasks.training.launch import train_stage
from tasks.training.ray_checks import RaySetupError


@pytest.fixture
def spec(stage_data, tmp_path):
    return stage_spec("sft", stage_data["sft"], tmp_path / "stage", 4)


def _fails_fast(spec, scale_out: ScaleOutSettings, limit_s: float = 20.0) -> str:
    start = time.monotonic()
    with pytest.raises(RaySetupError) as failure:
        train_stage(spec, scale_out)
    assert time.monotonic() - start < limit_s
    assert not spec.checkpoints_dir.exists() and not spec.outcome_file.exists()  # nothing trained
    return str(failure.value)


def test_an_address_nobody_answers_at(spec):
    address = f"127.0.0.1:{free_port()}"
    message = _fails_fast(spec, ScaleOutSettings(backend="ray", address=address), limit_s=5)
    assert message.startswith(f"no Ray cluster answers at {address} (")


def test_no_address_and_no_ray_address(spec, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    message = _fails_fast(spec, ScaleOutSettings(backend="ray"), limit_s=5)
    assert "neither scale_out.address nor RAY_ADDRESS" in message


def test_ray_not_installed_says_how_to_install_it(spec, monkeypatch):
    settings = ScaleOutSettings(backend="ray", address="127.0.0.1:6379")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    message = _fails_fast(spec, settings, limit_s=5)
    assert "Ray is not installed" in message and "`pip install -e .[ray]`" in message
    # The pipeline's config check says so too, before any stage (local ones included) trains.
    with pytest.raises(ValueError, match=r"Ray is not installed: install it with `pip install -e \.\[ray\]`"):
        ScaleOutSettings(backend="ray")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"num_workers": 3}, "has CPU: 2 in all, fewer than scale_out.num_workers 3 x resources_per_worker CPU: 1 = 3"),
        ({"resources_per_worker": {"CPU": 1.5}}, "has CPU: 2 in all, fewer than scale_out.num_workers 2 x resources_per_worker CPU: 1.5 = 3"),
        ({"use_gpu": True}, "has GPU: 0 in all, fewer than scale_out.num_workers 2 x resources_per_worker GPU: 1 = 2"),
    ],
)  # fmt: skip
def test_a_cluster_too_small_for_the_workers(ray_head, spec, settings, expected):
    message = _fails_fast(spec, ScaleOutSettings(backend="ray", address=ray_head, **settings))
    assert message == f"the Ray cluster at {ray_head} {expected}"


def test_a_storage_path_the_workers_cannot_write(ray_head, spec, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    storage = blocker / "ray"
    message = _fails_fast(spec, ScaleOutSettings(backend="ray", address=ray_head, storage_path=str(storage)))
    assert message.startswith(f"scale_out.storage_path {str(storage)!r} is not writable from Ray node ")
    assert "NotADirectoryError" in message
