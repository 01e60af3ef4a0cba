"""Content digests that key the pipeline's caches and output folders.

A stage's digest covers everything that determines its result: the stage's settings, the model it starts from,
the digests of the data it reads, the digests of the stages it depends on, the seed and the toolkit version. Equal
digest, equal checkpoint: the Prefect cache key and the stage's output folder are both named by it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tasks.config import PipelineConfig

__all__ = ["digest_of", "short", "stage_digest"]


def digest_of(value: Any) -> str:
    """SHA-256 of a JSON-able value in canonical form."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short(digest: str) -> str:
    return digest[:16]


def _toolkit_version() -> str:
    import rlhf_core

    return rlhf_core.__version__


def stage_digest(
    config: PipelineConfig,
    stage: str,
    *,
    start_model: str,
    data_digests: dict[str, str],
    upstream: dict[str, str],
) -> str:
    """Digest of ``stage``: its settings + start model + data digests + upstream stage digests + seed + version."""
    settings = getattr(config.stages, stage)
    return digest_of(
        {
            "stage": stage,
            "args": settings.args,
            "lora": settings.lora,
            "extra": settings.model_dump(
                exclude={"enabled", "args", "lora", "resume", "retries", "timeout_s"}
            ),
            "start_model": start_model,
            "data": data_digests,
            "upstream": upstream,
            "seed": config.seed,
            # The number of processes changes the global batch, hence the result; the backend does not.
            "num_processes": config.scale_out.world_size(stage),
            "version": _toolkit_version(),
        }
    )
