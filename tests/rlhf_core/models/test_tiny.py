"""The offline tiny model: deterministic build, on-disk cache, safe concurrent builds, reload via Auto classes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaForCausalLM,
)

from rlhf_core.models.tiny import (
    TINY_MODEL,
    build_tiny_model,
    default_cache_dir,
    recipe_hash,
    tiny_model_path,
)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_build_is_deterministic_and_keyed_by_recipe(tmp_path):
    a = tiny_model_path(tmp_path / "a")
    b = tiny_model_path(tmp_path / "b")
    assert a.name == b.name == f"{TINY_MODEL}-{recipe_hash()}"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(_digests(a))
    assert _digests(a) == _digests(b)


def test_build_neither_depends_on_nor_disturbs_the_global_rng(tmp_path):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "x")
    assert torch.equal(torch.rand(3), expected_next)
    torch.manual_seed(999)
    build_tiny_model(tmp_path / "y")
    assert _digests(tmp_path / "x") == _digests(tmp_path / "y")


def test_cached_folder_is_reused_without_rebuilding(tmp_path):
    first = tiny_model_path(tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_path(str(tmp_path)) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folders left behind


def test_default_cache_dir_follows_rlhf_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    assert tiny_model_path().parent == tmp_path / "cache"
    monkeypatch.delenv("RLHF_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "rlhf_toolkit"


def test_concurrent_builds_in_threads_give_one_complete_folder(tmp_path):
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(tiny_model_path(tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]
    assert _digests(results[0]) == _digests(tiny_model_path(tmp_path / "reference"))


def test_losing_the_rename_race_keeps_the_winner_and_cleans_up(tmp_path, monkeypatch):
    import rlhf_core.models.tiny as tiny

    target = tmp_path / f"{TINY_MODEL}-{recipe_hash()}"
    real_build = tiny.build_tiny_model

    def build_while_another_process_finishes_first(out_dir):
        real_build(out_dir)
        real_build(target)  # the other process renames its folder into place before we do

    monkeypatch.setattr(tiny, "build_tiny_model", build_while_another_process_finishes_first)
    assert tiny_model_path(tmp_path) == target
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert AutoTokenizer.from_pretrained(target).eos_token == "<|end|>"


@pytest.mark.slow
def test_concurrent_builds_in_processes_give_one_complete_folder(tmp_path):
    code = (
        "import sys; from rlhf_core.models.tiny import tiny_model_path; print(tiny_model_path(sys.argv[1]))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    assert [p.name for p in tmp_path.iterdir()] == [Path(outs[0]).name]
    assert AutoModelForCausalLM.from_pretrained(outs[0]).config.hidden_size == 64


def test_reloads_with_auto_classes_and_matches_the_contract():
    path = tiny_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert isinstance(model, LlamaForCausalLM)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (
        64,
        2,
        4,
        256,
    )
    assert cfg.max_position_embeddings == 512 and not cfg.tie_word_embeddings
    assert cfg.vocab_size == len(tokenizer) == model.get_input_embeddings().num_embeddings
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.chat_template is not None and "{% generation %}" in tokenizer.chat_template


def test_loads_as_sequence_classifier_with_pad_token_id():
    path = tiny_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(
        ["Two fruits: mango.", "One fruit: plum, pear, apple."], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


def test_generates_from_a_chat_prompt():
    path = tiny_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name two fruits."}], add_generation_prompt=True, return_tensors="pt"
    )
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 1 and enc["input_ids"].shape[1] < out.shape[1] <= enc["input_ids"].shape[1] + 5
