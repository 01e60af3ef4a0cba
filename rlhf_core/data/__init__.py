"""rlhf_core.data: formats, tokenisation, collators, packing, the bundled HH-RLHF loader and the synthetic task.

Names are imported lazily so that ``import rlhf_core.data`` stays cheap.
"""

from __future__ import annotations

from rlhf_core.lazy_exports import lazy_exports

_EXPORTS: dict[str, str] = {
    "DataFormat": "rlhf_core.data.formats",
    "DataFormatError": "rlhf_core.data.formats",
    "detect_format": "rlhf_core.data.formats",
    "extract_prompt": "rlhf_core.data.formats",
    "is_conversational": "rlhf_core.data.formats",
    "normalise_preference_row": "rlhf_core.data.formats",
    "normalise_sft_row": "rlhf_core.data.formats",
    "normalise_prompt_row": "rlhf_core.data.formats",
    "OverlongReport": "rlhf_core.data.tokenization",
    "resolve_pad_token_id": "rlhf_core.data.tokenization",
    "tokenize_sft": "rlhf_core.data.tokenization",
    "tokenize_preference": "rlhf_core.data.tokenization",
    "tokenize_prompts": "rlhf_core.data.tokenization",
    "IGNORE_INDEX": "rlhf_core.data.collators",
    "SFTCollator": "rlhf_core.data.collators",
    "PreferenceCollator": "rlhf_core.data.collators",
    "PromptCollator": "rlhf_core.data.collators",
    "pad_sequences": "rlhf_core.data.collators",
    "block_diagonal_causal_mask": "rlhf_core.data.collators",
    "pack_dataset": "rlhf_core.data.packing",
    "load_hh_rlhf": "rlhf_core.data.hh_rlhf",
    "SyntheticTask": "rlhf_core.data.synthetic",
    "judge_responses": "rlhf_core.data.synthetic",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
