"""Where the pipeline's model and data come from: the `model:` and `data:` sections of a pipeline YAML file.

A data source is one of four kinds, picked by its ``source`` key:

- ``synthetic``: the bundled task (`rlhf_core.data.synthetic.SyntheticTask`), deterministic from ``seed``;
- ``file``: a local JSONL / JSON / Parquet file in any of the TRL data formats (DESIGN.md, "Data formats");
- ``hh_rlhf``: an Anthropic HH-RLHF file (``chosen``/``rejected`` transcripts with ``\\n\\nHuman:`` turns);
- ``hub``: a Hugging Face hub dataset by name (needs the hub or a local cache).

Each stage reads its data in the form it needs (SFT examples, preference pairs or prompts) and the converter in
`tasks.data_sources` turns any source into that form, e.g. preference pairs into SFT examples (prompt + chosen).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from tasks.stage_registry import STAGES, get_stage

__all__ = [
    "DataSettings",
    "DataSource",
    "FileSource",
    "HHRLHFSource",
    "HubSource",
    "ModelSource",
    "SyntheticSource",
]

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _existing_file(value: str, suffixes: tuple[str, ...] = FILE_SUFFIXES) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        where = "folder, not a file" if path.is_dir() else "no such file"
        raise ValueError(
            f"data file not found: {value!r} ({where}; relative paths are read from {Path.cwd()})"
        )
    if not path.name.endswith(suffixes):
        raise ValueError(f"unsupported data file {path.name!r}: expected one of {', '.join(suffixes)}")
    return str(path.resolve())


class SyntheticSource(_Strict):
    """The bundled synthetic task ("name N things"): SFT examples, preference pairs and prompts from one seed."""

    source: Literal["synthetic"] = "synthetic"
    num_examples: int = Field(
        1000, ge=1, description="Rows to generate (prompts repeat past the distinct ones)."
    )
    seed: int = Field(0, description="Task seed: which prompts are held out, and the rows drawn.")
    split: Literal["train", "heldout"] = Field(
        "train",
        description="Prompt split (prompt data only): 'heldout' prompts never appear in training data.",
    )


class FileSource(_Strict):
    """A local JSONL / JSON / Parquet file in one of the TRL data formats (format detected from the rows)."""

    source: Literal["file"] = "file"
    path: str = Field(description="Path to a .jsonl, .json or .parquet file (.gz allowed for JSON).")
    limit: int | None = Field(None, ge=1, description="Keep only the first N rows.")
    text_field: str = Field("text", description="Column holding the text of language-modelling rows.")

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str) -> str:
        return _existing_file(value)


class HHRLHFSource(_Strict):
    """An Anthropic HH-RLHF file (implicit prompt; ``\\n\\nHuman:`` / ``\\n\\nAssistant:`` transcripts)."""

    source: Literal["hh_rlhf"] = "hh_rlhf"
    path: str = Field(description="Path to the HH-RLHF .jsonl(.gz) file, e.g. harmless-base-test.jsonl.gz.")
    split: Literal["all", "train", "test"] = Field(
        "all", description="A deterministic slice: 'test' is `test_fraction` of the pairs, 'train' the rest."
    )
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    limit: int | None = Field(None, ge=1, description="Keep only the first N pairs (after the split).")
    as_messages: bool = Field(
        True,
        description="Turn the transcripts into chat messages (user/assistant turns) so the model's chat template "
        "applies; False keeps the raw strings (for tokenizers without a chat template, e.g. gpt2).",
    )

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str) -> str:
        return _existing_file(value)


class HubSource(_Strict):
    """A Hugging Face hub dataset (``datasets.load_dataset(name, subset, split=...)``); needs hub access or cache."""

    source: Literal["hub"] = "hub"
    name: str = Field(description="Dataset name on the hub, e.g. 'Anthropic/hh-rlhf'.")
    subset: str | None = Field(None, description="Configuration name (load_dataset's second argument).")
    split: str = "train"
    revision: str | None = None
    limit: int | None = Field(None, ge=1, description="Keep only the first N rows.")
    text_field: str = "text"


DataSource = Annotated[
    SyntheticSource | FileSource | HHRLHFSource | HubSource,
    Field(discriminator="source"),
]


class _DataBase(_Strict):
    sft: DataSource = Field(default_factory=lambda: SyntheticSource(num_examples=2000))
    preference: DataSource = Field(
        default_factory=lambda: SyntheticSource(num_examples=1000),
        description="Preference pairs shared by the preference stages (unless they name their own); their "
        "prompts are the rollout prompts of online stages.",
    )
    eval: DataSource = Field(
        default_factory=lambda: SyntheticSource(num_examples=64, split="heldout"),
        description="Held-out prompts for samples and evaluation.",
    )

    def for_role(self, role: str) -> DataSource:
        """The source a data role reads (a stage name, or ``eval``), defaults applied: a stage's own entry,
        else ``sft`` for SFT-form stages and ``preference`` for the others."""
        if role == "eval":
            return self.eval
        own = getattr(self, role, None) if role not in ("sft", "preference") else None
        if own is not None:
            return own
        return self.sft if get_stage(role).data == "sft" else self.preference


_FORM_TEXT = {"sft": "SFT examples", "preference": "Preference pairs", "prompts": "Rollout prompts"}

DataSettings = create_model(
    "DataSettings",
    __base__=_DataBase,
    __module__=__name__,
    __doc__="The data each stage reads: ``sft`` and ``preference`` by default, or the stage's own entry.",
    **{
        name: (
            DataSource | None,
            Field(
                None,
                description=f"{_FORM_TEXT[stage.data]} for the {name} stage (default: "
                f"{'`sft`' if stage.data == 'sft' else '`preference`'}).",
            ),
        )
        for name, stage in STAGES.items()
        if name not in _DataBase.model_fields
    },
)


class ModelSource(_Strict):
    """The starting policy and, optionally, an existing reward model."""

    name_or_path: str = Field(
        "rlhf-tiny", description="Base causal LM: 'rlhf-tiny' (built offline), a local folder or a hub name."
    )
    reward_backbone: str | None = Field(
        None, description="Model the reward stage starts from (default: the SFT policy, else the base model)."
    )
    reward_model: str | None = Field(
        None,
        description="An already-trained reward model (folder or hub name): used by PPO and evaluation when the "
        "reward stage does not run.",
    )

    @field_validator("name_or_path", "reward_backbone", "reward_model")
    @classmethod
    def _local_paths_exist(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith((".", "/", "~")):
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ValueError(f"model folder not found: {value!r}")
            return str(path.resolve())
        return value
