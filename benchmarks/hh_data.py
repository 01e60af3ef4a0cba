"""HH-RLHF text for the benchmarks: the bundled harmless-base test split (all 2,312 pairs, MIT licence).

`hh_texts` gives single transcripts (the chosen side) for SFT, `hh_pairs` the preference pairs for reward/DPO,
`hh_prompts` the prompts (up to the last "\\n\\nAssistant:") for PPO rollouts, and `hh_corpus` every transcript
(chosen + rejected) for training the benchmark tokenizer. Read through `rlhf_core.data.hh_rlhf.load_hh_rlhf`
(``$RLHF_HH_RLHF_PATH`` or ``../shared/data/hh-rlhf/`` beside the checkout).
"""

from __future__ import annotations

from datasets import Dataset


def _load(limit: int | None = None, *, explicit_prompt: bool = False) -> Dataset:
    from rlhf_core.data.hh_rlhf import load_hh_rlhf

    return load_hh_rlhf(limit=limit, explicit_prompt=explicit_prompt)


def hh_corpus() -> list[str]:
    """Every chosen and rejected transcript (tokenizer training)."""
    pairs = _load()
    return list(pairs["chosen"]) + list(pairs["rejected"])


def hh_texts(limit: int | None = None) -> Dataset:
    """``Dataset[text]``: the chosen transcripts (language-modelling format), file order."""
    return Dataset.from_dict({"text": list(_load(limit)["chosen"])})


def hh_pairs(limit: int | None = None, *, explicit_prompt: bool = True) -> Dataset:
    """Preference pairs: ``prompt``/``chosen``/``rejected`` (explicit) or ``chosen``/``rejected`` (implicit)."""
    return _load(limit, explicit_prompt=explicit_prompt)


def hh_prompts(limit: int | None = None) -> Dataset:
    """``Dataset[prompt]``: the conversation up to and including the last "\\n\\nAssistant:"."""
    return Dataset.from_dict({"prompt": list(_load(limit, explicit_prompt=True)["prompt"])})
