"""Settings shared by the preference trainer tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from typing import Any

# Small batches, no checkpoints, a log line per step, deterministic: what a unit test of a trainer wants.
QUICK_SETTINGS: dict[str, Any] = dict(output_dir="out", per_device_train_batch_size=4, per_device_eval_batch_size=4,
                                     learning_rate=1e-3, logging_steps=1, save_strategy="no", seed=0,
                                     disable_tqdm=True, max_length=64)  # fmt: skip


def quick_config(config_class: type, **overrides: Any) -> Any:
    """``config_class`` (RewardConfig, DPOConfig, KTOConfig) with `QUICK_SETTINGS`, then ``overrides``."""
    return config_class(**{**QUICK_SETTINGS, **overrides})
