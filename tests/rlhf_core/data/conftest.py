"""Fixtures for the data tests: the project's tiny tokenizer and model (built once per cache, then loaded), and
the per-document loss measurement shared by the packing tests (eager/sdpa in test_packing_attention.py, flex in
test_packing_flex.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_core.data.collators import IGNORE_INDEX, SFTCollator
from rlhf_core.data.packing import pack_dataset
from rlhf_core.data.tokenization import tokenize_sft
from rlhf_core.models.tiny import tiny_model_path


@pytest.fixture(scope="session")
def tiny_path():
    return tiny_model_path()


@pytest.fixture(scope="session")
def _tiny_tokenizer(tiny_path):
    return AutoTokenizer.from_pretrained(tiny_path)


@pytest.fixture
def tokenizer(_tiny_tokenizer):
    """A fresh copy per test, so a test that edits its template or special tokens cannot leak into others."""
    return copy.deepcopy(_tiny_tokenizer)


@pytest.fixture(scope="session")
def load_tiny_model(tiny_path):
    """``load(attn_implementation)`` -> the tiny Llama in fp32, eval mode (one load per implementation)."""
    loaded = {}

    def load(implementation: str):
        if implementation not in loaded:
            model = AutoModelForCausalLM.from_pretrained(
                tiny_path, attn_implementation=implementation, dtype=torch.float32
            )
            assert model.config._attn_implementation == implementation
            loaded[implementation] = model.eval()
        return loaded[implementation]

    return load


def _chat(question: str, *answers_and_questions: str) -> dict:
    turns = [question, *answers_and_questions]
    roles = ["user", "assistant"] * len(turns)
    return {"messages": [{"role": r, "content": t} for r, t in zip(roles, turns)]}


PACKING_DOCUMENTS = [
    _chat("List three fruits.", "apple, pear, plum"),
    _chat("Count to four.", "one two three four", "Again?", "one two"),
    _chat("Name a colour.", "blue"),
    _chat("What is two plus two? Answer in words, please.", "It is four."),
    _chat("Opposite of up?", "down"),
]


class PerDocumentLosses:
    """Mean next-token loss of each document, keyed by its token tuple, padded separately or packed."""

    def __init__(self, tokenizer):
        self.documents, _ = tokenize_sft(PACKING_DOCUMENTS, tokenizer)
        assert len({tuple(ids) for ids in self.documents["input_ids"]}) == len(
            self.documents
        )  # distinct keys
        self.pad_id = tokenizer.pad_token_id
        self.packed_rows = pack_dataset(self.documents, max_length=64)
        lengths = [len(r["input_ids"]) for r in self.packed_rows]
        # really packed (a row holds several documents) and really padded (rows differ in length)
        assert max(len(r["seq_lengths"]) for r in self.packed_rows) >= 2 and len(set(lengths)) > 1

    @staticmethod
    def token_nll(model, batch):
        """NLL of each next token ``[B, T-1]`` and where it counts (labels shifted, as the model does)."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        with torch.no_grad():
            logits = model(**inputs, use_cache=False).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        counts = labels != IGNORE_INDEX
        nll = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none") * counts
        return nll, counts

    def padded(self, model) -> dict:
        nll, counts = self.token_nll(model, SFTCollator(self.pad_id)(list(self.documents)))
        return {tuple(d["input_ids"]): nll[i].sum() / counts[i].sum() for i, d in enumerate(self.documents)}

    def packed(self, model, **collator_kw) -> dict:
        nll, counts = self.token_nll(model, SFTCollator(self.pad_id, **collator_kw)(list(self.packed_rows)))
        losses = {}
        for row, example in enumerate(self.packed_rows):
            start = 0
            for n in example["seq_lengths"]:
                # the loss of token t sits at shifted position t-1; a document's first token has none
                span = slice(start, start + n - 1)
                losses[tuple(example["input_ids"][start : start + n])] = (
                    nll[row, span].sum() / counts[row, span].sum()
                )
                start += n
        return losses


@pytest.fixture(scope="session")
def per_document_losses(_tiny_tokenizer):
    return PerDocumentLosses(_tiny_tokenizer)
