"""Materialise every data role the enabled stages read: validate, digest, save under ``<output_dir>/data/``."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from tasks.config import PipelineConfig
from tasks.data_sources import content_digest, describe_source, load_role_dataset
from tasks.digests import short
from tasks.results import PreparedData, PreparedDataset

__all__ = ["load_prompts", "materialise_data", "roles_needed"]

logger = logging.getLogger(__name__)


def roles_needed(config: PipelineConfig) -> list[str]:
    """Data roles read by the enabled stages, plus the evaluation prompts."""
    return [*config.stages.enabled(), "eval"]


def materialise_data(config: PipelineConfig, roles: list[str] | None = None) -> PreparedData:
    """Load, validate and save each role's rows once per content digest (atomic: write aside, then rename)."""
    start = time.perf_counter()
    root = Path(config.output_dir) / "data"
    root.mkdir(parents=True, exist_ok=True)
    prepared: dict[str, PreparedDataset] = {}
    for role in roles or roles_needed(config):
        source = config.data.for_role(role)
        dataset = load_role_dataset(source, role)
        digest = content_digest(dataset)
        target = root / f"{role}-{short(digest)}"
        if not (target / "dataset_info.json").is_file():
            shutil.rmtree(target, ignore_errors=True)  # an incomplete folder left by a crash
            staging = root / f".{target.name}.{uuid.uuid4().hex}.tmp"
            dataset.save_to_disk(str(staging))
            try:
                os.replace(staging, target)
            except OSError:  # another run saved the same content first: theirs is identical
                shutil.rmtree(staging, ignore_errors=True)
        prepared[role] = PreparedDataset(
            role=role,
            path=str(target.resolve()),
            digest=digest,
            num_rows=len(dataset),
            description=describe_source(source),
        )
        logger.info(
            "data %s: %d rows from %s (digest %s)", role, len(dataset), describe_source(source), short(digest)
        )
    return PreparedData(datasets=prepared, seconds=time.perf_counter() - start)


def load_prompts(path: str, limit: int | None = None) -> list:
    """The ``prompt`` column of a prepared prompts dataset (the first ``limit`` rows)."""
    from datasets import load_from_disk

    dataset = load_from_disk(path)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return list(dataset["prompt"])
