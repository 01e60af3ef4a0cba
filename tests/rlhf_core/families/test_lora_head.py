"""LoRA on every linear layer including ``lm_head``, and ``modules_to_save=["lm_head"]``: the log-probs the trainers
train on use the same effective head as sampling (and as the model's own logits), not the base ``lm_head.weight``.
"""

from __future__ import annotations

import pytest
import torch
from family_cases import QUIET, string_pairs
from peft import LoraConfig

from rlhf_core import DPOConfig, DPOTrainer, PPOConfig, PPOTrainer, SFTConfig, SFTTrainer
from rlhf_core.models.families import family_model_path
from rlhf_core.models.loading import load_causal_lm, load_tokenizer
from rlhf_core.rollout.generation import generate
from rlhf_core.rollout.sampling import SamplingParams

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEFT_CONFIGS = {
    "lora-all-linear+lm_head": lambda: LoraConfig(
        r=4, lora_alpha=8, target_modules=[*LINEAR, "lm_head"], init_lora_weights=False, task_type="CAUSAL_LM"
    ),  # fmt: skip
    "modules_to_save": lambda: LoraConfig(
        r=4, target_modules=["q_proj"], modules_to_save=["lm_head"], task_type="CAUSAL_LM"
    ),  # fmt: skip
}


def _perturb_saved_head(model: torch.nn.Module) -> None:
    """The trainable copy of ``modules_to_save`` starts equal to the base head: make it differ, as training would."""
    head = model.get_output_embeddings()
    copy = getattr(head, "modules_to_save", None)
    if copy is not None:
        with torch.no_grad():
            for module in copy.values():
                module.weight.add_(torch.randn_like(module.weight))


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # untied and tied embeddings
@pytest.mark.parametrize("peft", sorted(PEFT_CONFIGS))
def test_ppo_logprobs_use_the_head_that_sampled(family, peft, tmp_path):
    path = family_model_path(family)
    tok = load_tokenizer(path)
    args = PPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, response_length=6, **QUIET)
    torch.manual_seed(0)
    trainer = PPOTrainer(args=args, model=load_causal_lm(path), reward_fn=lambda p, r: [0.0] * len(r),
                         train_dataset=string_pairs(2).select_columns(["prompt"]), processing_class=tok,
                         peft_config=PEFT_CONFIGS[peft]())  # fmt: skip
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    _perturb_saved_head(model.policy)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        out = generate(model.policy, batch["input_ids"], batch["attention_mask"], max_new_tokens=6,
                       pad_token_id=tok.pad_token_id, sampling=SamplingParams(temperature=args.temperature),
                       return_logprobs=True)  # fmt: skip
        trained = model(out.prompt_ids, out.prompt_mask, out.response_ids, out.response_mask,
                        temperature=args.temperature).logprobs  # fmt: skip
    torch.testing.assert_close(trained, out.logprobs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("peft", sorted(PEFT_CONFIGS))
def test_dpo_logprobs_use_the_effective_head(peft, tmp_path):
    path = family_model_path("llama")
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_length=64, **QUIET)
    torch.manual_seed(0)
    trainer = DPOTrainer(model=load_causal_lm(path), args=args, train_dataset=string_pairs(2),
                         processing_class=load_tokenizer(path), peft_config=PEFT_CONFIGS[peft]())  # fmt: skip
    _perturb_saved_head(trainer.model)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    model = trainer.model.eval()
    with torch.no_grad():
        got = trainer._logps(model, batch).logps
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        keep = labels != -100
        plain = (logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0] * keep).sum(-1)
    torch.testing.assert_close(got, plain, atol=1e-4, rtol=1e-4)


def _plain_summed_nll(model, batch) -> torch.Tensor:
    inputs = {
        k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch
    }  # padded or packed
    logits = model(**inputs).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    return -(logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0] * keep).sum()


@pytest.mark.parametrize("peft", sorted(PEFT_CONFIGS))
def test_sft_loss_uses_the_effective_head(peft, tmp_path):
    path = family_model_path("llama")
    data = string_pairs(2).rename_column("chosen", "completion").remove_columns("rejected")
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_length=64, **QUIET)
    torch.manual_seed(0)
    trainer = SFTTrainer(model=load_causal_lm(path), args=args, train_dataset=data,
                         processing_class=load_tokenizer(path), peft_config=PEFT_CONFIGS[peft]())  # fmt: skip
    _perturb_saved_head(trainer.model)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    model = trainer.model.eval()
    with torch.no_grad():
        _, out = trainer.compute_loss(model, dict(batch), return_outputs=True)
        plain = _plain_summed_nll(model, batch)
    torch.testing.assert_close(out["summed_nll"], plain, atol=1e-4, rtol=1e-4)


def test_reward_scores_use_the_adapted_score_head(tmp_path):
    """LoRA on every linear layer and ``modules_to_save=["score"]`` (PEFT's SEQ_CLS default): the trainer's rewards
    are the PEFT model's own outputs."""
    from rlhf_core import RewardConfig, RewardTrainer
    from rlhf_core.models.loading import load_sequence_classifier

    path = family_model_path("gpt2")
    torch.manual_seed(0)
    peft = LoraConfig(
        r=4, target_modules=["c_attn", "c_proj", "c_fc"], init_lora_weights=False, task_type="SEQ_CLS"
    )
    args = RewardConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_length=64, **QUIET)
    trainer = RewardTrainer(model=load_sequence_classifier(path, num_labels=1), args=args,
                            train_dataset=string_pairs(2), processing_class=load_tokenizer(path), peft_config=peft)  # fmt: skip
    _perturb_score_copy(trainer.model)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    model = trainer.model.eval()
    with torch.no_grad():
        got = torch.cat(trainer.pair_rewards(model, batch))
        rows = [ids[mask.bool()] for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        plain = torch.stack([model(input_ids=r[None]).logits[0, 0] for r in rows])
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=1e-4)


def _perturb_score_copy(model: torch.nn.Module) -> None:
    for module in model.modules():
        copies = getattr(module, "modules_to_save", None)
        if isinstance(copies, torch.nn.ModuleDict):
            with torch.no_grad():
                for copy in copies.values():
                    copy.weight.add_(torch.randn_like(copy.weight))
