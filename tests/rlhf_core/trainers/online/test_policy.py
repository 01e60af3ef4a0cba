"""The online policy's forward: each distinct prompt run once, the same log-probs and gradients as the joint pass."""

from __future__ import annotations

import torch

from rlhf_core.models.loading import load_causal_lm, load_tokenizer
from rlhf_core.models.tiny import TINY_MODEL
from rlhf_core.models.value_head import backbone
from rlhf_core.rollout.logprobs import ResponseBatch, policy_logprobs
from rlhf_core.trainers.online.policy import CompletionPolicy, shared_prompt_hidden_states


def _group_batch(tok, repeats: int = 3) -> ResponseBatch:
    """Two left-padded prompts, each answered ``repeats`` times by right-padded responses of different lengths."""
    texts = ["Name two fruits.", "Hi"]
    rows = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)["input_ids"]
            for t in texts]  # fmt: skip
    width = max(len(r) for r in rows)
    ids = torch.full((2, width), tok.pad_token_id)
    mask = torch.zeros((2, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
    ids, mask = ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)
    gen = torch.Generator().manual_seed(0)
    responses = torch.randint(5, 200, (2 * repeats, 6), generator=gen)
    lengths = torch.tensor([6, 3, 1, 5, 6, 2])[: 2 * repeats]
    response_mask = (torch.arange(6)[None] < lengths[:, None]).long()
    return ResponseBatch(
        ids, mask, responses.masked_fill(response_mask == 0, tok.pad_token_id), response_mask
    )


def test_shared_prompts_give_the_joint_forward_log_probs_and_gradients():
    torch.manual_seed(0)
    model, tok = load_causal_lm(TINY_MODEL), load_tokenizer(TINY_MODEL)
    model.train()
    batch = _group_batch(tok)
    grads = []
    for share in (False, True):
        model.zero_grad()
        policy = CompletionPolicy(model, share_prompts=share)
        logps, entropy = policy(batch, temperature=0.7, return_entropy=True)
        (logps * torch.arange(1.0, 7.0)).sum().backward()
        grads.append((logps.detach(), entropy, [p.grad.clone() for p in model.parameters()]))
    (plain, plain_entropy, plain_grads), (shared, shared_entropy, shared_grads) = grads
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_entropy, plain_entropy, atol=1e-5, rtol=1e-5)
    assert (shared[batch.response_mask == 0] == 0).all()
    for got, want in zip(shared_grads, plain_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert max(float(g.abs().max()) for g in shared_grads) > 0


def test_prompt_sharing_runs_only_where_it_saves_work():
    model, tok = load_causal_lm(TINY_MODEL), load_tokenizer(TINY_MODEL)
    body, batch = backbone(model), _group_batch(tok)
    seen = []
    handle = body.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].shape),
                                        with_kwargs=True)  # fmt: skip
    try:
        assert shared_prompt_hidden_states(body, batch).shape == (6, 6, model.config.hidden_size)
        assert seen == [(2, batch.prompt_ids.shape[1]), (6, 5)]  # 2 distinct prompts, then the completions
        distinct = batch.select(torch.tensor([0, 3]))
        assert shared_prompt_hidden_states(body, distinct) is None
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        assert shared_prompt_hidden_states(body, batch) is None
    finally:
        handle.remove()
    logps, _, _ = policy_logprobs(model, distinct)
    assert logps.shape == (2, 6)
