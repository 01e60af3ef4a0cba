"""The reward pooling position and the right-padding re-layout, by hand."""

from __future__ import annotations

import torch

from rlhf_core.models.reward_pooling import right_padded, score_positions


def test_score_position_skips_pad_ids_and_padding_on_either_side():
    pad = 9  # pad == eos: a row's final eos is skipped, as transformers' pooling does
    ids = torch.tensor([[5, 6, 7, 9, 9], [9, 9, 5, 6, 9], [5, 9, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert score_positions(ids, mask, pad).tolist() == [2, 3, 2]
    assert score_positions(ids, mask, None).tolist() == [3, 4, 2]  # no pad id: the last attended token


def test_right_padded_moves_each_rows_tokens_to_its_start():
    ids = torch.tensor([[0, 0, 5, 6, 7, 0], [3, 4, 5, 6, 0, 0], [0, 8, 0, 9, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [0, 1, 0, 1, 0, 0]])
    out_ids, out_mask = right_padded(ids, mask, pad_token_id=1)
    assert out_ids.tolist() == [[5, 6, 7, 1], [3, 4, 5, 6], [8, 9, 1, 1]]
    assert out_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
