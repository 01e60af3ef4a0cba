"""RewardTrainer: a pairwise (Bradley-Terry) reward model on `transformers.Trainer`.

Any `AutoModelForSequenceClassification` with ``num_labels=1`` works: a causal-LM backbone (the classifier reads
the last non-pad token, found through ``config.pad_token_id``, which is set when missing) or an encoder such as
BERT (its pooled first token; no eos token is needed). Chosen and rejected sequences go through the model in one
forward pass (`[2B, T]`), and the loss is `rlhf_core.losses.reward.reward_loss`, summed over pairs and divided by
the number of pairs in the whole accumulated batch.

Logged metrics (train, and with the ``eval_`` prefix at evaluation): ``loss``, ``accuracy`` (share of pairs with
r_chosen > r_rejected), ``margin`` (mean r_chosen - r_rejected), ``mean_reward``, ``min_reward``, ``max_reward``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from rlhf_core.losses.reward import reward_loss
from rlhf_core.models.reward_pooling import pad_token_id_of, right_padded, score_positions
from rlhf_core.trainers.model_setup import load_model, unwrap_model
from rlhf_core.trainers.padding_free import padding_free_cost_model, plan_layout
from rlhf_core.trainers.preference.pairwise import PairwiseTrainer
from rlhf_core.trainers.preference.reward_config import RewardConfig

__all__ = ["RewardTrainer"]


class RewardTrainer(PairwiseTrainer):
    """Train a scalar reward model on preference pairs (TRL-compatible constructor).

    Args:
        model: a sequence-classification model with one label, or a name/path (loaded with
            `rlhf_core.models.loading.load_sequence_classifier`, ``"rlhf-tiny"`` included).
        args: a `RewardConfig` (default: ``RewardConfig()``).
        data_collator: default `PreferencePairCollator` with the tokenizer's pad token.
        train_dataset, eval_dataset: raw preference datasets (explicit or implicit prompt, strings or messages,
            optional ``margin``) or datasets already tokenised (``prompt_input_ids``, ``chosen_input_ids``,
            ``rejected_input_ids``); eval may be a dict of them.
        processing_class / tokenizer: the tokenizer (``tokenizer=`` is an alias).
        peft_config: LoRA (or other PEFT) configuration; use ``task_type="SEQ_CLS"`` so the score head trains.
    """

    config_class = RewardConfig

    def _load_model(self, name: str, args: Any) -> nn.Module:
        from rlhf_core.models.loading import load_sequence_classifier

        return load_model(name, model_init_kwargs=args.model_init_kwargs, loader=load_sequence_classifier)

    def _prepare_models(self, model: nn.Module, ref_model: Any, args: Any, peft_config: Any) -> None:
        if ref_model is not None:
            raise TypeError(
                "RewardTrainer takes no ref_model (a reward model is trained without a reference)"
            )
        _check_scalar_head(model)
        return None

    def _finish_setup(self) -> None:
        self._forward_takes_use_cache = (
            "use_cache" in inspect.signature(unwrap_model(self.model).forward).parameters
        )
        self._cost_model = _reward_cost_model(self.model, self.args.padding_free)

    # ---- loss -------------------------------------------------------------------------------------------------

    def pair_rewards(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """`([B], [B])` rewards of the chosen and rejected sequences, from one forward pass over `[2B, T]`.

        A causal classifier's per-position score is read at `score_positions` (the position transformers pools
        for the unpadded text, see `rlhf_core.models.reward_pooling`) in padded and padding-free (merged) batches
        alike; an encoder (no per-position head) pools its own first token. Rows are re-laid right padded first,
        so a left-padded batch (a custom collator) scores as the unpadded text does.
        """
        kwargs = {"use_cache": False} if self._forward_takes_use_cache else {}
        pad_id = pad_token_id_of(model)
        ids, mask = right_padded(inputs["input_ids"], inputs["attention_mask"], pad_id or 0)
        head = _score_head(model)
        if head is None:
            return model(input_ids=ids, attention_mask=mask, **kwargs).logits[:, 0].chunk(2)
        layout = plan_layout(mask, self._cost_model)
        captured: dict[str, torch.Tensor] = {}
        handle = head.register_forward_hook(lambda m, i, out: captured.setdefault("scores", out))
        try:
            model(**layout.model_inputs(ids, mask), **kwargs)
        finally:
            handle.remove()
        rows = torch.arange(mask.shape[0], device=mask.device)
        cols = score_positions(ids, mask, pad_id)
        return layout.gather(captured["scores"], rows, cols)[:, 0].chunk(2)

    def pair_loss(self, model: nn.Module, inputs: dict[str, Any], divisor: Any) -> tuple[torch.Tensor, Any]:
        chosen, rejected = self.pair_rewards(model, inputs)
        out = reward_loss(
            chosen,
            rejected,
            margin=inputs.get("margin"),
            center_rewards_coefficient=self.args.center_rewards_coefficient,
            num_items=divisor,
        )
        self.record_metric("accuracy", out.accuracy)
        self.record_metric("margin", out.margin)
        self.record_metric("mean_reward", out.reward_mean)
        self.record_metric("min_reward", out.reward_min)
        self.record_metric("max_reward", out.reward_max)
        return out.loss, {"rewards_chosen": chosen.detach(), "rewards_rejected": rejected.detach()}

    def pair_scores(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, 2]`` = (r_chosen, r_rejected)."""
        return torch.stack([outputs["rewards_chosen"], outputs["rewards_rejected"]], dim=1)


def _reward_cost_model(model: nn.Module, setting: bool | None) -> Any:
    """Padding-free cost model for a classifier with a per-position score head (None: keep padded batches)."""
    if setting is False:
        return None
    if _score_head(model) is not None:
        return padding_free_cost_model(model, setting)
    if setting:
        raise ValueError(
            "padding_free=True needs a per-position score head (`score`, as in LlamaForSequenceClassification); "
            f"{type(unwrap_model(model)).__name__} has none: use padding_free=None or False."
        )
    return None


def _score_head(model: nn.Module) -> nn.Module | None:
    """The per-position score projection of a decoder classifier (None for e.g. BERT's pooled classifier)."""
    head = getattr(unwrap_model(model), "score", None)
    return head if isinstance(head, nn.Module) else None


def _check_scalar_head(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    num_labels = getattr(config, "num_labels", None)
    if num_labels != 1:
        raise ValueError(
            f"RewardTrainer needs a sequence-classification model with num_labels=1 (one scalar reward), got "
            f"{type(model).__name__} with num_labels={num_labels}: load it with "
            "AutoModelForSequenceClassification.from_pretrained(name, num_labels=1)."
        )
