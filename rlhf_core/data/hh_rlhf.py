"""Loader for the bundled real preference data: Anthropic HH-RLHF, harmless-base test split (MIT licence).

2,312 implicit-prompt pairs (``chosen``/``rejected`` strings of ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` turns),
read from ``harmless-base-test.jsonl.gz``. Where to look, in order: the ``path`` argument (a file or a folder),
``$RLHF_HH_RLHF_PATH``, then ``../shared/data/hh-rlhf/`` next to the repository checkout.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
from pathlib import Path
from typing import Literal

from datasets import Dataset

from rlhf_core.data.formats import DataFormatError, normalise_preference_row

logger = logging.getLogger(__name__)

HH_FILE = "harmless-base-test.jsonl.gz"
HH_ENV = "RLHF_HH_RLHF_PATH"


def default_hh_rlhf_path() -> Path:
    """``<checkout>/../shared/data/hh-rlhf/harmless-base-test.jsonl.gz`` (or ``$RLHF_HH_RLHF_PATH``)."""
    if os.environ.get(HH_ENV):
        return _as_file(Path(os.environ[HH_ENV]))
    checkout = Path(__file__).resolve().parents[2]
    return checkout.parent / "shared" / "data" / "hh-rlhf" / HH_FILE


def _as_file(path: Path) -> Path:
    return path / HH_FILE if path.is_dir() else path


def _read_rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_hh_rlhf(
    path: str | os.PathLike | None = None,
    *,
    split: Literal["all", "train", "test"] = "all",
    test_fraction: float = 0.1,
    limit: int | None = None,
    explicit_prompt: bool = False,
    skip_invalid: bool = True,
    seed: int = 0,
) -> Dataset:
    """The HH-RLHF pairs as a ``datasets.Dataset``.

    ``explicit_prompt=False`` gives the raw ``chosen``/``rejected`` columns (implicit prompt); ``True`` gives
    ``prompt``/``chosen``/``rejected`` via :func:`~rlhf_core.data.formats.extract_prompt` (prompt ends with
    ``"\\n\\nAssistant:"``, completions start with the space after it). Every pair of the bundled file is valid
    (4 of them prefer an empty answer: an empty completion, the end-of-text token alone). ``skip_invalid`` drops
    pairs that fail validation in other files, logging their indices; ``False`` raises :class:`DataFormatError`
    on the first. ``split`` picks a deterministic ``test_fraction`` slice (from
    ``seed``) or the rest; ``limit`` keeps the first rows after that.
    """
    file = _as_file(Path(path)) if path is not None else default_hh_rlhf_path()
    if not file.is_file():
        raise FileNotFoundError(
            f"HH-RLHF data not found at {file}. Pass path=, set ${HH_ENV}, or place {HH_FILE} in "
            "../shared/data/hh-rlhf/ next to the repository checkout."
        )
    rows, bad = [], []
    for index, raw in enumerate(_read_rows(file)):
        try:
            row = normalise_preference_row(raw, index)
        except DataFormatError:
            if not skip_invalid:
                raise
            bad.append(index)
            continue
        rows.append(row if explicit_prompt else {"chosen": raw["chosen"], "rejected": raw["rejected"]})
    if bad:
        logger.warning("HH-RLHF: skipped %d invalid pairs (rows %s)", len(bad), bad[:20])
    rows = _split(rows, split, test_fraction, seed)
    if limit is not None:
        rows = rows[:limit]
    logger.info("HH-RLHF: %d pairs from %s (split %s)", len(rows), file, split)
    return Dataset.from_list(rows)


def _split(rows: list[dict], split: str, test_fraction: float, seed: int) -> list[dict]:
    if split == "all":
        return rows
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(rows) * test_fraction))
    chosen = sorted(order[:n_test]) if split == "test" else sorted(order[n_test:])
    return [rows[i] for i in chosen]
