"""GRPOConfig and RLOOConfig: `TrainingArguments` plus TRL 1.16's online-RL fields, with TRL's names and defaults.

Batch vocabulary (TRL's). A *micro-batch* is ``per_device_train_batch_size`` completions on one process; an
optimizer step accumulates ``gradient_accumulation_steps`` of them. One *generation* samples
``generation_batch_size`` completions over all processes (default: one optimizer step's worth,
``per_device_train_batch_size x processes x steps_per_generation`` with ``steps_per_generation =
gradient_accumulation_steps``), i.e. ``generation_batch_size / num_generations`` prompts answered
``num_generations`` times each. The generation is then cut into ``steps_per_generation`` micro-batches per process
and optimised over ``num_iterations`` times, with the log-probs of the sampling policy kept as pi_old.

Every field of TRL 1.16's configs is accepted. The ones this project does not implement raise
``NotImplementedError`` naming the field when given a non-default value; vLLM tuning fields, SAPO/VESPO
temperatures and the adaptive-entropy bounds are read only by features that raise (``use_vllm=True``,
``loss_type="sapo"``, ...), so they are accepted and inert, as they are in TRL without those features.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import TrainingArguments

from rlhf_core.trainers.config_defaults import (
    ConfigDefaultsMixin,
    Unimplemented,
    refuse_unimplemented,
    unimplemented_fields,
)
from rlhf_core.trainers.fields import help_field

__all__ = ["GRPO_UNIMPLEMENTED", "ONLINE_UNIMPLEMENTED", "GRPOConfig", "OnlineConfig", "RLOOConfig"]


_DECODE_LOOP = "generation runs on this project's KV-cache decode loop"
_DETACHED_ENTROPY = "entropies are detached here (the fused kernel returns them without gradient)"

# Fields of both TRL configs accepted at their default only: a non-default value raises NotImplementedError.
ONLINE_UNIMPLEMENTED: dict[str, Unimplemented] = {
    "router_aux_loss_coef": Unimplemented(
        None, "mixture-of-experts router losses are not wired", "float | None"
    ),
    "min_p": Unimplemented(None, "use temperature, top_k or top_p", "float | None"),
    "repetition_penalty": Unimplemented(
        1.0, "use temperature, top_k or top_p (or rlhf_core.rewards' repetition penalty)"
    ),
    "cache_implementation": Unimplemented(None, f"{_DECODE_LOOP} (the model's dynamic cache)", "str | None"),
    "use_vllm": Unimplemented(False, _DECODE_LOOP),
    "use_transformers_continuous_batching": Unimplemented(False, _DECODE_LOOP),
    "transformers_continuous_batching_config": Unimplemented(None, _DECODE_LOOP, "dict | None"),
    "use_transformers_paged": Unimplemented(False, _DECODE_LOOP),
}
GRPO_UNIMPLEMENTED: dict[str, Unimplemented] = {
    "cast_lm_head_to_fp32": Unimplemented(False, "the fused log-prob kernel already accumulates in fp32"),
    "top_entropy_quantile": Unimplemented(1.0, f"entropy masking is not implemented; {_DETACHED_ENTROPY}"),
    "entropy_coef": Unimplemented(0.0, f"an entropy bonus is not implemented; {_DETACHED_ENTROPY}"),
    "use_adaptive_entropy": Unimplemented(False, f"an entropy bonus is not implemented; {_DETACHED_ENTROPY}"),
    "max_tool_calling_iterations": Unimplemented(None, "tool calling is not implemented", "int | None"),
    "off_policy_mask_threshold": Unimplemented(
        None, "off-policy sequence masking is not implemented", "float | None"
    ),
    "log_completions_hub_repo": Unimplemented(
        None, "rlhf_core uploads nothing; use log_completions", "str | None"
    ),
}


@dataclass
@unimplemented_fields(ONLINE_UNIMPLEMENTED)
class OnlineConfig(ConfigDefaultsMixin, TrainingArguments):
    """Fields GRPO and RLOO share (TRL 1.16's names and defaults; CPU-safe precision defaults)."""

    learning_rate: float = help_field(1e-6, "AdamW learning rate (TRL's default).")
    gradient_checkpointing: bool = help_field(True, "Recompute activations in backward (TRL's default: on).")
    remove_unused_columns: bool = help_field(
        False, "Keep every dataset column: reward functions receive them."
    )
    # ---- models -------------------------------------------------------------------------------------------
    model_init_kwargs: dict | str | None = help_field(
        None, "from_pretrained keyword arguments for models given by name."
    )
    trust_remote_code: bool = help_field(False, "Passed to from_pretrained for models given by name.")
    disable_dropout: bool = help_field(False, "Zero every dropout of the policy and the reference.")
    # ---- data and generation ------------------------------------------------------------------------------
    num_generations: int = help_field(8, "Completions sampled per prompt (the group size).")
    max_completion_length: int = help_field(512, "Maximum new tokens per completion.")
    shuffle_dataset: bool = help_field(True, "Shuffle the prompts each epoch (from the seed).")
    pad_to_multiple_of: int | str | None = help_field(
        "auto", "Pad prompt batches to a multiple of this ('auto': none)."
    )
    num_generations_eval: int | None = help_field(
        None, "Completions per eval prompt (None: num_generations)."
    )
    generation_batch_size: int | None = help_field(None, "Completions per generation over all processes.")
    steps_per_generation: int | None = help_field(None, "Micro-batches per process per generation.")
    temperature: float = help_field(
        1.0, "Sampling temperature; log-probs are computed at the same temperature."
    )
    top_p: float = help_field(1.0, "Nucleus sampling mass (1.0: no limit).")
    top_k: int = help_field(0, "Sample from the k most likely tokens (0: no limit).")
    generation_kwargs: dict | None = help_field(
        None, "Extra generation arguments (only max_new_tokens-like keys)."
    )
    chat_template_kwargs: dict | None = help_field(
        None, "Extra arguments for the chat template of conversational prompts."
    )
    # ---- optimisation -------------------------------------------------------------------------------------
    beta: float = help_field(0.0, "KL coefficient to the reference model (0: no reference model is kept).")
    num_iterations: int = help_field(1, "Optimisation passes over each generation (mu in the GRPO paper).")
    epsilon: float = help_field(0.2, "Lower clip range of the importance ratio.")
    epsilon_high: float | None = help_field(None, "Upper clip range (None: epsilon). DAPO's clip-higher.")
    reward_weights: list[float] | None = help_field(None, "Weight of each reward function (None: all 1).")
    mask_truncated_completions: bool = help_field(False, "Leave completions without an eos out of the loss.")
    sync_ref_model: bool = help_field(
        False, "Move the reference towards the policy every ref_model_sync_steps (TR-DPO)."
    )
    ref_model_mixup_alpha: float = help_field(0.6, "ref <- alpha * policy + (1 - alpha) * ref when syncing.")
    ref_model_sync_steps: int = help_field(512, "Optimizer steps between reference syncs.")
    # ---- logging ------------------------------------------------------------------------------------------
    log_completions: bool = help_field(
        False, "Print a table of sampled completions at each log (and keep them)."
    )
    log_multimodal: bool = help_field(True, "Log images with completions (no multimodal input here: inert).")
    num_completions_to_print: int | None = help_field(
        None, "Rows of the printed completions table (None: all)."
    )
    log_unique_prompts: bool = help_field(False, "Show each prompt once in the completions table.")
    # ---- accepted for TRL parity, inert without the features that raise -----------------------------------
    ds3_gather_for_generation: bool = help_field(True, "DeepSpeed ZeRO-3 parameter gathering for generation.")
    vllm_mode: str = help_field("colocate", "vLLM only.")
    vllm_model_impl: str = help_field("vllm", "vLLM only.")
    vllm_enable_sleep_mode: bool = help_field(False, "vLLM only.")
    vllm_structured_outputs_regex: str | None = help_field(None, "vLLM only.")
    vllm_server_base_url: str | None = help_field(None, "vLLM only.")
    vllm_server_host: str = help_field("0.0.0.0", "vLLM only.")
    vllm_server_port: int = help_field(8000, "vLLM only.")
    vllm_server_timeout: float = help_field(240.0, "vLLM only.")
    vllm_group_port: int = help_field(51216, "vLLM only.")
    vllm_gpu_memory_utilization: float = help_field(0.3, "vLLM only.")
    vllm_max_model_length: int | None = help_field(None, "vLLM only.")
    vllm_tensor_parallel_size: int = help_field(1, "vLLM only.")

    def __post_init__(self) -> None:
        self._reject_unimplemented()
        self._check_values()
        super().__post_init__()
        self._resolve_generation_batch()

    def _reject_unimplemented(self) -> None:
        refuse_unimplemented(self)  # before the value checks, so the message names the unimplemented field
        if self.auto_find_batch_size:
            raise NotImplementedError(
                f"{type(self).__name__}.auto_find_batch_size=True is not implemented: the generation batch must "
                "hold whole prompt groups; lower per_device_train_batch_size instead"
            )
        if self.generation_kwargs:
            raise NotImplementedError(
                f"{type(self).__name__}.generation_kwargs={self.generation_kwargs!r} is not implemented: use "
                "temperature, top_p, top_k and max_completion_length"
            )
        if self.chat_template_kwargs:
            raise NotImplementedError(
                f"{type(self).__name__}.chat_template_kwargs={self.chat_template_kwargs!r} is not implemented: "
                "prompts are rendered with the tokenizer's chat template and its generation prompt"
            )

    def _check_values(self) -> None:
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations={self.num_generations}: a group needs at least 2 completions per prompt "
                "to compare them"
            )
        for name in ("max_completion_length", "num_iterations", "ref_model_sync_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if isinstance(self.pad_to_multiple_of, str):
            value = self.pad_to_multiple_of.lower()
            self.pad_to_multiple_of = None if value in ("auto", "none", "null") else int(value)
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon

    def _resolve_generation_batch(self) -> None:
        """TRL's rule: one of generation_batch_size / steps_per_generation, else one optimizer step's worth."""
        world = self.world_size
        global_micro = self.per_device_train_batch_size * world
        if self.generation_batch_size is not None and self.steps_per_generation is not None:
            raise ValueError("generation_batch_size and steps_per_generation cannot both be set")
        if self.generation_batch_size is not None:
            if self.generation_batch_size % global_micro:
                raise ValueError(
                    f"generation_batch_size={self.generation_batch_size} must be a multiple of "
                    f"per_device_train_batch_size x processes = {global_micro}"
                )
            self.steps_per_generation = self.generation_batch_size // global_micro
        if self.steps_per_generation is None:
            self.steps_per_generation = self.gradient_accumulation_steps
        self.generation_batch_size = global_micro * self.steps_per_generation
        if self.generation_batch_size % self.num_generations:
            raise ValueError(
                f"num_generations={self.num_generations} does not divide the generation batch of "
                f"{self.generation_batch_size} completions (per_device_train_batch_size="
                f"{self.per_device_train_batch_size} x {world} processes x steps_per_generation="
                f"{self.steps_per_generation}): every prompt needs its whole group in one generation"
            )
        steps, accumulation = self.steps_per_generation, self.gradient_accumulation_steps
        if steps % accumulation:
            raise NotImplementedError(
                f"steps_per_generation={steps} is not a multiple of gradient_accumulation_steps={accumulation}: "
                "an optimizer step spanning two generations is not implemented"
            )


@dataclass
@unimplemented_fields(GRPO_UNIMPLEMENTED)
class GRPOConfig(OnlineConfig):
    """Configuration of `GRPOTrainer` (TRL 1.16's GRPOConfig fields and defaults)."""

    delta: float | None = help_field(
        None, "Upper cap of the unclipped ratio (two-sided clipping, arXiv:2505.07291)."
    )
    importance_sampling_level: str = help_field(
        "token", "'token' ratios, or 'sequence' (GSPO, arXiv:2507.18071)."
    )
    multi_objective_aggregation: str = help_field(
        "sum_then_normalize", "'sum_then_normalize' or 'normalize_then_sum'."
    )
    scale_rewards: str | bool = help_field(
        "group", "Divide advantages by the std of the 'group', the 'batch', or 'none'."
    )
    loss_type: str = help_field("dapo", "'grpo', 'bnpo', 'dr_grpo' or 'dapo' (see rlhf_core.losses.grpo).")
    use_bias_correction_kl: bool = help_field(True, "Weight the KL term by the importance ratio.")
    # ---- inert: read only by loss types and vLLM modes that raise --------------------------------------------
    sapo_temperature_neg: float = help_field(1.05, "loss_type='sapo' only (not implemented).")
    sapo_temperature_pos: float = help_field(1.0, "loss_type='sapo' only (not implemented).")
    vespo_k_pos: float = help_field(2.0, "loss_type='vespo' only (not implemented).")
    vespo_lambda_pos: float = help_field(3.0, "loss_type='vespo' only (not implemented).")
    vespo_k_neg: float = help_field(3.0, "loss_type='vespo' only (not implemented).")
    vespo_lambda_neg: float = help_field(2.0, "loss_type='vespo' only (not implemented).")
    entropy_coef_min: float = help_field(0.0, "use_adaptive_entropy only (not implemented).")
    entropy_coef_max: float = help_field(1.0, "use_adaptive_entropy only (not implemented).")
    entropy_coef_delta: float = help_field(0.005, "use_adaptive_entropy only (not implemented).")
    entropy_target: float = help_field(0.2, "use_adaptive_entropy only (not implemented).")
    vllm_importance_sampling_correction: bool = help_field(True, "vLLM only.")
    vllm_importance_sampling_mode: str = help_field("sequence_mask", "vLLM only.")
    vllm_importance_sampling_clip_max: float | None = help_field(3.0, "vLLM only.")
    vllm_importance_sampling_clip_min: float | None = help_field(None, "vLLM only.")
    vllm_importance_sampling_cap: float | None = help_field(None, "vLLM only (deprecated in TRL).")

    def _check_values(self) -> None:
        super()._check_values()
        self.scale_rewards = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards={self.scale_rewards!r}: use 'group', 'batch' or 'none'")
        from rlhf_core.losses.grpo import GRPO_LOSS_TYPES

        if self.loss_type in ("cispo", "sapo", "vespo", "luspo"):
            raise NotImplementedError(
                f"GRPOConfig.loss_type={self.loss_type!r} is not implemented: choose one of {sorted(GRPO_LOSS_TYPES)}"
            )
        if self.loss_type not in GRPO_LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r}: choose one of {sorted(GRPO_LOSS_TYPES)}")
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ValueError(
                f"importance_sampling_level={self.importance_sampling_level!r}: use 'token' or 'sequence'"
            )
        if self.multi_objective_aggregation not in ("sum_then_normalize", "normalize_then_sum"):
            raise ValueError(
                f"multi_objective_aggregation={self.multi_objective_aggregation!r}: use 'sum_then_normalize' "
                "or 'normalize_then_sum'"
            )


@dataclass
class RLOOConfig(OnlineConfig):
    """Configuration of `RLOOTrainer` (TRL 1.16's RLOOConfig fields and defaults)."""

    num_generations: int = help_field(2, "Completions sampled per prompt (k in the RLOO paper).")
    beta: float = help_field(
        0.05, "KL coefficient: the summed k1 KL to the reference is subtracted from the reward."
    )
    normalize_advantages: bool = help_field(False, "Whiten the leave-one-out advantages over the batch.")
    reward_clip_range: tuple[float, float] | None = help_field(
        None, "Clip the aggregated reward to (low, high)."
    )
