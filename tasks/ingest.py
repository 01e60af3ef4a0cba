"""Ingestion of new preference data: read, validate, store as a content-addressed version, announce.

A version is the SHA-256 of the canonical JSONL of the rows that passed validation, so the same content
ingested twice (even from a differently named file, or JSONL once and Parquet once) maps to the same
version: no second copy, no second `preference-data.arrived` event, no second retraining.

Store layout (``store_dir`` defaults to ``$RLHF_DATASET_STORE`` or ``outputs/datasets/preferences``)::

    <store>/<version>/preferences.jsonl   rows normalised to {"prompt", "chosen", "rejected"[, "margin"]}
    <store>/<version>/manifest.json       version, sha256, rows, source, validation counts
    <store>/<version>/validation.md       the validation report
    <store>/<version>/.announced          present once the event was emitted (exactly once per version)

A version folder is assembled under ``<store>/.staging-*`` and renamed into place in one step, so a
rejected or interrupted ingest never leaves a half-written version behind.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, Field

from tasks.tracking.check import mask_credentials

PREFERENCE_DATA_ARRIVED = "preference-data.arrived"
DATASET_STORE_ENV = "RLHF_DATASET_STORE"
DEFAULT_DATASET_STORE = "outputs/datasets/preferences"
DATA_FILE = "preferences.jsonl"
MANIFEST_FILE = "manifest.json"
ANNOUNCED_MARKER = ".announced"
SUPPORTED_SUFFIXES = (".jsonl", ".json", ".parquet")
_STAGING_PREFIX = ".staging-"
_STALE_STAGING_SECONDS = 24 * 3600
# Stable namespace so the event id of a version is the same on every retry (Prefect dedupes by id).
_EVENT_NAMESPACE = uuid.UUID("6f1c3c2e-9f5e-4d8b-a0f4-2b7f8f6d4e11")


class IngestPolicy(BaseModel):
    """What a preference file must satisfy to become a dataset version (a Prefect parameter form)."""

    max_row_chars: int = Field(
        20_000, gt=0, description="Longest accepted prompt + longer completion, in characters."
    )
    max_invalid_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="Reject the whole file when more rows than this share fail."
    )
    min_rows: int = Field(1, ge=1, description="Reject the file when fewer valid rows remain.")


class PreferenceDataRejected(ValueError):
    """The file failed validation; nothing was written to the store."""


@dataclass
class RowProblem:
    index: int
    kind: str  # parse | schema | empty | identical | duplicate | overlong
    detail: str


@dataclass
class ValidationReport:
    source: str
    total_rows: int
    kept_rows: int
    problems: list[RowProblem] = field(default_factory=list)
    accepted: bool = True
    reason: str = ""

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def to_markdown(self, max_listed: int = 20) -> str:
        verdict = "accepted" if self.accepted else f"**rejected**: {self.reason}"
        lines = [
            f"# Preference data validation: {verdict}",
            "",
            f"Source: `{self.source}`",
            "",
            "| rows read | rows kept | problems |",
            "| --- | --- | --- |",
            f"| {self.total_rows} | {self.kept_rows} | {len(self.problems)} |",
        ]
        if self.problems:
            lines += ["", "| problem | rows |", "| --- | --- |"]
            lines += [f"| {kind} | {n} |" for kind, n in sorted(self.counts().items())]
            lines += ["", "| row | problem | detail |", "| --- | --- | --- |"]
            for p in self.problems[:max_listed]:
                detail = p.detail.replace("|", "/").replace("\n", " ")
                lines.append(f"| {p.index} | {p.kind} | {detail} |")
            if len(self.problems) > max_listed:
                lines.append(f"| ... | | {len(self.problems) - max_listed} more |")
        return "\n".join(lines) + "\n"


@dataclass
class DatasetVersion:
    version: str
    sha256: str
    uri: str  # absolute local path of the JSONL file: what a pipeline config's data source accepts
    rows: int
    created: bool  # False when this content was already in the store
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- reading ---------------------------------------------------------------------------------------


def _local_path(path_or_uri: str) -> Path | None:
    parsed = urlparse(path_or_uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme in ("", None) or len(parsed.scheme) == 1:  # "C:\..." on Windows
        return Path(path_or_uri)
    return None


@dataclass
class UnparsableLine:
    """Stands in for a JSONL line that is not valid JSON, so that row indices stay those of the file."""

    line_no: int
    message: str


def read_preference_file(path_or_uri: str) -> list[Any]:
    """Rows of a JSONL / JSON (list) / Parquet file, local path or any fsspec URI.

    A JSONL line that is not valid JSON becomes an `UnparsableLine` (a problem of that row, not a crash),
    so one bad line does not hide the rest of the report.
    """
    name = Path(urlparse(path_or_uri).path).name.lower()
    compressed = name.endswith(".gz")  # e.g. the Anthropic HH files, harmless-base-test.jsonl.gz
    suffix = Path(name.removesuffix(".gz")).suffix
    if suffix not in SUPPORTED_SUFFIXES:
        raise PreferenceDataRejected(
            f"{path_or_uri}: unsupported file type {suffix or '(none)'!r}; expected one of {SUPPORTED_SUFFIXES} "
            "(optionally .gz)"
        )
    local = _local_path(path_or_uri)
    if local is not None and not local.is_file():
        raise PreferenceDataRejected(f"{path_or_uri}: no such file")
    raw = local.read_bytes() if local is not None else _read_remote(path_or_uri)
    if compressed:
        raw = gzip.decompress(raw)
    if suffix == ".parquet":
        return _read_parquet(raw, path_or_uri)
    if suffix == ".json":
        try:
            rows = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PreferenceDataRejected(f"{path_or_uri}: not valid JSON ({exc})") from exc
        if not isinstance(rows, list):
            raise PreferenceDataRejected(f"{path_or_uri}: a .json file must hold a list of rows")
        return rows
    return _read_jsonl(raw.decode("utf-8", errors="replace"))


def _read_remote(uri: str) -> bytes:
    import fsspec  # a dependency of datasets; only needed for remote URIs

    with fsspec.open(uri, "rb") as fh:
        return fh.read()


def _read_parquet(raw: bytes, source: str) -> list[Any]:
    import io

    import pyarrow.parquet as pq

    try:
        return pq.read_table(io.BytesIO(raw)).to_pylist()
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise PreferenceDataRejected(f"{source}: not a readable Parquet file ({exc})") from exc


def _read_jsonl(text: str) -> list[Any]:
    rows: list[Any] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            rows.append(UnparsableLine(line_no, exc.msg))
    return rows


# --- validation ------------------------------------------------------------------------------------


def _text_of(value: Any) -> str:
    """The text a field carries: a string, or the concatenated contents of a message list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(m.get("content", "")) for m in value if isinstance(m, Mapping))
    return "" if value is None else str(value)


def _canonical(row: Mapping[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _problem_kind(problem: str) -> str:
    """Group the data layer's row errors so the report counts empty and identical pairs apart."""
    if "identical" in problem:
        return "identical"
    if problem.startswith("empty"):
        return "empty"
    return "schema"


def _check_row(index: int, raw: Any, policy: IngestPolicy) -> tuple[dict | None, RowProblem | None]:
    from rlhf_core.data.formats import DataFormatError, normalise_preference_row

    if isinstance(raw, UnparsableLine):
        return None, RowProblem(
            index, "parse", f"row {index} (line {raw.line_no}): not valid JSON ({raw.message})"
        )
    if not isinstance(raw, Mapping):
        return None, RowProblem(index, "schema", f"row {index}: expected an object, got {type(raw).__name__}")
    try:
        row = dict(normalise_preference_row(raw, index))
    except DataFormatError as exc:
        return None, RowProblem(index, _problem_kind(exc.problem), str(exc))
    chosen, rejected, prompt = _text_of(row["chosen"]), _text_of(row["rejected"]), _text_of(row["prompt"])
    if chosen.strip() == rejected.strip():  # differ only in whitespace: still no preference signal
        return None, RowProblem(index, "identical", f"row {index}: 'chosen' and 'rejected' are the same")
    length = len(prompt) + max(len(chosen), len(rejected))
    if length > policy.max_row_chars:
        return None, RowProblem(
            index, "overlong", f"row {index}: {length} characters > max_row_chars={policy.max_row_chars}"
        )
    return row, None


def validate_preference_rows(
    rows: Iterable[Any],
    policy: IngestPolicy,
    *,
    source: str,
) -> tuple[list[dict], ValidationReport]:
    """Normalise rows to explicit-prompt preference pairs and drop the bad ones, counting why.

    Schema (via ``rlhf_core.data.formats``), empty completions, chosen == rejected, exact duplicate pairs
    and over-long rows are dropped; the report says which row and why. The file is rejected as a whole
    when the dropped share exceeds ``policy.max_invalid_fraction`` or fewer than ``min_rows`` remain.
    """
    problems: list[RowProblem] = []
    kept: list[dict] = []
    seen: dict[str, int] = {}
    rows = list(rows)
    for index, raw in enumerate(rows):
        row, problem = _check_row(index, raw, policy)
        if problem is None:
            key = _canonical({k: row[k] for k in ("prompt", "chosen", "rejected")})
            if key in seen:
                problem = RowProblem(index, "duplicate", f"row {index}: same pair as row {seen[key]}")
            else:
                seen[key] = index
                kept.append(row)
        if problem is not None:
            problems.append(problem)
    total = len(rows)
    report = ValidationReport(source=source, total_rows=total, kept_rows=len(kept), problems=problems)
    invalid_fraction = len(problems) / total if total else 1.0
    if total == 0:
        report.accepted, report.reason = False, "the file holds no rows"
    elif invalid_fraction > policy.max_invalid_fraction:
        report.accepted = False
        report.reason = (
            f"{len(problems)} of {total} rows failed ({invalid_fraction:.0%} > "
            f"max_invalid_fraction={policy.max_invalid_fraction:.0%}); first: {problems[0].kind}: "
            f"{problems[0].detail}"
        )
    elif len(kept) < policy.min_rows:
        report.accepted, report.reason = False, f"{len(kept)} valid rows < min_rows={policy.min_rows}"
    return kept, report


# --- versioned store -------------------------------------------------------------------------------


def default_store_dir() -> Path:
    return Path(os.environ.get(DATASET_STORE_ENV) or DEFAULT_DATASET_STORE)


def canonical_jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return "".join(_canonical(r) + "\n" for r in rows).encode("utf-8")


def content_version(data: bytes) -> tuple[str, str]:
    """(version, full sha256): the version is the first 16 hex digits of the content hash."""
    digest = hashlib.sha256(data).hexdigest()
    return digest[:16], digest


def _clean_stale_staging(store: Path) -> None:
    now = time.time()
    for stale in store.glob(_STAGING_PREFIX + "*"):
        try:
            if now - stale.stat().st_mtime > _STALE_STAGING_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
        except FileNotFoundError:
            continue


def write_dataset_version(
    rows: list[dict], report: ValidationReport, store_dir: str | os.PathLike | None = None
) -> DatasetVersion:
    """Store the rows as ``<store>/<version>/`` in one atomic rename; a no-op when the version exists."""
    store = Path(store_dir) if store_dir is not None else default_store_dir()
    store.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(store)
    data = canonical_jsonl(rows)
    version, digest = content_version(data)
    final = (store / version).resolve()
    result = DatasetVersion(
        version=version,
        sha256=digest,
        uri=str(final / DATA_FILE),
        rows=len(rows),
        created=False,
        source=report.source,
    )
    if (final / MANIFEST_FILE).is_file():
        return result
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=store))
    try:
        _write_synced(staging / DATA_FILE, data)
        (staging / "validation.md").write_text(report.to_markdown(), encoding="utf-8")
        manifest = {**result.to_dict(), "validation": report.counts(), "created_at": time.time()}
        manifest.pop("created")
        # The manifest is written last: a version folder with a manifest is complete.
        _write_synced(staging / MANIFEST_FILE, json.dumps(manifest, indent=2).encode("utf-8"))
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / MANIFEST_FILE).is_file():  # not a concurrent ingest of the same content
                raise
            return result
        result.created = True
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def claim_announcement(version_dir: Path) -> bool:
    """True for exactly one caller per version (an O_EXCL marker), so the event is emitted once."""
    try:
        fd = os.open(version_dir / ANNOUNCED_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def release_announcement(version_dir: Path) -> None:
    (version_dir / ANNOUNCED_MARKER).unlink(missing_ok=True)


def arrival_event_fields(dataset: DatasetVersion) -> dict[str, Any]:
    """The `emit_event` arguments announcing a version (resource labels + payload both carry uri/version)."""
    return {
        "event": PREFERENCE_DATA_ARRIVED,
        "resource": {
            "prefect.resource.id": f"rlhf.dataset.preferences.{dataset.version}",
            "prefect.resource.name": f"preferences@{dataset.version}",
            "rlhf.dataset.uri": dataset.uri,
            "rlhf.dataset.version": dataset.version,
        },
        "payload": {
            "uri": dataset.uri,
            "version": dataset.version,
            "sha256": dataset.sha256,
            "rows": dataset.rows,
            "source": mask_credentials(dataset.source),
        },
        "id": uuid.uuid5(_EVENT_NAMESPACE, dataset.sha256),
    }


# --- without Prefect --------------------------------------------------------------------------------


def ingest_file(
    path_or_uri: str, store_dir: str | None = None, policy: IngestPolicy | None = None
) -> tuple[DatasetVersion, ValidationReport]:
    """Read, validate and store one file: the steps of the ``ingest-preferences`` flow without Prefect (no
    artifact, no event), for ``rlhf ingest`` when no Prefect API is configured. Raises `PreferenceDataRejected`
    (nothing written) when the file is rejected."""
    source = mask_credentials(path_or_uri)
    rows = read_preference_file(path_or_uri)
    kept, report = validate_preference_rows(rows, policy or IngestPolicy(), source=source)
    if not report.accepted:
        raise PreferenceDataRejected(f"{source} rejected: {report.reason}")
    return write_dataset_version(kept, report, store_dir), report
