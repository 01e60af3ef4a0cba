"""Shared set-up of the family contract tests: the tiny family models, string preference pairs, plain inference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.families import CAUSAL_FAMILIES, ENCODER_FAMILIES, FAMILIES, family_model_path
from rlhf_core.models.loading import load_sequence_classifier, load_tokenizer

ALL_FAMILIES = (*CAUSAL_FAMILIES, *ENCODER_FAMILIES)
# Arguments every test trainer shares: CPU, fp32, no saving, no reporting, no progress bars.
QUIET = {"report_to": [], "save_strategy": "no", "disable_tqdm": True, "use_cpu": True, "seed": 0}


def string_pairs(n: int, seed: int = 0) -> Dataset:
    """``n`` explicit-prompt preference pairs as plain strings (every tokenizer can take them)."""
    rows = SyntheticTask(seed).preference_dataset(n)
    return Dataset.from_dict(
        {key: [r[0]["content"] for r in rows[key]] for key in ("prompt", "chosen", "rejected")}
    )


def reward_model(family: str, seed: int = 0):
    """(sequence classifier with one label, its tokenizer) of ``family``, loaded as the trainers load a reward
    model by name (pad id set from the tokenizer: its eos for Llama and GPT-2); a new score head from ``seed``."""
    path = family_model_path(family)
    torch.manual_seed(seed)
    return load_sequence_classifier(path, num_labels=1), load_tokenizer(path)


def is_encoder(family: str) -> bool:
    return FAMILIES[family].encoder


@torch.no_grad()
def plain_scores(saved: str | Path, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """Plain transformers inference of the saved reward model, one unpadded sequence at a time -> [N]."""
    model = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    AutoTokenizer.from_pretrained(saved)  # the saved folder is complete: its tokenizer loads too
    return torch.stack([model(input_ids=torch.tensor([list(s)])).logits[0, 0] for s in sequences])


def pair_sequences(dataset: Dataset) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt + chosen and prompt + rejected token ids of a tokenised preference dataset."""
    chosen = [p + c for p, c in zip(dataset["prompt_input_ids"], dataset["chosen_input_ids"])]
    rejected = [p + r for p, r in zip(dataset["prompt_input_ids"], dataset["rejected_input_ids"])]
    return chosen, rejected


def left_padded(ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A right-padded batch re-laid left padded (each row's tokens moved to its end)."""
    out_ids, out_mask = torch.full_like(ids, pad_id), torch.zeros_like(mask)
    for i, n in enumerate(mask.sum(-1).tolist()):
        out_ids[i, ids.shape[1] - n :], out_mask[i, ids.shape[1] - n :] = ids[i, :n], 1
    return out_ids, out_mask
