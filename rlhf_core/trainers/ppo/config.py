"""PPOConfig: `TrainingArguments` plus the rollout, reward and PPO settings (TRL's names, classic aliases too).

Batch vocabulary (per process), from the largest unit to the smallest:

* ``batch_size``: episodes (prompt + sampled response) collected per PPO update (one "step" of the Trainer
  state: logging_steps and save_steps count updates).
* ``mini_batch_size`` = ``batch_size / num_mini_batches``: episodes per optimizer step. Each of the
  ``num_ppo_epochs`` epochs shuffles the batch and makes ``num_mini_batches`` optimizer steps.
* ``per_device_train_batch_size``: episodes per forward/backward (micro-batch);
  ``gradient_accumulation_steps`` = ``mini_batch_size / per_device_train_batch_size``. The loss is normalised
  by the token count of the whole mini-batch, so the micro-batch split does not change the update.

Give either TRL's modern form (``per_device_train_batch_size``, ``gradient_accumulation_steps``,
``num_mini_batches``; then ``batch_size`` is their product) or the classic form (``batch_size`` and optionally
``mini_batch_size``; then the micro-batch is ``min(per_device_train_batch_size, mini_batch_size)`` and the
accumulation steps follow).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from transformers import TrainingArguments

from rlhf_core.losses.ppo import KL_ESTIMATORS
from rlhf_core.trainers.config_defaults import (
    ConfigDefaultsMixin,
    Unimplemented,
    unimplemented_fields,
)
from rlhf_core.trainers.fields import help_field

__all__ = ["PPOConfig"]

logger = logging.getLogger(__name__)

_COMPUTED = (
    "computed by TRL's trainer at start-up, not set by users; here the batch shape comes from batch_size, "
    "mini_batch_size, num_mini_batches, per_device_train_batch_size and gradient_accumulation_steps"
)
# TRL 1.12 PPOConfig fields accepted at their default only (a non-default value raises NotImplementedError).
PPO_UNIMPLEMENTED = {
    "world_size": Unimplemented(None, f"{_COMPUTED} (the number of processes is accelerate's)", "int | None"),
    "num_total_batches": Unimplemented(None, f"{_COMPUTED}; set total_episodes or max_steps", "int | None"),
    "micro_batch_size": Unimplemented(None, _COMPUTED, "int | None"),
    "local_batch_size": Unimplemented(None, _COMPUTED, "int | None"),
    "local_mini_batch_size": Unimplemented(None, _COMPUTED, "int | None"),
    "ds3_gather_for_generation": Unimplemented(
        True, "this project's generation has no ZeRO-3 mode that skips gathering the weights"
    ),
}


@dataclass
@unimplemented_fields(PPO_UNIMPLEMENTED)
class PPOConfig(ConfigDefaultsMixin, TrainingArguments):
    """Configuration of `PPOTrainer`: every `TrainingArguments` field (CPU-safe defaults) plus these.

    TRL 1.12 names: ``sft_model_path`` / ``reward_model_path`` are loaded when ``model`` / ``reward_model`` (and
    ``reward_fn``) are not given (None here by default: TRL's default names a hub model);
    ``num_sample_generations``: sample completions (prompt, response, score) recorded that many times over
    ``train()`` (`PPOTrainer.sample_generations`, logged as a table); ``model_adapter_name`` /
    ``ref_adapter_name``: with a multi-adapter PEFT policy (and ``ref_model=None``), the adapter trained and the
    adapter whose outputs are the reference. TRL fields accepted at their default only:
    ``PPO_UNIMPLEMENTED``.
    """

    learning_rate: float = help_field(3e-6, "AdamW learning rate (TRL's PPO default).")
    # ---- batch shape --------------------------------------------------------------------------------------
    batch_size: int | None = help_field(None, "Episodes per PPO update (per process). None: per_device_train_batch_size x "
                       "gradient_accumulation_steps x num_mini_batches.")  # fmt: skip
    mini_batch_size: int | None = help_field(
        None, "Episodes per optimizer step. None: batch_size / num_mini_batches."
    )
    num_mini_batches: int = help_field(1, "Optimizer steps per PPO epoch.")
    num_ppo_epochs: int = help_field(4, "Passes over each rollout batch.")
    ppo_epochs: int | None = help_field(None, "Classic alias of num_ppo_epochs.")
    total_episodes: int | None = help_field(
        None, "Episodes to train on. None: num_train_epochs x len(train_dataset)."
    )
    local_rollout_forward_batch_size: int = help_field(
        64, "Rows per generation call and per no-grad scoring forward."
    )
    # ---- rollout ------------------------------------------------------------------------------------------
    response_length: int = help_field(53, "Maximum new tokens per response.")
    temperature: float = help_field(
        0.7, "Sampling temperature; log-probs are computed at the same temperature."
    )
    top_k: int | None = help_field(None, "Sample from the k most likely tokens (None: all).")
    top_p: float = help_field(1.0, "Nucleus sampling mass (1.0: no limit).")
    stop_token: str | None = help_field("eos", "'eos': responses end at the tokenizer's eos token (kept, tokens after it masked); "
                       "None: no stop token (unless stop_token_id).")  # fmt: skip
    stop_token_id: int | None = help_field(None, "A stop token id other than eos.")
    missing_eos_penalty: float | None = help_field(
        None, "Subtracted from the score of responses that never emit the stop token."
    )
    recompute_rollout_logprobs: bool = help_field(False, "False: the old log-probs are read off the sampling logits (no second policy pass). "
                       "True: a separate forward pass computes them, with exactly the training pass's numerics.")  # fmt: skip
    max_prompt_length: int | None = help_field(
        None, "Prompts longer than this keep their last tokens (None: no limit)."
    )
    # ---- reward and KL ------------------------------------------------------------------------------------
    kl_coef: float = help_field(0.05, "KL penalty coefficient (initial value if adaptive).")
    init_kl_coef: float | None = help_field(None, "Classic alias of kl_coef.")
    kl_estimator: str = help_field("k1", "Per-token KL estimator penalised AND logged: 'k1' (log ratio), 'k2' (squared / 2) or "
                       "'k3' ((r - 1) - log r, never negative).")  # fmt: skip
    kl_target: float | None = help_field(
        None, "Adaptive KL controller (arXiv:1909.08593 eq. 2): target sequence KL. None: fixed kl_coef."
    )
    kl_horizon: int = help_field(10000, "Adaptive KL controller horizon, in episodes.")
    adap_kl_ctrl: bool | None = help_field(
        None, "Classic switch for the adaptive controller (target defaults to 6)."
    )
    target: float | None = help_field(None, "Classic alias of kl_target.")
    horizon: int | None = help_field(None, "Classic alias of kl_horizon.")
    whiten_rewards: bool = help_field(False, "Whiten per-token rewards (mean kept).")
    whiten_advantages: bool = help_field(True, "Whiten advantages over the batch.")
    # ---- PPO losses ---------------------------------------------------------------------------------------
    cliprange: float = help_field(0.2, "Policy ratio clip range (epsilon).")
    cliprange_value: float = help_field(0.2, "Value clip range around the rollout values.")
    vf_coef: float = help_field(0.1, "Value loss coefficient.")
    gamma: float = help_field(1.0, "Discount factor.")
    lam: float = help_field(0.95, "GAE lambda.")
    # ---- models -------------------------------------------------------------------------------------------
    disable_dropout: bool = help_field(
        True, "Zero every dropout of policy, reference, value and reward models."
    )
    model_init_kwargs: dict | None = help_field(
        None, "from_pretrained keyword arguments for models given by name."
    )
    dataset_num_proc: int | None = help_field(None, "Processes to tokenise prompts.")
    sft_model_path: str | None = help_field(
        None, "The policy to load when PPOTrainer gets no model= (a name or path)."
    )
    reward_model_path: str | None = help_field(
        None, "The reward model to load when PPOTrainer gets neither reward_model= nor reward_fn=."
    )
    model_adapter_name: str | None = help_field(
        None, "The PEFT policy's adapter to train (None: its active one, 'default')."
    )
    ref_adapter_name: str | None = help_field(
        None, "The PEFT policy's adapter that is the reference (None: the base model, adapters off)."
    )
    num_sample_generations: int = help_field(
        10, "Times over train() that sample completions are recorded and logged (0: never)."
    )

    def __post_init__(self) -> None:
        self._resolve_aliases()
        self._check_values()
        self._resolve_batch_shape()
        super().__post_init__()

    def _resolve_aliases(self) -> None:
        if self.ppo_epochs is not None:
            self.num_ppo_epochs = self.ppo_epochs
        if self.init_kl_coef is not None:
            self.kl_coef = self.init_kl_coef
        if self.target is not None and self.kl_target is None:
            self.kl_target = self.target
        if self.horizon is not None:
            self.kl_horizon = self.horizon
        if self.adap_kl_ctrl and self.kl_target is None:
            self.kl_target = 6.0
        if self.adap_kl_ctrl is False:
            self.kl_target = None

    def _check_values(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator={self.kl_estimator!r}: choose one of {sorted(KL_ESTIMATORS)}")
        if self.stop_token not in ("eos", None):
            raise ValueError(f"stop_token={self.stop_token!r}: use 'eos' or None (or stop_token_id=<int>)")
        if self.num_sample_generations < 0:
            raise ValueError(f"num_sample_generations must be >= 0, got {self.num_sample_generations}")
        positive = {
            "num_ppo_epochs": self.num_ppo_epochs,
            "num_mini_batches": self.num_mini_batches,
            "response_length": self.response_length,
            "local_rollout_forward_batch_size": self.local_rollout_forward_batch_size,
            "kl_horizon": self.kl_horizon,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ValueError(f"kl_target must be > 0 (or None for a fixed kl_coef), got {self.kl_target}")

    def _resolve_batch_shape(self) -> None:
        if self.batch_size is None:
            if self.mini_batch_size is None:
                self.mini_batch_size = self.per_device_train_batch_size * self.gradient_accumulation_steps
            self.batch_size = self.mini_batch_size * self.num_mini_batches
            if self.mini_batch_size % self.per_device_train_batch_size:
                raise ValueError(
                    f"mini_batch_size={self.mini_batch_size} must be a multiple of "
                    f"per_device_train_batch_size={self.per_device_train_batch_size}"
                )
            self.gradient_accumulation_steps = self.mini_batch_size // self.per_device_train_batch_size
            return
        if self.mini_batch_size is None:
            if self.batch_size % self.num_mini_batches:
                raise ValueError(
                    f"batch_size={self.batch_size} is not divisible by num_mini_batches={self.num_mini_batches}"
                )
            self.mini_batch_size = self.batch_size // self.num_mini_batches
        elif self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} is not a multiple of mini_batch_size={self.mini_batch_size}"
            )
        self.num_mini_batches = self.batch_size // self.mini_batch_size
        micro = min(self.per_device_train_batch_size, self.mini_batch_size)
        if self.mini_batch_size % micro:
            raise ValueError(
                f"mini_batch_size={self.mini_batch_size} must be a multiple of the micro-batch "
                f"per_device_train_batch_size={micro}"
            )
        steps = self.mini_batch_size // micro
        if self.gradient_accumulation_steps not in (1, steps):
            raise ValueError(
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} contradicts batch_size="
                f"{self.batch_size}, mini_batch_size={self.mini_batch_size} and per_device_train_batch_size="
                f"{micro} (which give {steps}); leave it at 1 when giving batch_size"
            )
        self.per_device_train_batch_size, self.gradient_accumulation_steps = micro, steps


def _requested_world_size(self: PPOConfig, value: int | None) -> None:
    self.__dict__["world_size"] = value  # what the user passed: refused unless None (PPO_UNIMPLEMENTED)


# TRL 1.12 declares world_size as a field; here it must stay TrainingArguments' property (the process count that
# the Trainer and accelerate read), so the field's value is stored aside and the property is restored.
PPOConfig.world_size = property(TrainingArguments.world_size.fget, _requested_world_size)
