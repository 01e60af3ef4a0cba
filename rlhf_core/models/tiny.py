"""The offline default model, "rlhf-tiny": a 0.26M-parameter Llama and the bundled tokenizer, built on demand.

`tiny_model_path()` builds the tokenizer (trained on the synthetic task's corpus) and a randomly initialised
`LlamaForCausalLM` from a fixed seed, saves both with `save_pretrained`, and caches the folder on disk under a name
keyed by a hash of the whole recipe (corpus, tokenizer settings, model config, seed). Any change to the recipe
gives a new folder; an unchanged recipe is built once per cache directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from rlhf_core.data.synthetic import SyntheticTask
from rlhf_core.models.tokenizer import CHAT_TEMPLATE, DEFAULT_VOCAB_SIZE, SPECIAL_TOKENS, train_tokenizer

logger = logging.getLogger(__name__)
# Seeding the global torch RNG is only safe for one build at a time per process (threads share it); processes
# are kept apart by the atomic rename instead.
_BUILD_LOCK = threading.Lock()

TINY_MODEL = "rlhf-tiny"
# Bump when the build changes in a way the hashed recipe does not capture (e.g. how weights are initialised).
RECIPE_VERSION = 1
SEED = 0
MODEL_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 256,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}


def default_cache_dir() -> Path:
    """``$RLHF_CACHE`` when set, else ``~/.cache/rlhf_toolkit``."""
    env = os.environ.get("RLHF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlhf_toolkit"


def recipe_hash() -> str:
    """A digest of everything that determines the built files."""
    recipe = {
        "version": RECIPE_VERSION,
        "seed": SEED,
        "vocab_size": DEFAULT_VOCAB_SIZE,
        "special_tokens": SPECIAL_TOKENS,
        "chat_template": CHAT_TEMPLATE,
        "model": MODEL_SHAPE,
        "corpus": SyntheticTask().corpus(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def tiny_model_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the tiny model + tokenizer, built on first use (see `cached_build`)."""
    return cached_build(f"{TINY_MODEL}-{recipe_hash()}", build_tiny_model, cache_dir)


def cached_build(
    name: str, build: Callable[[Path], None], cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """``cache_dir/name``, filled by ``build(folder)`` on first use (``name`` should carry a recipe hash).

    Safe when several processes ask at once: each builds in its own temporary folder and renames it into place
    (atomic on one filesystem); the loser of the race discards its copy, whose files are identical anyway.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / name
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _BUILD_LOCK:
        if (target / "config.json").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            build(tmp)
            try:
                os.rename(tmp, target)
                logger.info("built %s in %s", name, target)
            except OSError:
                if not (target / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny_model(out_dir: str | os.PathLike[str]) -> None:
    """Train the tokenizer, initialise the model from ``SEED`` and save both into ``out_dir``."""
    tokenizer = train_tokenizer(SyntheticTask().corpus(), vocab_size=DEFAULT_VOCAB_SIZE)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_SHAPE,
    )
    # A private RNG stream: building must not depend on, or disturb, the caller's global seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
