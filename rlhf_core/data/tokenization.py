"""Tokenisation, one path per format, with a documented policy for over-long rows.

Special tokens. String data is tokenised with ``add_special_tokens=False`` and the special tokens are placed
by hand, from what the tokenizer itself would add (probed once, see :func:`special_tokens`): the tokenizer's own
prefix (``<bos>`` for Llama-style tokenizers, nothing for GPT-2) before a text or prompt, and ``eos`` after a
text or completion (never twice: text that already starts/ends with them is left alone). Message lists are
rendered by the tokenizer's chat template only (the template decides about bos and end-of-turn tokens; nothing is
added around it).

Conversational masks. With ``{% generation %}`` markers in the template the assistant mask comes from
``apply_chat_template(return_assistant_tokens_mask=True)``. Without them it is computed by rendering prefixes: the
tokens of assistant turn ``k`` are those between ``render(messages[:k], add_generation_prompt=True)`` and
``render(messages[:k+1])``, up to and including the turn's last eos (what the template appends after the
end-of-turn token, e.g. a newline, is not trained on, matching the marker-based mask).

Conversational completions (preference, prompt-completion) are ``render(prompt + completion)`` minus
``render(prompt, add_generation_prompt=True)``; a template for which the prompt's rendering is not a prefix of the
full rendering raises :class:`DataFormatError` (never a silent misalignment). Preference completions are cut right
after their last eos (the template's trailing newline is dropped), so they end with eos as string completions do.

Over-long rows (``overlong=``): ``"truncate"`` (default) keeps the start of SFT rows; for preference rows the
prompt keeps its end (and its leading bos) and the completions keep their start, the prompt giving up tokens
first down to half of ``max_length``. ``"drop"`` removes the row. SFT rows left with no loss token by truncation
are dropped too. Every call counts these in an :class:`OverlongReport` and logs it.

Rows with nothing to learn: an SFT row without a single loss token (empty text, a conversation without an
assistant turn under ``assistant_only_loss``) is dropped, counted (``OverlongReport.no_loss``) and logged, never
an error. An empty preference or prompt-completion answer is the end-of-text token alone (it is learnable).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from datasets import Dataset

from rlhf_core.data.formats import (
    DataFormat,
    DataFormatError,
    detect_format,
    normalise_preference_row,
    normalise_prompt_row,
    normalise_sft_row,
)
from rlhf_core.models.pad_token import resolve_pad_token_id  # noqa: F401 - the one pad-token policy, re-exported

logger = logging.getLogger(__name__)

Overlong = Literal["truncate", "drop"]
_FIT, _TRUNCATED, _DROPPED, _NO_LOSS = 0, 1, 2, 3
_STATUS = "__overlong_status__"
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
_SFT_FORMATS = (DataFormat.LANGUAGE_MODELING, DataFormat.PROMPT_COMPLETION, DataFormat.CONVERSATIONAL)


@dataclass
class OverlongReport:
    """How many rows were longer than the limit, and what happened to them; and the rows with no loss token."""

    total: int = 0
    truncated: int = 0
    dropped: int = 0
    max_length: int | None = None
    policy: str = "truncate"
    no_loss: int = (
        0  # SFT rows without a single loss token before truncation (dropped, not counted in dropped)
    )

    def log(self, log: logging.Logger | None = None, what: str = "rows") -> None:
        log = log or logger
        if self.no_loss:
            log.warning(
                "%s: dropped %d of %d with no loss token (nothing to learn)", what, self.no_loss, self.total
            )
        if self.truncated or self.dropped:
            log.warning(
                "%s: %d of %d longer than max_length=%s (policy %r): %d truncated, %d dropped",
                what, self.truncated + self.dropped, self.total, self.max_length, self.policy,
                self.truncated, self.dropped,
            )  # fmt: skip
        else:
            log.info("%s: all %d within max_length=%s", what, self.total, self.max_length)


@dataclass(frozen=True)
class SpecialTokens:
    """Where special tokens go around plain text for one tokenizer."""

    prefix: tuple[int, ...]  # what the tokenizer puts before a text (e.g. bos), placed before texts/prompts
    end: tuple[int, ...]  # appended to texts and completions: eos, or the tokenizer's own suffix without one
    eos_id: int | None
    bos_id: int | None = None


def special_tokens(tokenizer: Any) -> SpecialTokens:
    """Probe what ``tokenizer(text)`` adds around a text, so string paths add exactly that (once)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = next((k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain), 0)
    prefix, suffix = tuple(full[:start]), tuple(full[start + len(plain) :])
    eos = tokenizer.eos_token_id
    if eos is None:
        logger.info(
            "tokenizer has no eos token: completions end with its own suffix %s instead", list(suffix)
        )
    end = (eos,) if eos is not None else suffix
    return SpecialTokens(prefix=prefix, end=end, eos_id=eos, bos_id=tokenizer.bos_token_id)


# ---------------------------------------------------------------------------------------------- string paths


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _with_prefix(ids: list[int], sp: SpecialTokens) -> list[int]:
    n = len(sp.prefix)
    return ids if n == 0 or tuple(ids[:n]) == sp.prefix else list(sp.prefix) + ids


def _with_end(ids: list[int], sp: SpecialTokens) -> list[int]:
    n = len(sp.end)
    return ids if n == 0 or tuple(ids[-n:]) == sp.end else ids + list(sp.end)


# ------------------------------------------------------------------------------------------------ chat paths


def has_generation_markers(tokenizer: Any) -> bool:
    template = _chat_template(tokenizer)
    return bool(_GENERATION_TAG.search(template))


def _chat_template(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):
        template = template.get("default")
    if not template:
        raise ValueError(
            "conversational data needs a tokenizer with a chat template (tokenizer.chat_template is not set)"
        )
    return template


def render_chat(
    tokenizer: Any, messages: Sequence[Mapping], *, add_generation_prompt: bool = False
) -> list[int]:
    _chat_template(tokenizer)
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )
    return list(out["input_ids"])


def _check_prefix(prefix: list[int], full: list[int], *, index: int, field: str) -> int:
    if full[: len(prefix)] != prefix:
        raise DataFormatError(
            "the chat template renders the prompt differently once the completion follows it, so prompt ids + "
            "completion ids would not equal the full rendering; use a prefix-stable template",
            index=index,
            field=field,
        )
    return len(prefix)


def _end_of_last_eos(ids: Sequence[int], start: int, stop: int, eos: int | None) -> int:
    """``stop`` moved back to just after the last eos in ``ids[start:stop]`` (unchanged without one)."""
    for k in range(stop - 1, start - 1, -1):
        if ids[k] == eos:
            return k + 1
    return stop


def assistant_tokens(tokenizer: Any, messages: Sequence[Mapping], *, index: int, sp: SpecialTokens):
    """``(ids, mask)`` of a rendered conversation, mask 1 on the assistant turns' tokens."""
    if has_generation_markers(tokenizer):
        out = tokenizer.apply_chat_template(
            list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        return list(out["input_ids"]), [int(m) for m in out["assistant_masks"]]
    ids = render_chat(tokenizer, messages)
    mask = [0] * len(ids)
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        field = f"messages[{k}]"
        start = _check_prefix(
            render_chat(tokenizer, messages[:k], add_generation_prompt=True), ids, index=index, field=field
        )
        stop = _check_prefix(render_chat(tokenizer, messages[: k + 1]), ids, index=index, field=field)
        stop = _end_of_last_eos(ids, start, stop, sp.eos_id)
        mask[start:stop] = [1] * (stop - start)
    return ids, mask


def chat_completion(
    tokenizer: Any, prompt_ids: list[int], prompt: list, completion: list, *, index: int, field: str
) -> list[int]:
    """The tokens the template adds after ``prompt`` (rendered with the generation prompt) for ``completion``."""
    full = render_chat(tokenizer, list(prompt) + list(completion))
    return full[_check_prefix(prompt_ids, full, index=index, field=field) :]


# ------------------------------------------------------------------------------------------------- encoders


class _SFTEncoder:
    def __init__(
        self, tokenizer: Any, fmt: DataFormat, text_field: str, completion_only: bool, assistant_only: bool
    ):
        self.tokenizer, self.fmt, self.text_field = tokenizer, fmt, text_field
        self.completion_only, self.assistant_only = completion_only, assistant_only
        self.sp = special_tokens(tokenizer)

    def __call__(self, example: Mapping[str, Any], index: int) -> tuple[list[int], list[int]]:
        row = normalise_sft_row(example, index, fmt=self.fmt, text_field=self.text_field)
        tok, sp = self.tokenizer, self.sp
        if self.fmt is DataFormat.LANGUAGE_MODELING:
            ids = _with_end(_with_prefix(_encode(tok, row["text"]), sp), sp)
            return ids, [int(bool(row["text"].strip()))] * len(ids)  # empty text: nothing to learn
        if self.fmt is DataFormat.CONVERSATIONAL:
            if self.assistant_only:
                return assistant_tokens(tok, row["messages"], index=index, sp=sp)
            ids = render_chat(tok, row["messages"])
            return ids, [1] * len(ids)
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str):
            prompt_ids = _with_prefix(_encode(tok, prompt), sp)
            completion_ids = _with_end(_encode(tok, completion), sp)
            loss_len = len(completion_ids)
        else:
            prompt_ids = render_chat(tok, prompt, add_generation_prompt=True)
            completion_ids = chat_completion(
                tok, prompt_ids, prompt, completion, index=index, field="completion"
            )
            loss_len = _end_of_last_eos(completion_ids, 0, len(completion_ids), sp.eos_id)
        ids = prompt_ids + completion_ids
        if not self.completion_only:
            return ids, [1] * len(ids)
        return ids, [0] * len(prompt_ids) + [1] * loss_len + [0] * (len(completion_ids) - loss_len)


class _PreferenceEncoder:
    def __init__(self, tokenizer: Any):
        self.tokenizer, self.sp = tokenizer, special_tokens(tokenizer)

    def __call__(self, example: Mapping[str, Any], index: int) -> dict[str, Any]:
        row = normalise_preference_row(example, index)
        tok, sp = self.tokenizer, self.sp
        prompt = row["prompt"]
        if isinstance(prompt, str):
            out = {"prompt_input_ids": _with_prefix(_encode(tok, prompt), sp)}
            for side in ("chosen", "rejected"):
                out[f"{side}_input_ids"] = _with_end(_encode(tok, row[side]), sp)
        else:
            prompt_ids = render_chat(tok, prompt, add_generation_prompt=True)
            out = {"prompt_input_ids": prompt_ids}
            for side in ("chosen", "rejected"):
                ids = chat_completion(tok, prompt_ids, prompt, row[side], index=index, field=side)
                out[f"{side}_input_ids"] = ids[: _end_of_last_eos(ids, 0, len(ids), sp.eos_id)]
        if "margin" in example:  # every row of a dataset with the column keeps it (None: no margin)
            out["margin"] = row.get("margin")
        return out


def encode_prompt(tokenizer: Any, prompt: Any, sp: SpecialTokens) -> list[int]:
    """Prompt ids for generation: the chat template with its generation prompt, or prefix + text."""
    if isinstance(prompt, str):
        return _with_prefix(_encode(tokenizer, prompt), sp)
    return render_chat(tokenizer, prompt, add_generation_prompt=True)


# ----------------------------------------------------------------------------------------------- truncation


def _check_policy(overlong: str) -> None:
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")


def keep_end(ids: list[int], n: int, sp: SpecialTokens) -> list[int]:
    """The last ``n`` tokens of ``ids``, keeping its leading special prefix (the tokenizer's or a template's bos)."""
    if len(ids) <= n:
        return ids
    if sp.prefix and tuple(ids[: len(sp.prefix)]) == sp.prefix:
        head = list(sp.prefix)
    else:
        head = ids[:1] if sp.bos_id is not None and ids[:1] == [sp.bos_id] else []
    if len(head) >= n:
        head = []
    return head + ids[len(ids) - (n - len(head)) :]


def _fit_sft(
    ids: list[int], mask: list[int], max_length: int | None, overlong: str, keep: str = "keep_start"
):
    if not any(mask):
        return _NO_LOSS, ids, mask
    if max_length is None or len(ids) <= max_length:
        status = _FIT
    elif overlong == "drop":
        return _DROPPED, ids, mask
    elif keep == "keep_end":
        status, ids, mask = _TRUNCATED, ids[-max_length:], mask[-max_length:]
    else:
        status, ids, mask = _TRUNCATED, ids[:max_length], mask[:max_length]
    return (status if any(mask) else _DROPPED), ids, mask


def _fit_preference(
    row: dict, max_length: int | None, max_prompt_length: int | None, overlong: str, sp
) -> int:
    prompt, chosen, rejected = row["prompt_input_ids"], row["chosen_input_ids"], row["rejected_input_ids"]
    longest = max(len(chosen), len(rejected))
    too_long_prompt = max_prompt_length is not None and len(prompt) > max_prompt_length
    too_long = max_length is not None and len(prompt) + longest > max_length
    if not (too_long_prompt or too_long):
        return _FIT
    if overlong == "drop":
        return _DROPPED
    if too_long_prompt:
        prompt = keep_end(prompt, max_prompt_length, sp)
    if max_length is not None and len(prompt) + longest > max_length:
        prompt = keep_end(prompt, max(max_length - longest, min(len(prompt), max_length // 2)), sp)
        room = max_length - len(prompt)
        chosen, rejected = chosen[:room], rejected[:room]
    row.update(prompt_input_ids=prompt, chosen_input_ids=chosen, rejected_input_ids=rejected)
    return _TRUNCATED


# ------------------------------------------------------------------------------------------------ public API


def _as_dataset(dataset: Dataset | Sequence[Mapping]) -> Dataset:
    if isinstance(dataset, Dataset):
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        return dataset
    if isinstance(dataset, Sequence) and not isinstance(dataset, str):
        rows = [dict(row) for row in dataset]
        # Dataset.from_list takes its columns from the first row and would silently drop other rows' extra keys
        for index, row in enumerate(rows[1:], start=1):
            if row.keys() != rows[0].keys():
                odd = sorted(row.keys() ^ rows[0].keys())
                raise DataFormatError(f"columns differ from row 0's ({odd})", index=index, field=odd[0])
        return _as_dataset(Dataset.from_list(rows))
    raise TypeError(f"expected a datasets.Dataset or a list of rows, got {type(dataset).__name__}")


def _tokenize_rows(
    dataset: Dataset,
    tokenize_row: Callable[[dict, int], dict],
    *,
    remove_columns: list[str],
    num_proc: int | None,
    desc: str,
    max_length: int | None,
    policy: str,
    what: str,
) -> tuple[Dataset, OverlongReport]:
    """``dataset.map(tokenize_row)`` (each row with its index), then the rows whose status says so dropped and the
    counts of the length policy reported (logged as `what`); the status column is removed."""
    tokenized = dataset.map(
        tokenize_row, with_indices=True, remove_columns=remove_columns, num_proc=num_proc, desc=desc
    )
    statuses = tokenized.data.column(_STATUS).to_pylist()
    report = OverlongReport(
        total=len(statuses),
        truncated=statuses.count(_TRUNCATED),
        dropped=statuses.count(_DROPPED),
        max_length=max_length,
        policy=policy,
        no_loss=statuses.count(_NO_LOSS),
    )
    if report.dropped or report.no_loss:
        tokenized = tokenized.filter(
            lambda status: [s not in (_DROPPED, _NO_LOSS) for s in status],
            input_columns=[_STATUS],
            batched=True,
        )
    report.log(logger, what)
    return tokenized.remove_columns(_STATUS), report


def tokenize_sft(
    dataset: Dataset | Sequence[Mapping],
    tokenizer: Any,
    *,
    text_field: str = "text",
    max_length: int | None = 1024,
    overlong: Overlong = "truncate",
    truncation_mode: str = "keep_start",
    completion_only_loss: bool = True,
    assistant_only_loss: bool = True,
    num_proc: int | None = None,
) -> tuple[Dataset, OverlongReport]:
    """Tokenise SFT data (language modelling, prompt-completion or conversational).

    Returns ``Dataset[input_ids, completion_mask]`` (mask 1 where the loss applies: every token of a text, the
    completion of a prompt-completion row when ``completion_only_loss``, the assistant turns of a conversation when
    ``assistant_only_loss``) and the :class:`OverlongReport`. Over-long rows keep their start (``"truncate"``;
    their end with ``truncation_mode="keep_end"``) or are removed (``"drop"``).
    """
    _check_policy(overlong)
    if truncation_mode not in ("keep_start", "keep_end"):
        raise ValueError(f"truncation_mode must be 'keep_start' or 'keep_end', got {truncation_mode!r}")
    dataset = _as_dataset(dataset)
    fmt = detect_format(dict.fromkeys(dataset.column_names), text_field=text_field)
    if fmt not in _SFT_FORMATS:
        raise DataFormatError(
            f"SFT takes language modelling ({text_field!r}), prompt-completion or 'messages' data, not {fmt.value}",
            field=text_field,
        )
    encode = _SFTEncoder(tokenizer, fmt, text_field, completion_only_loss, assistant_only_loss)

    def tokenize_row(example: dict, index: int) -> dict:
        ids, mask = encode(example, index)
        status, ids, mask = _fit_sft(ids, mask, max_length, overlong, truncation_mode)
        return {"input_ids": ids, "completion_mask": mask, _STATUS: status}

    return _tokenize_rows(dataset, tokenize_row, remove_columns=dataset.column_names, num_proc=num_proc,
                          desc=f"Tokenising SFT rows ({fmt.value})", max_length=max_length, policy=overlong,
                          what="SFT rows")  # fmt: skip


def tokenize_preference(
    dataset: Dataset | Sequence[Mapping],
    tokenizer: Any,
    *,
    max_length: int | None = 1024,
    max_prompt_length: int | None = None,
    overlong: Overlong = "truncate",
    num_proc: int | None = None,
) -> tuple[Dataset, OverlongReport]:
    """Tokenise preference data (explicit or implicit prompt; strings or message lists).

    Returns ``Dataset[prompt_input_ids, chosen_input_ids, rejected_input_ids(, margin)]`` where the chosen and
    rejected ids are the completion tokens only, ending with eos (see the module docstring), and the report.
    """
    _check_policy(overlong)
    dataset = _as_dataset(dataset)
    fmt = detect_format(dict.fromkeys(dataset.column_names))
    if fmt not in (DataFormat.PREFERENCE, DataFormat.PREFERENCE_IMPLICIT):
        raise DataFormatError(
            f"preference data needs 'chosen' and 'rejected' columns, not {fmt.value}", field="chosen"
        )
    encode, sp = _PreferenceEncoder(tokenizer), special_tokens(tokenizer)

    def tokenize_row(example: dict, index: int) -> dict:
        row = encode(example, index)
        row[_STATUS] = _fit_preference(row, max_length, max_prompt_length, overlong, sp)
        return row

    return _tokenize_rows(dataset, tokenize_row, remove_columns=dataset.column_names, num_proc=num_proc,
                          desc=f"Tokenising preference pairs ({fmt.value})", max_length=max_length,
                          policy=overlong, what="preference pairs")  # fmt: skip


def tokenize_prompts(
    dataset: Dataset | Sequence[Mapping],
    tokenizer: Any,
    *,
    max_prompt_length: int | None = None,
    overlong: Overlong = "truncate",
    num_proc: int | None = None,
) -> Dataset:
    """Tokenise prompts for generation: adds ``input_ids`` and keeps the other columns (e.g. ``prompt`` for a judge).

    Message lists get the chat template with its generation prompt. Over-long prompts keep their end (and bos).
    """
    _check_policy(overlong)
    dataset = _as_dataset(dataset)
    sp = special_tokens(tokenizer)

    def tokenize_row(example: dict, index: int) -> dict:
        ids = encode_prompt(tokenizer, normalise_prompt_row(example, index), sp)
        if max_prompt_length is None or len(ids) <= max_prompt_length:
            return {"input_ids": ids, _STATUS: _FIT}
        if overlong == "drop":
            return {"input_ids": ids, _STATUS: _DROPPED}
        return {"input_ids": keep_end(ids, max_prompt_length, sp), _STATUS: _TRUNCATED}

    columns = [c for c in ("input_ids", _STATUS) if c in dataset.column_names]
    return _tokenize_rows(dataset, tokenize_row, remove_columns=columns, num_proc=num_proc,
                          desc="Tokenising prompts", max_length=max_prompt_length, policy=overlong,
                          what="prompts")[0]  # fmt: skip
