"""Turn a configured data source into the rows a stage reads, validated row by row, with a content digest.

Three forms, one per kind of stage:

- ``sft``: SFT rows (``text``, ``prompt``+``completion`` or ``messages``); preference data becomes prompt + chosen;
- ``preference``: ``prompt``, ``chosen``, ``rejected`` (+ ``margin``), implicit prompts extracted;
- ``prompts``: ``prompt`` only; preference or conversational data gives its prompts.

Every row is checked with `rlhf_core.data.formats`, so a bad row fails here, before any training, with the config
key, the row index and the field in the message.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset

from rlhf_core.data.formats import (
    DataFormat,
    DataFormatError,
    detect_format,
    normalise_preference_row,
    normalise_prompt_row,
    normalise_sft_row,
)
from tasks.config.sources import DataSource, FileSource, HHRLHFSource, HubSource, SyntheticSource
from tasks.stage_registry import get_stage

__all__ = [
    "role_form",
    "DataSourceError",
    "content_digest",
    "describe_source",
    "hh_transcript_to_messages",
    "load_role_dataset",
]


def role_form(role: str) -> str:
    """The form a data role needs: the stage's (`tasks.stage_registry`), prompts for ``eval``."""
    return "prompts" if role == "eval" else get_stage(role).data


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


class DataSourceError(ValueError):
    """A data source that cannot be read or holds a bad row; the message names the config key first."""


@dataclass(frozen=True)
class _Loaded:
    rows: Dataset
    text_field: str = "text"


def describe_source(source: DataSource) -> str:
    """A short human description: ``synthetic(seed=0, n=2000)``, ``file(/data/x.jsonl)``, ``hub(name:split)``."""
    if isinstance(source, SyntheticSource):
        return f"synthetic(seed={source.seed}, n={source.num_examples}, split={source.split})"
    if isinstance(source, HubSource):
        return f"hub({source.name}{':' + source.subset if source.subset else ''}, split={source.split})"
    return f"{source.source}({source.path})"


def load_role_dataset(source: DataSource, role: str, *, key: str | None = None) -> Dataset:
    """The rows of ``source`` in the form ``role`` needs; errors name ``key`` (e.g. ``data.sft``)."""
    key = key or f"data.{role}"
    form = role_form(role)
    try:
        loaded = _load(source, form)
        rows = _CONVERTERS[form](loaded)
    except DataFormatError as err:
        raise DataSourceError(f"{key} ({describe_source(source)}): {err}") from None
    except (OSError, ValueError) as err:
        raise DataSourceError(f"{key} ({describe_source(source)}): {err}") from None
    if len(rows) == 0:
        raise DataSourceError(f"{key} ({describe_source(source)}): no rows")
    return Dataset.from_list(rows)


def content_digest(dataset: Dataset) -> str:
    """SHA-256 of the rows (canonical JSON, in order): equal content, equal digest, wherever it came from."""
    digest = hashlib.sha256()
    for row in dataset:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


# ---- reading sources -----------------------------------------------------------------------------------------
def _load(source: DataSource, form: str) -> _Loaded:
    if isinstance(source, SyntheticSource):
        return _Loaded(_synthetic(source, form))
    if isinstance(source, FileSource):
        return _Loaded(_limit(_read_file(Path(source.path)), source.limit), source.text_field)
    if isinstance(source, HHRLHFSource):
        return _Loaded(_hh_rlhf(source))
    if isinstance(source, HubSource):
        from datasets import load_dataset

        rows = load_dataset(source.name, source.subset, split=source.split, revision=source.revision)
        return _Loaded(_limit(rows, source.limit), source.text_field)
    raise TypeError(f"unknown data source {source!r}")


def _synthetic(source: SyntheticSource, form: str) -> Dataset:
    from rlhf_core.data.synthetic import SyntheticTask

    task = SyntheticTask(seed=source.seed)
    if form == "sft":
        return task.sft_dataset(source.num_examples)
    if form == "preference":
        return task.preference_dataset(source.num_examples)
    return task.prompt_dataset(source.num_examples, split=source.split)


def _read_file(path: Path) -> Dataset:
    name = path.name
    if name.endswith(".parquet"):
        return Dataset.from_parquet(str(path))
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        return Dataset.from_json(str(path))
    raise ValueError(f"unsupported file type {name!r}")


def _limit(rows: Dataset, limit: int | None) -> Dataset:
    return rows.select(range(min(limit, len(rows)))) if limit is not None else rows


def _hh_rlhf(source: HHRLHFSource) -> Dataset:
    from rlhf_core.data.hh_rlhf import load_hh_rlhf

    rows = load_hh_rlhf(
        source.path,
        split=source.split,
        test_fraction=source.test_fraction,
        limit=source.limit,
        explicit_prompt=True,
    )
    if not source.as_messages:
        return rows
    return Dataset.from_list(
        [
            {
                "prompt": hh_transcript_to_messages(row["prompt"]),
                "chosen": [{"role": "assistant", "content": row["chosen"].strip()}],
                "rejected": [{"role": "assistant", "content": row["rejected"].strip()}],
            }
            for row in rows
        ]
    )


def hh_transcript_to_messages(transcript: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:"`` -> user a, assistant b, user c.

    Empty turns are dropped and consecutive turns of one speaker (a few HH transcripts have them) are joined, so
    the roles alternate as chat templates expect.
    """
    parts = _HH_TURN.split(transcript)
    messages: list[dict[str, str]] = []
    for speaker, text in zip(parts[1::2], parts[2::2]):
        role, content = ("user" if speaker == "Human" else "assistant"), text.strip()
        if not content:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    return messages


# ---- converting to the form a stage needs --------------------------------------------------------------------
def _rows(loaded: _Loaded) -> Iterable[tuple[int, Mapping[str, Any]]]:
    return enumerate(loaded.rows)


def _format_of(loaded: _Loaded) -> DataFormat:
    first = loaded.rows[0] if len(loaded.rows) else {}
    return detect_format(first, text_field=loaded.text_field, index=0)


def _to_sft(loaded: _Loaded) -> list[dict[str, Any]]:
    fmt = _format_of(loaded)
    if fmt in (DataFormat.PREFERENCE, DataFormat.PREFERENCE_IMPLICIT):
        out = []
        for i, row in _rows(loaded):
            pair = normalise_preference_row(row, i)
            out.append({"prompt": pair["prompt"], "completion": pair["chosen"]})
        return out
    return [
        normalise_sft_row(
            row,
            i,
            fmt=detect_format(row, text_field=loaded.text_field, index=i),
            text_field=loaded.text_field,
        )
        for i, row in _rows(loaded)
    ]


def _to_preference(loaded: _Loaded) -> list[dict[str, Any]]:
    return [normalise_preference_row(row, i) for i, row in _rows(loaded)]


def _to_prompts(loaded: _Loaded) -> list[dict[str, Any]]:
    fmt = _format_of(loaded)
    out = []
    for i, row in _rows(loaded):
        if fmt in (DataFormat.PREFERENCE, DataFormat.PREFERENCE_IMPLICIT):
            prompt = normalise_preference_row(row, i)["prompt"]
        elif fmt is DataFormat.CONVERSATIONAL:
            messages = normalise_sft_row(row, i, fmt=fmt)["messages"]
            # a conversation without an assistant turn is a prompt as a whole
            last = max((j for j, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
            prompt = messages[:last]
            if not prompt:
                raise DataFormatError(
                    "no message before the last assistant turn to use as a prompt", index=i, field="messages"
                )
        elif fmt in (DataFormat.PROMPT_ONLY, DataFormat.PROMPT_COMPLETION):
            prompt = normalise_prompt_row(row, i)
        else:
            raise DataFormatError(
                f"{fmt.value} rows hold no prompts (need 'prompt', preference pairs or 'messages')",
                index=i,
                field=None,
            )
        out.append({"prompt": prompt})
    return out


_CONVERTERS: dict[str, Callable[[_Loaded], list[dict[str, Any]]]] = {
    "sft": _to_sft,
    "preference": _to_preference,
    "prompts": _to_prompts,
}
