"""Remembered passes of slow, deterministic config checks, so `rlhf validate` and `rlhf run` do not import torch
and transformers again to re-check what already passed.

Checking a stage's ``args`` means building its trainer config (a `transformers.TrainingArguments` subclass): that
import alone costs 4-5 CPU seconds (torch, transformers, peft), more than the rest of `rlhf validate`; loading a
tokenizer costs ~3 (AutoTokenizer imports torch). A check that passed is recorded under the digest of its inputs,
with the files it read (path, size, mtime) and a *fingerprint* of everything else that decides its outcome: the
Python and package versions, the source files of ``rlhf_core`` and ``tasks``, the host and its GPU devices, and the
environment variables the checks read (distributed launchers, devices, hub settings). A change to any of them makes
the record stale and the check runs again. Failures are never recorded: they are re-checked after every fix.

``RLHF_CHECK_CACHE``: the record file (default: ``config-checks.json`` in ``$RLHF_CACHE``, else
``~/.cache/rlhf_toolkit``); ``off`` turns the records off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["checked", "record_file", "reused", "user_cache_dir"]

_ROOT = Path(__file__).resolve().parents[1]
_PACKAGES = ("torch", "transformers", "accelerate", "peft", "pydantic", "tokenizers", "datasets")
_ENV_PREFIXES = ("ACCELERATE_", "CUDA_", "DEEPSPEED", "FSDP_", "HF_", "HIP_", "MASTER_", "PYTORCH_", "TORCH_",
                 "TRANSFORMERS_", "LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")  # fmt: skip
_MAX_RECORDS = 512
_reused: list[str] = []


def record_file() -> Path | None:
    """Where passes are recorded; None when ``RLHF_CHECK_CACHE=off``."""
    env = os.environ.get("RLHF_CHECK_CACHE")
    if env and env.lower() in ("off", "0", "false", "no"):
        return None
    return Path(env).expanduser() if env else user_cache_dir() / "config-checks.json"


def user_cache_dir() -> Path:
    """``$RLHF_CACHE``, else ``~/.cache/rlhf_toolkit``: `rlhf_core.models.tiny.default_cache_dir`'s rule, not
    imported from there because that module imports torch."""
    cache = os.environ.get("RLHF_CACHE")
    return Path(cache).expanduser() if cache else Path.home() / ".cache" / "rlhf_toolkit"


def reused() -> list[str]:
    """The checks of this process answered from a record (their ``what``), in order."""
    return list(_reused)


@functools.cache
def _code_fingerprint() -> str:
    from importlib import metadata

    versions = {}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    sources = sorted(
        (str(p.relative_to(_ROOT)), p.stat().st_mtime_ns, p.stat().st_size)
        for package in ("rlhf_core", "tasks")
        for p in (_ROOT / package).rglob("*.py")
    )
    devices = sorted(str(p) for pattern in ("nvidia*", "kfd") for p in Path("/dev").glob(pattern))
    return _digest([sys.version, sys.executable, versions, sources, os.uname().nodename, devices])


def _fingerprint() -> str:
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES))
    return _digest([_code_fingerprint(), env])


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _file_states(files: Iterable[str | Path]) -> list[list[Any]]:
    states = []
    for file in sorted({str(Path(f).resolve()) for f in files}):
        stat = os.stat(file)
        states.append([file, stat.st_size, stat.st_mtime_ns])
    return states


def _still_true(record: dict[str, Any]) -> bool:
    if record.get("fingerprint") != _fingerprint():
        return False
    try:
        return _file_states(f for f, _, _ in record["files"]) == record["files"]
    except OSError:  # a file it read is gone
        return False


def _load(file: Path) -> dict[str, Any]:
    try:
        records = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def _store(file: Path, key: str, record: dict[str, Any]) -> None:
    """Read-merge-replace: concurrent writers may drop each other's new record (it is re-checked next time), never
    leave a torn file."""
    with contextlib.suppress(OSError):
        file.parent.mkdir(parents=True, exist_ok=True)
        records = _load(file)
        records[key] = record
        newest = sorted(records.items(), key=lambda kv: kv[1].get("at", 0))[-_MAX_RECORDS:]
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dict(newest)), encoding="utf-8")
        os.replace(tmp, file)


def _replay(caught: Iterable[list[Any]]) -> None:
    """Show recorded warnings again, from where they were first raised (the same lines as without a record)."""
    import builtins

    for category, message, filename, lineno in caught:
        kind = getattr(builtins, category, UserWarning)
        kind = kind if isinstance(kind, type) and issubclass(kind, Warning) else UserWarning
        warnings.warn_explicit(message, kind, filename, lineno)


def checked(what: str, inputs: Any, check: Callable[[], tuple[Any, Iterable[str | Path] | None]]) -> Any:
    """``check()``'s value, from the record of an earlier pass with the same inputs, files and fingerprint when
    there is one; ``what`` names the check (e.g. "sft args"). ``check`` returns (value, the files it read, or None when what it read cannot be pinned down:
    then nothing is recorded). Its warnings are recorded too and shown again on a reuse; what it raises is not."""
    file = record_file()
    try:
        key = f"{what}:{_digest(inputs)}"
    except (TypeError, ValueError):  # inputs that are not plain data: no key that identifies them
        file = None
    if file is not None:
        record = _load(file).get(key)
        if record is not None and _still_true(record):
            _reused.append(what)
            _replay(record["warnings"])
            return record["value"]
    with warnings.catch_warnings(record=True) as caught:
        value, files = check()
    seen = [[type(w.message).__name__, str(w.message), w.filename, w.lineno] for w in caught]
    _replay(seen)
    if file is not None and files is not None:
        # Not recorded: a value that is not plain data, or a file that is gone already.
        with contextlib.suppress(TypeError, ValueError, OSError):
            record = {"value": value, "warnings": seen, "files": _file_states(files),
                      "fingerprint": _fingerprint(), "at": time.time()}  # fmt: skip
            json.dumps(record)
            _store(file, key, record)
    return value
