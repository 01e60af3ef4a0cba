"""THE packing test: on the tiny Llama, a packed batch gives the same per-document losses as the same documents
padded separately, on every attention implementation available here, and documents really cannot see each other.

How it works in transformers 5: when ``attention_mask`` is None and ``position_ids`` restart, ``masking_utils.
find_packed_sequence_indices`` turns the restarts into sequence ids and ``create_causal_mask`` ANDs a same-sequence
mask into the causal one (eager, sdpa and flex_attention alike; flex is in test_packing_flex.py, slow). SFTCollator
relies on that; its explicit 4D mask option is checked here too.

The detection only runs when no cache is passed: Llama's forward creates a DynamicCache whenever ``use_cache`` is
on (the config default, in training mode too), so packed batches must be forwarded with ``use_cache=False``, as
every trainer here does. The explicit 4D mask does not depend on that.
"""

from __future__ import annotations

import pytest
import torch

from rlhf_core.data.collators import SFTCollator

FAST_IMPLEMENTATIONS = ("eager", "sdpa")


@pytest.mark.parametrize("implementation", FAST_IMPLEMENTATIONS)
@pytest.mark.parametrize("explicit_mask", [False, True], ids=["position_ids", "4d_mask"])
def test_packed_equals_padded_per_document(
    load_tiny_model, per_document_losses, implementation, explicit_mask
):
    model, losses = load_tiny_model(implementation), per_document_losses
    expected = losses.padded(model)
    got = losses.packed(model, return_attention_mask_4d=explicit_mask)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0)
    # the whole-batch loss the trainer sees (computed by the model, labels shifted inside) agrees as well
    packed_batch = SFTCollator(losses.pad_id, return_attention_mask_4d=explicit_mask)(
        list(losses.packed_rows)
    )
    padded_batch = SFTCollator(losses.pad_id)(list(losses.documents))
    with torch.no_grad():
        loss_packed = model(**packed_batch, use_cache=False).loss
        loss_padded = model(**padded_batch, use_cache=False).loss
    torch.testing.assert_close(loss_packed, loss_padded, atol=1e-5, rtol=0)


def _logits(model, batch, **kw):
    with torch.no_grad():
        return model(**batch, **kw).logits[0]


@pytest.mark.parametrize("implementation", FAST_IMPLEMENTATIONS)
@pytest.mark.parametrize("explicit_mask", [False, True], ids=["position_ids", "4d_mask"])
def test_documents_cannot_see_each_other(load_tiny_model, per_document_losses, implementation, explicit_mask):
    model, documents = load_tiny_model(implementation), per_document_losses.documents
    collate = SFTCollator(per_document_losses.pad_id, return_attention_mask_4d=explicit_mask)
    first, second = list(documents[0]["input_ids"]), list(documents[3]["input_ids"])
    other_first = torch.randint(10, 500, (len(first),), generator=torch.Generator().manual_seed(0)).tolist()
    cut = len(first)
    row = {"input_ids": first + second, "seq_lengths": [cut, len(second)]}
    changed = {"input_ids": other_first + second, "seq_lengths": [cut, len(second)]}
    # the 4D mask holds even with the cache on; the position-id route needs use_cache=False (module docstring)
    kw = {} if explicit_mask else {"use_cache": False}
    before, after = _logits(model, collate([row]), **kw), _logits(model, collate([changed]), **kw)
    assert not torch.allclose(before[:cut], after[:cut], atol=1e-3)  # document 1 itself did change
    torch.testing.assert_close(after[cut:], before[cut:], atol=1e-6, rtol=0)  # document 2 did not notice
    # control: as one continuous sequence (positions 0..T-1, causal mask only) document 2 does see document 1,
    # so the comparison above can fail
    plain, plain_changed = collate([row])["input_ids"], collate([changed])["input_ids"]
    leak_before = _logits(model, {"input_ids": plain}, use_cache=False)
    leak_after = _logits(model, {"input_ids": plain_changed}, use_cache=False)
    assert not torch.allclose(leak_before[cut:], leak_after[cut:], atol=1e-3)
