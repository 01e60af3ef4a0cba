"""rlhf_core.data: formats, tokenisation, collators, packing, the bundled HH-RLHF loader and the synthetic task.

Names are imported lazily so that ``import rlhf_core.data`` stays cheap.
"""

from __future__ import annotations

from rlhf_core.lazy_exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "rlhf_core.data.formats": (
            "DataFormat DataFormatError detect_format extract_prompt is_conversational "
            "normalise_preference_row normalise_sft_row normalise_prompt_row"
        ),
        "rlhf_core.data.tokenization": (
            "OverlongReport resolve_pad_token_id tokenize_sft tokenize_preference tokenize_prompts"
        ),
        "rlhf_core.data.collators": (
            "IGNORE_INDEX SFTCollator PreferenceCollator PromptCollator pad_sequences "
            "block_diagonal_causal_mask"
        ),
        "rlhf_core.data.packing": "pack_dataset",
        "rlhf_core.data.hh_rlhf": "load_hh_rlhf",
        "rlhf_core.data.synthetic": "SyntheticTask judge_responses",
    },
)
