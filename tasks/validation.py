"""``rlhf validate``: beyond the schema, read every data source the config uses and load the models' tokenizers."""

from __future__ import annotations

from pathlib import Path

from tasks import check_cache
from tasks.config import ConfigError, PipelineConfig
from tasks.data_sources import content_digest, describe_source, load_role_dataset
from tasks.digests import short
from tasks.prepare import roles_needed

__all__ = ["validate_config_data"]


def _load_tokenizer(name: str) -> tuple[bool, list[Path] | None]:
    """Load it; the files it was read from (a hub name resolved inside the hub cache: not known, None)."""
    from rlhf_core.models.loading import load_tokenizer

    folder = Path(load_tokenizer(name).name_or_path)
    return True, sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else None


def _check_model(key: str, name: str | None, problems: list[str]) -> None:
    if name is None:
        return
    try:  # a pass is remembered (`tasks.check_cache`): loading a tokenizer imports torch (seconds)
        check_cache.checked(f"tokenizer {name}", {"name_or_path": name}, lambda: _load_tokenizer(name))
    except (OSError, ValueError) as err:
        problems.append(f"{key}: {err}")


def validate_config_data(config: PipelineConfig) -> str:
    """Check every data row the enabled stages would read and that the models load; returns a short report.

    Raises `DataSourceError` (first bad source, with key, row and field) or `ConfigError` (models).
    """
    lines = []
    for role in roles_needed(config):
        source = config.data.for_role(role)
        rows = load_role_dataset(source, role)
        lines.append(
            f"data.{role}: {len(rows)} rows from {describe_source(source)} (digest {short(content_digest(rows))})"
        )
    problems: list[str] = []
    _check_model("model.name_or_path", config.model.name_or_path, problems)
    _check_model("model.reward_backbone", config.model.reward_backbone, problems)
    _check_model("model.reward_model", config.model.reward_model, problems)
    if problems:
        raise ConfigError(problems)
    lines.append(f"stages: {' -> '.join(config.stages.enabled())}")
    return "\n".join(lines)
