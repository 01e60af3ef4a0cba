"""Tiny, randomly initialised models of real architectures, with tokenizers that follow each family's conventions.

``family_model_path("qwen2")`` builds (once per recipe, cached like `rlhf_core.models.tiny`) a folder that the
Auto classes load: a tokenizer trained on the bundled corpus with the family's special tokens, padding rules and
chat template, and a model of the family's own architecture (hidden size 32, 2 layers) from a fixed seed.

| family     | architecture                    | special tokens                                   | chat template |
| ---------- | ------------------------------- | ------------------------------------------------ | ------------- |
| llama      | LlamaForCausalLM                | bos ``<s>`` added, eos ``</s>``, **no pad**      | Llama-2 [INST]|
| gpt2       | GPT2LMHeadModel (tied)          | ``<|endoftext|>`` is bos = eos, **no pad**, none added | none    |
| qwen2      | Qwen2ForCausalLM (tied)         | no bos, eos ``<|im_end|>``, pad ``<|endoftext|>``| ChatML        |
| gemma      | GemmaForCausalLM (tied)         | bos ``<bos>`` added, eos ``<eos>``, pad ``<pad>``| Gemma turns   |
| bert       | BertForSequenceClassification   | ``[CLS] .. [SEP]``, pad ``[PAD]``, no eos        | none          |
| modernbert | ModernBertForSequenceClassification | ``[CLS] .. [SEP]``, pad ``[PAD]``, no eos    | none          |

Causal families are saved as causal LMs (load a reward model from them with
``AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)``); encoder families are saved as
one-label sequence classifiers, the only role they have in RLHF here (reward models).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerFast

from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.tiny import SEED, cached_build
from rlhf_core.models.tokenizer import byte_level_bpe

__all__ = [
    "CAUSAL_FAMILIES",
    "ENCODER_FAMILIES",
    "FAMILIES",
    "Family",
    "build_family_model",
    "family_model_path",
]

RECIPE_VERSION = 1
VOCAB_SIZE = 512
_LAYERS = {"num_hidden_layers": 2, "max_position_embeddings": 256}

LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)
CHATML_TEMPLATE = (  # Qwen2-Instruct's template
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """One model family: its tokenizer conventions and its architecture at toy size."""

    name: str
    encoder: bool
    model_class: str  # a class of transformers, by name
    config_class: str
    shape: dict[str, Any]
    special_tokens: tuple[str, ...]  # in id order, first in the vocabulary
    roles: dict[str, str | None]  # bos/eos/pad/unk/cls/sep/mask -> token
    prefix: tuple[str, ...] = ()  # what plain tokenizer(text) puts before / after a text
    suffix: tuple[str, ...] = ()
    chat_template: str | None = None
    wordpiece: bool = False

    def recipe(self) -> dict[str, Any]:
        return {"version": RECIPE_VERSION, "seed": SEED, "vocab": VOCAB_SIZE, **self.__dict__}


_DECODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    **_LAYERS,
}
_ENCODER = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_labels": 1, **_LAYERS}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("llama", False, "LlamaForCausalLM", "LlamaConfig", {**_DECODER, "tie_word_embeddings": False},
               ("<unk>", "<s>", "</s>"), {"unk": "<unk>", "bos": "<s>", "eos": "</s>"},
               prefix=("<s>",), chat_template=LLAMA_TEMPLATE),
        Family("gpt2", False, "GPT2LMHeadModel", "GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 2,
               "n_positions": 256}, ("<|endoftext|>",),
               {"unk": "<|endoftext|>", "bos": "<|endoftext|>", "eos": "<|endoftext|>"}),
        Family("qwen2", False, "Qwen2ForCausalLM", "Qwen2Config", {**_DECODER, "tie_word_embeddings": True},
               ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), {"eos": "<|im_end|>", "pad": "<|endoftext|>"},
               chat_template=CHATML_TEMPLATE),
        Family("gemma", False, "GemmaForCausalLM", "GemmaConfig",
               {**_DECODER, "num_key_value_heads": 1, "head_dim": 8, "tie_word_embeddings": True},
               ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
               {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"},
               prefix=("<bos>",), chat_template=GEMMA_TEMPLATE),
        Family("bert", True, "BertForSequenceClassification", "BertConfig", _ENCODER,
               ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
               {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
               prefix=("[CLS]",), suffix=("[SEP]",), wordpiece=True),
        Family("modernbert", True, "ModernBertForSequenceClassification", "ModernBertConfig",
               {**_ENCODER, "global_attn_every_n_layers": 2, "local_attention": 64, "classifier_pooling": "cls"},
               ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"),
               {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
               prefix=("[CLS]",), suffix=("[SEP]",)),
    )
}  # fmt: skip
CAUSAL_FAMILIES = tuple(name for name, f in FAMILIES.items() if not f.encoder)
ENCODER_FAMILIES = tuple(name for name, f in FAMILIES.items() if f.encoder)


def _family(name: str) -> Family:
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_model_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder of family ``name``'s tiny model + tokenizer, built on first use."""
    recipe = {**_family(name).recipe(), "corpus": SyntheticTask().corpus()}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cached_build(f"family-{name}-{digest}", lambda out: build_family_model(name, out), cache_dir)


def build_family_model(name: str, out_dir: str | os.PathLike[str]) -> None:
    """Train family ``name``'s tokenizer, initialise its model from ``SEED`` and save both into ``out_dir``."""
    family = _family(name)
    tokenizer = train_family_tokenizer(family, SyntheticTask().corpus())
    model = _init_model(family, tokenizer)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def train_family_tokenizer(family: Family, corpus: Any) -> PreTrainedTokenizerFast:
    """A tokenizer trained on ``corpus`` with ``family``'s special tokens, pre/post-processing and template."""
    specials = list(family.special_tokens)
    if family.wordpiece:  # BERT: lower-cased WordPiece
        bpe = Tokenizer(models.WordPiece(unk_token=family.roles["unk"]))
        bpe.normalizer = normalizers.BertNormalizer(lowercase=True)
        bpe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        bpe.decoder = decoders.WordPiece()
        trainer: Any = trainers.WordPieceTrainer(
            vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False
        )
    else:  # byte-level BPE, as GPT-2, Llama-3, Qwen2 and ModernBERT use
        bpe, trainer = byte_level_bpe(VOCAB_SIZE, specials)
    bpe.train_from_iterator(list(corpus), trainer=trainer)
    if family.prefix or family.suffix:
        single = " ".join([*family.prefix, "$A", *family.suffix])
        pair = " ".join([single, "$B:1", *(f"{t}:1" for t in family.suffix)])
        used = dict.fromkeys([*family.prefix, *family.suffix])
        bpe.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, bpe.token_to_id(t)) for t in used]
        )
    roles = {f"{role}_token": token for role, token in family.roles.items() if token is not None}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        **roles,
        extra_special_tokens=[t for t in specials if t not in family.roles.values()],
        padding_side="right",
        model_max_length=_LAYERS["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    if family.chat_template is not None:
        tokenizer.chat_template = family.chat_template
    return tokenizer


def _init_model(family: Family, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    ids = {f"{role}_token_id": getattr(tokenizer, f"{role}_token_id") for role in ("bos", "eos", "pad")}
    if family.encoder:
        ids.update(cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id)
    config = getattr(transformers, family.config_class)(vocab_size=len(tokenizer), **ids, **family.shape)
    model_class: Callable[..., PreTrainedModel] = getattr(transformers, family.model_class)
    # A private RNG stream: building must not depend on, or disturb, the caller's global seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = model_class(config)
    if not family.encoder:
        model.generation_config = GenerationConfig(**ids)
    return model
