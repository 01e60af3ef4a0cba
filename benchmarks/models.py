"""The benchmark model shared by the SFT, reward, DPO and PPO benchmarks: an ~11M-parameter Llama.

Shape (issue 2): hidden 256, 4 layers, 4 heads, intermediate 688, vocabulary 30,522, tied input/output
embeddings (7.8M embedding + 3.2M transformer = 11.0M parameters), max positions 1024, fp32, from a fixed seed.

Tokenizer (no hub access here): the project's byte-level BPE recipe (`rlhf_core.models.tokenizer.train_tokenizer`,
same special tokens and chat template as rlhf-tiny) trained offline on the HH-RLHF texts (chosen + rejected) with a
30,522-token target. The corpus is small, so BPE stops below the target (19,655 tokens, printed by
``python benchmarks/models.py``); the model's embedding has exactly 30,522 rows regardless, so every matmul has the
issue's shape. HH transcripts tokenise to realistic lengths (median 127 tokens, mean 156 once cut at 512, 2 % longer than 512): padded batches carry real
padding, as with a production tokenizer.

Import it from a script in benchmarks/ (``from models import ...``; the folder is on ``sys.path`` there).
Built once into ``$RLHF_CACHE``/``~/.cache/rlhf_toolkit/bench-llama-11m-<hash>`` (atomic rename, safe for parallel
benchmark processes) and loaded with ``from_pretrained`` by every worker process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

VOCAB_SIZE = 30522
MODEL_SHAPE = dict(
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    intermediate_size=688,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    attention_dropout=0.0,
)
SEED = 1234
_RECIPE_VERSION = 1


def _recipe_hash() -> str:
    recipe = json.dumps(
        {"shape": MODEL_SHAPE, "vocab": VOCAB_SIZE, "seed": SEED, "v": _RECIPE_VERSION}, sort_keys=True
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def _cache_root() -> Path:
    return Path(os.environ.get("RLHF_CACHE") or Path.home() / ".cache" / "rlhf_toolkit")


def build_bench_model(out_dir: str | os.PathLike[str]) -> None:
    """Train the tokenizer on HH-RLHF, initialise the Llama from ``SEED`` and save both into ``out_dir``."""
    import torch
    from hh_data import hh_corpus
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_core.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(hh_corpus(), vocab_size=VOCAB_SIZE)
    tokenizer.model_max_length = MODEL_SHAPE["max_position_embeddings"]
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_SHAPE,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def bench_model_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding the benchmark model and tokenizer (built on first use)."""
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    target = root / f"bench-llama-11m-{_recipe_hash()}"
    if (target / "config.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bench-llama-", dir=root))
    try:
        build_bench_model(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_bench_model_and_tokenizer(path: str | os.PathLike[str] | None = None):
    """``(LlamaForCausalLM fp32, tokenizer)`` from `bench_model_path`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path or bench_model_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    return model, AutoTokenizer.from_pretrained(path)


if __name__ == "__main__":
    model, tokenizer = load_bench_model_and_tokenizer()
    print(
        f"{bench_model_path()}: {model.num_parameters() / 1e6:.2f}M parameters, tokenizer {len(tokenizer)} tokens"
    )
