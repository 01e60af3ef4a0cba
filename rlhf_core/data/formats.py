"""Dataset formats: detection, row validation and normalisation (the formats TRL users already have).

| format              | columns                                                     |
| ------------------- | ----------------------------------------------------------- |
| language_modeling   | ``text`` (or the column named by ``text_field``)            |
| prompt_completion   | ``prompt``, ``completion`` (strings or message lists)       |
| conversational      | ``messages`` (list of ``{"role", "content"}``)              |
| preference          | ``prompt``, ``chosen``, ``rejected`` (strings or messages)  |
| preference_implicit | ``chosen``, ``rejected`` sharing a prefix (Anthropic HH)    |
| prompt_only         | ``prompt``                                                  |

Every problem with a row raises :class:`DataFormatError`, whose message names the row index and the field,
e.g. ``row 12, field 'messages[3].role': unknown role 'bot'``.

Real datasets are taken as they are: an empty (or whitespace-only) answer is a valid completion - it becomes the
end-of-text token alone (Anthropic HH has pairs whose preferred answer is empty). Columns no format reads are
ignored, whatever their type. UltraFeedback-style rows (a ``prompt`` string with ``chosen``/``rejected`` message
lists that repeat the user turn) become conversational pairs whose prompt is the messages both sides share.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from enum import Enum
from numbers import Real
from typing import Any

HH_ASSISTANT = "\n\nAssistant:"
ROLES = ("system", "user", "assistant", "tool")

Prompt = str | list[dict[str, Any]]


class DataFormat(str, Enum):
    LANGUAGE_MODELING = "language_modeling"
    PROMPT_COMPLETION = "prompt_completion"
    CONVERSATIONAL = "conversational"
    PREFERENCE = "preference"
    PREFERENCE_IMPLICIT = "preference_implicit"
    PROMPT_ONLY = "prompt_only"


class DataFormatError(ValueError):
    """A dataset row that fits no format or holds a bad value. ``index`` and ``field`` say where."""

    def __init__(self, problem: str, *, index: int | None = None, field: str | None = None):
        self.problem, self.index, self.field = problem, index, field
        where = ", ".join(
            part
            for part in (f"row {index}" if index is not None else "", f"field {field!r}" if field else "")
            if part
        )
        super().__init__(f"{where}: {problem}" if where else problem)

    def __reduce__(
        self,
    ):  # keeps index/field when datasets.map(num_proc>1) pickles the error across processes
        return functools.partial(DataFormatError, index=self.index, field=self.field), (self.problem,)

    def at(self, index: int) -> DataFormatError:
        """The same error, located at row ``index`` (for helpers that do not know the row)."""
        return DataFormatError(self.problem, index=index, field=self.field)


def detect_format(
    example: Mapping[str, Any], *, text_field: str = "text", index: int | None = None
) -> DataFormat:
    """Which format a row (or a dataset, from its first row / column names) is in."""
    keys = set(example)
    if "chosen" in keys or "rejected" in keys:
        for needed in ("chosen", "rejected"):
            if needed not in keys:
                raise DataFormatError(
                    "preference rows need both 'chosen' and 'rejected' columns", index=index, field=needed
                )
        return DataFormat.PREFERENCE if "prompt" in keys else DataFormat.PREFERENCE_IMPLICIT
    if "messages" in keys:
        return DataFormat.CONVERSATIONAL
    if "completion" in keys:
        if "prompt" not in keys:
            raise DataFormatError(
                "a 'completion' column needs a 'prompt' column", index=index, field="prompt"
            )
        return DataFormat.PROMPT_COMPLETION
    if text_field in keys:
        return DataFormat.LANGUAGE_MODELING
    if "prompt" in keys:
        return DataFormat.PROMPT_ONLY
    raise DataFormatError(
        f"fits no format: columns {sorted(keys)}; expected {text_field!r} (language modelling), 'messages' "
        "(conversational), 'prompt'+'completion', 'prompt'+'chosen'+'rejected', 'chosen'+'rejected' or 'prompt'",
        index=index,
        field=text_field,
    )


def is_conversational(value: Any) -> bool:
    """True for a message list (a list whose items are mappings)."""
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and all(isinstance(m, Mapping) for m in value)
    )


def require_string(
    value: Any, *, index: int | None, field: str, allow_empty: bool = False, what: str = "text"
) -> str:
    if value is None:
        raise DataFormatError("missing value (None)", index=index, field=field)
    if not isinstance(value, str):
        raise DataFormatError(f"expected a string, got {type(value).__name__}", index=index, field=field)
    if not allow_empty and not value.strip():
        raise DataFormatError(f"empty {what} (nothing but whitespace)", index=index, field=field)
    return value


def validate_messages(
    messages: Any,
    *,
    index: int | None,
    field: str,
    previous_role: str | None = None,
    first_role: str | None = None,
) -> list[dict[str, Any]]:
    """Check a message list: mappings with a known ``role`` and a string ``content``, in a sensible order.

    Order rules: ``system`` only first; no two ``user`` or two ``assistant`` turns in a row; ``tool`` only after
    ``assistant`` or ``tool``; a conversation opens with ``system`` or ``user``. ``previous_role`` continues the
    checks from a prompt into its completion; ``first_role`` forces the first message's role (completions start
    with ``assistant``). Any message's content may be empty (an empty answer is a valid answer: the template's
    end-of-turn tokens alone).
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        raise DataFormatError(
            f"expected a list of messages, got {type(messages).__name__}", index=index, field=field
        )
    if len(messages) == 0:
        raise DataFormatError("empty message list", index=index, field=field)
    previous = previous_role
    for k, message in enumerate(messages):
        where = f"{field}[{k}]"
        if not isinstance(message, Mapping):
            raise DataFormatError(
                f"expected a message mapping, got {type(message).__name__}", index=index, field=where
            )
        role = message.get("role")
        if role not in ROLES:
            problem = "missing role" if role is None else f"unknown role {role!r} (expected one of {ROLES})"
            raise DataFormatError(problem, index=index, field=f"{where}.role")
        content = message.get("content")
        if content is None:
            raise DataFormatError("missing content", index=index, field=f"{where}.content")
        require_string(content, index=index, field=f"{where}.content", allow_empty=True)
        _check_role_order(role, previous, first_role if k == 0 else None, index=index, field=f"{where}.role")
        previous = role
    return [dict(m) for m in messages]


def _check_role_order(
    role: str, previous: str | None, forced: str | None, *, index: int | None, field: str
) -> None:
    if forced is not None and role != forced:
        problem = (
            f"role {role!r} where {forced!r} is expected (a completion starts with an assistant message)"
        )
    elif role == "system" and previous is not None:
        problem = "a 'system' message may only come first"
    elif previous is None and role not in ("system", "user"):
        problem = f"a conversation must open with 'system' or 'user', not {role!r}"
    elif role == previous and role in ("user", "assistant"):
        problem = f"two {role!r} messages in a row"
    elif role == "tool" and previous not in ("assistant", "tool"):
        problem = f"a 'tool' message must follow 'assistant' or 'tool', not {previous!r}"
    else:
        return
    raise DataFormatError(f"bad role order: {problem}", index=index, field=field)


def _check_margin(value: Any, *, index: int | None) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise DataFormatError(f"expected a number, got {type(value).__name__}", index=index, field="margin")
    return float(value)


def extract_prompt(
    chosen: Prompt, rejected: Prompt, *, index: int | None = None
) -> tuple[Prompt, Prompt, Prompt]:
    """Split an implicit-prompt pair into ``(prompt, chosen_completion, rejected_completion)``.

    Strings: the longest common prefix, cut back to the end of its last ``"\\n\\nAssistant:"`` (Anthropic HH) or,
    without one, to the start of its last whitespace run, so both completions start cleanly (with the separating
    whitespace, as space-prefixed BPE tokens expect). Message lists: the common leading messages, cut back so that
    both completions start with an assistant message.
    """
    if isinstance(chosen, str) and isinstance(rejected, str):
        prefix = os.path.commonprefix([chosen, rejected])
        cut = prefix.rfind(HH_ASSISTANT)
        if cut >= 0:
            cut += len(HH_ASSISTANT)
        else:
            last_space = max((i for i, ch in enumerate(prefix) if ch.isspace()), default=0)
            cut = len(prefix[:last_space].rstrip())
    elif is_conversational(chosen) and is_conversational(rejected):
        cut = 0
        while cut < min(len(chosen), len(rejected)) and _same_message(chosen[cut], rejected[cut]):
            cut += 1
        while cut > 0 and not _both_assistant(chosen, rejected, cut):
            cut -= 1
    else:
        raise DataFormatError(
            f"'chosen' ({type(chosen).__name__}) and 'rejected' ({type(rejected).__name__}) must both be strings "
            "or both be message lists",
            index=index,
            field="rejected",
        )
    if cut == 0:
        raise DataFormatError(
            "'chosen' and 'rejected' share no prompt (no common prefix ending at an assistant turn or a word "
            "boundary); give an explicit 'prompt' column",
            index=index,
            field="chosen",
        )
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _same_message(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.get("role") == b.get("role") and a.get("content") == b.get("content")


def _both_assistant(chosen: Sequence[Mapping], rejected: Sequence[Mapping], at: int) -> bool:
    return all(at < len(side) and side[at].get("role") == "assistant" for side in (chosen, rejected))


def normalise_preference_row(example: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Validate a preference row (explicit or implicit prompt) -> ``{"prompt", "chosen", "rejected"[, "margin"]}``.

    ``chosen``/``rejected`` become completions only (the prompt is extracted for implicit rows, and for a string
    prompt whose answers are message lists that repeat the user turn). An empty completion is valid (the
    end-of-text token alone). Raises :class:`DataFormatError` for missing or non-string fields, bad messages and
    pairs whose completions are identical (no preference signal). Other columns are ignored.
    """
    fmt = detect_format(example, index=index)
    if fmt is DataFormat.PREFERENCE_IMPLICIT:
        chosen, rejected = example["chosen"], example["rejected"]
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            _validate_full(value, index=index, field=name)
        try:
            prompt, chosen, rejected = extract_prompt(chosen, rejected, index=index)
        except DataFormatError as err:
            if chosen == rejected:
                raise DataFormatError("identical to 'chosen'", index=index, field="rejected") from err
            raise
    elif fmt is DataFormat.PREFERENCE:
        prompt, chosen, rejected = example["prompt"], example["chosen"], example["rejected"]
        if isinstance(prompt, str) and is_conversational(chosen) and is_conversational(rejected):
            prompt, chosen, rejected = _messages_prompt(prompt, chosen, rejected, index=index)
    else:
        raise DataFormatError(f"not a preference row (detected {fmt.value})", index=index, field="chosen")
    row: dict[str, Any] = {"prompt": prompt}
    row["chosen"], row["rejected"] = validate_completion_pair(prompt, chosen, rejected, index=index)
    if example.get("margin") is not None:
        row["margin"] = _check_margin(example["margin"], index=index)
    return row


def _messages_prompt(prompt: str, chosen: list, rejected: list, *, index: int) -> tuple[list, list, list]:
    """A string prompt with message-list answers (UltraFeedback-binarized) as a conversational pair.

    Answers that start with the assistant turn get ``[{"role": "user", "content": prompt}]`` as their prompt.
    Answers that repeat the conversation get the messages both share (cut so both completions start with an
    assistant turn); the string prompt must then be one of its user turns (else the row is ambiguous).
    """
    if _opens_with_assistant(chosen) and _opens_with_assistant(rejected):
        return [{"role": "user", "content": prompt}], chosen, rejected
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        validate_messages(side, index=index, field=name)
    shared, chosen, rejected = extract_prompt(chosen, rejected, index=index)
    users = [m["content"].strip() for m in shared if m.get("role") == "user"]
    if prompt.strip() not in users:
        raise DataFormatError(
            "the 'prompt' string is not a user turn of the conversation that 'chosen' and 'rejected' repeat",
            index=index,
            field="prompt",
        )
    return shared, chosen, rejected


def _opens_with_assistant(messages: list) -> bool:
    return bool(messages) and isinstance(messages[0], Mapping) and messages[0].get("role") == "assistant"


def _validate_full(value: Any, *, index: int, field: str) -> None:
    validate_prompt(value, index=index, field=field, allow_empty=False)


def validate_prompt(
    prompt: Any, *, index: int | None, field: str = "prompt", allow_empty: bool = True
) -> Prompt:
    """A string (empty allowed unless ``allow_empty=False``) or a valid message list."""
    if isinstance(prompt, str) or prompt is None:
        return require_string(prompt, index=index, field=field, allow_empty=allow_empty)
    if isinstance(prompt, Sequence):
        return validate_messages(prompt, index=index, field=field)
    raise DataFormatError(
        f"expected a string or a list of messages, got {type(prompt).__name__}", index=index, field=field
    )


def validate_completion(prompt: Prompt, completion: Any, *, index: int | None, field: str) -> Prompt:
    """Check one completion against its (already validated) prompt: same kind, right roles.

    An empty or whitespace-only string completion is valid and becomes ``""`` (the end-of-text token alone).
    """
    if isinstance(prompt, str):
        if not isinstance(completion, str) and completion is not None and is_conversational(completion):
            raise DataFormatError(
                "a string prompt needs a string completion, got a message list", index=index, field=field
            )
        completion = require_string(completion, index=index, field=field, allow_empty=True)
        return completion if completion.strip() else ""
    if isinstance(completion, str) or completion is None:
        kind = "None" if completion is None else "a string"
        raise DataFormatError(
            f"a message-list prompt needs a message-list completion, got {kind}", index=index, field=field
        )
    return validate_messages(
        completion, index=index, field=field, previous_role=prompt[-1]["role"], first_role="assistant"
    )


def validate_completion_pair(prompt: Any, chosen: Any, rejected: Any, *, index: int) -> tuple[Prompt, Prompt]:
    prompt = validate_prompt(prompt, index=index)
    chosen = validate_completion(prompt, chosen, index=index, field="chosen")
    rejected = validate_completion(prompt, rejected, index=index, field="rejected")
    if chosen == rejected:
        raise DataFormatError("identical to 'chosen' (no preference signal)", index=index, field="rejected")
    return chosen, rejected


def normalise_sft_row(
    example: Mapping[str, Any], index: int, *, fmt: DataFormat, text_field: str = "text"
) -> dict[str, Any]:
    """Validate an SFT row of format ``fmt`` -> ``{"text"}``, ``{"prompt", "completion"}`` or ``{"messages"}``.

    A row with nothing to learn (empty text, a conversation without an assistant turn) is valid here: the
    tokeniser drops it and counts it (``OverlongReport.no_loss``).
    """
    if fmt is DataFormat.LANGUAGE_MODELING:
        if text_field not in example:
            raise DataFormatError("missing column", index=index, field=text_field)
        return {"text": require_string(example[text_field], index=index, field=text_field, allow_empty=True)}
    if fmt is DataFormat.PROMPT_COMPLETION:
        for name in ("prompt", "completion"):
            if name not in example:
                raise DataFormatError("missing column", index=index, field=name)
        prompt = validate_prompt(example["prompt"], index=index)
        completion = validate_completion(prompt, example["completion"], index=index, field="completion")
        return {"prompt": prompt, "completion": completion}
    if fmt is DataFormat.CONVERSATIONAL:
        if "messages" not in example:
            raise DataFormatError("missing column", index=index, field="messages")
        return {"messages": validate_messages(example["messages"], index=index, field="messages")}
    raise DataFormatError(
        f"{fmt.value} rows are not SFT data (SFT takes text, prompt+completion or messages)",
        index=index,
        field=None,
    )


def normalise_prompt_row(example: Mapping[str, Any], index: int) -> Prompt:
    """The validated ``prompt`` of a prompt-only row (a non-empty string or a message list).

    A preference row without a ``prompt`` column (Anthropic HH style) gives the prompt its two answers share, so
    the online trainers take a preference file as it is.
    """
    if "prompt" not in example:
        if "chosen" in example and "rejected" in example:
            return normalise_preference_row(example, index)["prompt"]
        raise DataFormatError("missing column", index=index, field="prompt")
    return validate_prompt(example["prompt"], index=index, allow_empty=False)
