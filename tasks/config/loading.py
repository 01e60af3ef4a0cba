"""YAML file + ``key=value`` overrides -> `PipelineConfig`, with errors that name the key and the problem."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tasks.config.pipeline import PipelineConfig
from tasks.config.stages import TrainerArgError

__all__ = [
    "ConfigError",
    "apply_overrides",
    "config_from_mapping",
    "config_to_yaml",
    "load_config",
    "load_yaml",
    "parse_override",
]

_SOURCE_TAGS = {"synthetic", "file", "hh_rlhf", "hub"}


class ConfigError(ValueError):
    """A configuration the user must fix. ``problems``: one ``"key: problem"`` line each."""

    def __init__(self, problems: list[str], *, source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"invalid configuration{f' in {source}' if source else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in problems))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file; a missing file, a syntax error or a non-mapping top level is a ConfigError."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError([f"config file not found: {str(path)!r}"])
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(
            [f"{where}not valid YAML ({getattr(err, 'problem', None) or err})"], source=str(path)
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"the top level must be a mapping of keys, got {type(raw).__name__}"], source=str(path)
        )
    return raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"stages.sft.args.max_steps=10"`` -> (["stages", "sft", "args", "max_steps"], 10); the value is YAML."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError([f"override {text!r}: expected dotted.key=value"])
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value  # not YAML: take it as the plain string the user typed
    return parts, parsed


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``dotted.key=value`` set (intermediate mappings are created as needed)."""
    result = _deep_copy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                parent = ".".join(parts[: depth + 1])
                raise ConfigError([f"override {text!r}: {parent} is {child!r}, not a mapping"])
            node = child
        node[parts[-1]] = value
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def config_from_mapping(raw: Mapping[str, Any], *, source: str | None = None) -> PipelineConfig:
    """Validate a mapping into a PipelineConfig; every problem is reported at once, by key."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, raw), source=source) from None


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Read a pipeline YAML file, apply ``key=value`` overrides and validate (no data is read here)."""
    raw = apply_overrides(load_yaml(path), overrides)
    return config_from_mapping(raw, source=str(path))


def config_to_yaml(config: PipelineConfig) -> str:
    """The config as YAML (every default written out), loadable again with `load_config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# ---- error messages ------------------------------------------------------------------------------------------
def describe_validation_error(err: ValidationError, raw: Mapping[str, Any]) -> list[str]:
    lines = []
    for item in err.errors():
        loc = _clean_loc(item["loc"])
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, TrainerArgError) and cause.key is not None:
            loc = (*loc, cause.key)
        key = ".".join(str(p) for p in loc)
        lines.append(f"{key}: {_problem(item, loc, raw)}" if key else _problem(item, loc, raw))
    return lines


def _clean_loc(loc: tuple) -> tuple:
    # Discriminated unions put the tag in the location (data.sft.file.path); users wrote data.sft.path.
    return tuple(p for i, p in enumerate(loc) if not (p in _SOURCE_TAGS and i > 0 and loc[i - 1] != "source"))


def _problem(item: Mapping[str, Any], loc: tuple, raw: Mapping[str, Any]) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], raw)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key ({hint}allowed: {', '.join(allowed)})" if allowed else "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        ctx = item.get("ctx") or {}
        return f"unknown source {ctx.get('tag')!r} (expected one of {ctx.get('expected_tags')})"
    message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("value_error", "assertion_error"):
        return message
    return f"{message}, got {item.get('input')!r}"


def _allowed_keys(loc: tuple, raw: Mapping[str, Any]) -> list[str]:
    """Field names of the model at ``loc`` (walking PipelineConfig's fields, data sources by their tag)."""
    model: Any = PipelineConfig
    node: Any = raw
    for part in loc:
        node = node.get(part) if isinstance(node, Mapping) else None
        field = model.model_fields.get(str(part)) if _is_model(model) else None
        if field is None:
            return []
        model = _model_of(field.annotation, node)
    return list(model.model_fields) if _is_model(model) else []


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _model_of(annotation: Any, node: Any) -> Any:
    """The BaseModel class an annotation stands for (a union picks the member whose `source` tag matches)."""
    members = [m for m in _flatten(annotation) if _is_model(m)]
    if len(members) <= 1:
        return members[0] if members else None
    tag = node.get("source", "synthetic") if isinstance(node, Mapping) else None
    for member in members:
        field = member.model_fields.get("source")
        if field is not None and field.default == tag:
            return member
    return None


def _flatten(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _flatten(arg)]
    return [annotation]
