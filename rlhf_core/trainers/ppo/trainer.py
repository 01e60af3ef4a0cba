"""PPOTrainer: RLHF with PPO (Ziegler et al. 2019, arXiv:1909.08593; PPO: arXiv:1707.06347).

Two ways in:

* the full loop, TRL's modern shape::

      PPOTrainer(args=PPOConfig(...), model=policy, ref_model=None, reward_model=rm  # or reward_fn=fn
                 value_model=None, train_dataset=prompts, processing_class=tokenizer).train()

* the classic API (``generate`` / ``step`` / ``save_pretrained``, see ``classic.py``)::

      PPOTrainer(config=PPOConfig(...), model=model, ref_model=ref_model, tokenizer=tokenizer)

One update is one straight path: ``RolloutEngine.make_experience`` (``experience.py``) samples ``batch_size``
responses (KV-cache sampling), scores them, computes old log-probs, values and reference log-probs in no-grad
micro-batches through the fused log-prob kernel and turns the scores into KL-penalised per-token rewards and GAE
advantages; ``run_ppo_epochs`` (``optimisation.py``) then runs ``num_ppo_epochs`` epochs of clipped policy and
value losses over that ``Experience``. ``step()`` joins the same path with the episodes it is given. It is built
on ``transformers.Trainer``: its accelerator, optimizer and scheduler creation, checkpoint saving (and resuming),
callbacks and ``log()``; one Trainer "step" is one PPO update.

``value_model=None`` puts a value head on the policy's last hidden state (the classic value-head model: one
body forward gives log-probs and values). Pass a ``value_model`` (e.g. a sequence classifier initialised from the
reward model, as TRL does) for a separate critic.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerState
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import TrainOutput

from rlhf_core.data.collators import PromptCollator
from rlhf_core.data.tokenization import tokenize_prompts
from rlhf_core.models.module_state import disable_dropout, freeze
from rlhf_core.models.pad_token import ensure_pad_token
from rlhf_core.models.reference import create_reference_model
from rlhf_core.models.value_head import AutoModelForCausalLMWithValueHead
from rlhf_core.rollout.sampling import episode_seeds
from rlhf_core.rollout.scoring import RewardFn
from rlhf_core.trainers.base import raise_nonfinite
from rlhf_core.trainers.model_setup import (
    apply_peft,
    is_peft_model,
    load_model,
    load_processing_class,
    resolve_processing_class_alias,
)
from rlhf_core.trainers.ppo.checkpoint import PPOCheckpointMixin, prompt_batches
from rlhf_core.trainers.ppo.classic import ClassicPPOMixin
from rlhf_core.trainers.ppo.config import PPOConfig
from rlhf_core.trainers.ppo.experience import Experience, RolloutEngine
from rlhf_core.trainers.ppo.kl_control import build_kl_controller
from rlhf_core.trainers.ppo.metrics import EpisodeProgressCallback, MetricsWindow, rollout_metrics
from rlhf_core.trainers.ppo.optimisation import run_ppo_epochs
from rlhf_core.trainers.ppo.policy_value import PolicyAndValue
from rlhf_core.trainers.ppo.samples import is_sample_update, sample_rows

logger = logging.getLogger(__name__)

__all__ = ["PPOTrainer", "PPOTrainerState"]


@dataclass
class PPOTrainerState(TrainerState):
    """TrainerState plus ``episode``: prompts answered so far (the progress bar's unit)."""

    episode: int = 0


class PPOTrainer(PPOCheckpointMixin, ClassicPPOMixin, Trainer):
    """PPO with a KL penalty to a reference model; see the module docstring."""

    def __init__(
        self,
        args: PPOConfig | None = None,
        processing_class: Any = None,
        model: nn.Module | str | None = None,
        ref_model: nn.Module | str | None = None,
        reward_model: nn.Module | str | None = None,
        train_dataset: Any = None,
        value_model: nn.Module | str | None = None,
        data_collator: Any = None,
        eval_dataset: Any = None,
        optimizers: tuple[Any, Any] = (None, None),
        callbacks: list[Any] | None = None,
        peft_config: Any = None,
        *,
        reward_fn: RewardFn | None = None,
        config: PPOConfig | None = None,
        tokenizer: Any = None,
        dataset: Any = None,
        num_shared_layers: int | None = None,
    ) -> None:
        if isinstance(processing_class, nn.Module):
            # TRL's classic positional order: PPOTrainer(config, model, ref_model, tokenizer, dataset)
            dataset = dataset if dataset is not None else reward_model
            processing_class, model, ref_model, reward_model = ref_model, processing_class, model, None
        args = _resolve_args(args, config)
        model = args.sft_model_path if model is None else model  # TRL 1.12's names for the models to load
        if reward_model is None and reward_fn is None:
            reward_model = args.reward_model_path
        _check_models(model, ref_model, reward_model, reward_fn)
        processing_class = _resolve_tokenizer(model, processing_class, tokenizer)
        wrapper, ref_model, reward_model = self._build_models(
            args, model, ref_model, reward_model, value_model, peft_config, num_shared_layers
        )
        train_dataset = train_dataset if train_dataset is not None else dataset
        prompts = self._tokenize(train_dataset, processing_class, args) if train_dataset is not None else None
        super().__init__(
            model=wrapper,
            args=args,
            data_collator=data_collator or PromptCollator(processing_class.pad_token_id),
            train_dataset=prompts,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self._init_ppo(ref_model, reward_model, reward_fn)

    # ---- construction helpers ----------------------------------------------------------------------------

    def _init_ppo(self, ref_model: nn.Module | None, reward_model: nn.Module | None, reward_fn: Any) -> None:
        """What PPO adds once Trainer is set up: frozen models on the device, episode state, KL control, rollout."""
        for module in (ref_model, reward_model):
            if module is not None:
                module.to(self.accelerator.device)
        self.state = PPOTrainerState(
            is_local_process_zero=self.is_local_process_zero(),
            is_world_process_zero=self.is_world_process_zero(),
            stateful_callbacks=self.state.stateful_callbacks,
        )
        self.kl_ctl = build_kl_controller(self.args.kl_coef, self.args.kl_target, self.args.kl_horizon)
        self.rollout = RolloutEngine(
            config=self.args,
            tokenizer=self.processing_class,
            model=lambda: self.accelerator.unwrap_model(self.model),
            ref_model=ref_model,
            reward_model=reward_model,
            reward_fn=reward_fn,
            autocast=self.accelerator.autocast,
            all_reduce=self._sum_over_processes if self.accelerator.num_processes > 1 else None,
        )
        self._prepared = False
        self.sample_generations: list[dict[str, Any]] = []  # num_sample_generations' records (samples.py)

    @staticmethod
    def _build_models(args, model, ref_model, reward_model, value_model, peft_config, num_shared_layers):
        from rlhf_core.models.loading import load_causal_lm, load_sequence_classifier

        kwargs = args.model_init_kwargs
        if isinstance(model, str):
            model = AutoModelForCausalLMWithValueHead(load_model(model, model_init_kwargs=kwargs))
        policy = model.pretrained_model if isinstance(model, AutoModelForCausalLMWithValueHead) else model
        peft_policy = apply_peft(
            policy, peft_config, gradient_checkpointing=bool(args.gradient_checkpointing)
        )
        if peft_policy is not policy:
            model = peft_policy if not isinstance(model, AutoModelForCausalLMWithValueHead) else model
            if isinstance(model, AutoModelForCausalLMWithValueHead):
                model.pretrained_model = peft_policy
        if isinstance(value_model, str):
            value_model = load_sequence_classifier(value_model, num_labels=1, **(kwargs or {}))
        wrapper = PolicyAndValue.build(model, value_model)
        _select_adapters(wrapper.policy, ref_model, args)
        if isinstance(ref_model, str):
            ref_model = load_causal_lm(ref_model, **(kwargs or {}))
        elif isinstance(ref_model, AutoModelForCausalLMWithValueHead):
            ref_model = ref_model.pretrained_model
        if ref_model is None and not is_peft_model(wrapper.policy):
            ref_model = create_reference_model(wrapper.policy, num_shared_layers=num_shared_layers)
        if isinstance(reward_model, str):
            reward_model = load_sequence_classifier(reward_model, num_labels=1, **(kwargs or {}))
        freeze(ref_model)
        freeze(reward_model)
        if args.disable_dropout:
            for module in (wrapper, ref_model, reward_model):
                disable_dropout(module)
        return wrapper, ref_model, reward_model

    @staticmethod
    def _tokenize(dataset: Any, tokenizer: Any, args: PPOConfig) -> Any:
        columns = getattr(dataset, "column_names", None) or []
        if "input_ids" in columns:
            return dataset
        return tokenize_prompts(
            dataset, tokenizer, max_prompt_length=args.max_prompt_length, num_proc=args.dataset_num_proc
        )

    def _prepare(self, num_optimizer_steps: int | None) -> None:
        """Create the optimizer and scheduler (Trainer's own) and hand them to the accelerator, once."""
        if self._prepared:
            return
        if num_optimizer_steps is None:  # classic step(): no known horizon, so no decay
            self.args.lr_scheduler_type = "constant_with_warmup"
            num_optimizer_steps = max(self.args.max_steps, 1)
        self.create_optimizer_and_scheduler(num_training_steps=num_optimizer_steps)
        if self.args.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs
            )
        self.model_wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.callback_handler.optimizer, self.callback_handler.lr_scheduler = (
            self.optimizer,
            self.lr_scheduler,
        )
        self._prepared = True

    # ---- the full loop -----------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> TrainOutput:
        """Run ``total_episodes`` episodes (or ``max_steps`` updates) of PPO on ``train_dataset``."""
        if self.train_dataset is None:
            raise ValueError("train() needs train_dataset= (prompts); use step() for the classic API")
        if self.rollout.reward_model is None and self.rollout.reward_fn is None:
            raise ValueError("train() needs reward_model= or reward_fn= to score the responses")
        args = self.args
        per_update = args.batch_size * self.accelerator.num_processes
        if len(self.train_dataset) < per_update:
            raise ValueError(
                f"train_dataset has {len(self.train_dataset)} prompts, fewer than one update needs "
                f"(batch_size={args.batch_size} x {self.accelerator.num_processes} processes)"
            )
        total_episodes = args.total_episodes or int(args.num_train_epochs * len(self.train_dataset))
        num_updates = args.max_steps if args.max_steps > 0 else max(math.ceil(total_episodes / per_update), 1)
        self._prepare(num_updates * args.num_ppo_epochs * args.num_mini_batches)
        self._init_state(num_updates, total_episodes if args.max_steps <= 0 else num_updates * per_update)
        start = self._resume(resume_from_checkpoint) if resume_from_checkpoint else 0
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        batches = prompt_batches(self.train_dataset, self.data_collator, args, self.accelerator, skip=start)
        window, losses, started = MetricsWindow(), [], time.time()
        for _ in range(start, num_updates):
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            batch = next(batches)
            metrics = self._run_update(batch)
            losses.append(metrics.pop("loss/total"))
            window.add(metrics)
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.control.should_log:
                self.log({**window.pop(), "episode": self.state.episode})
            if self.control.should_save:
                self._save_checkpoint(self.model, trial=None)
                self.control = self.callback_handler.on_save(args, self.state, self.control)
            if self.control.should_training_stop:
                break
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        runtime = time.time() - started
        train_loss = sum(losses) / max(len(losses), 1)
        metrics = {"train_runtime": runtime, "train_loss": train_loss, "episode": self.state.episode}
        return TrainOutput(self.state.global_step, train_loss, metrics)

    def _init_state(self, num_updates: int, total_episodes: int) -> None:
        args, state = self.args, self.state
        state.global_step, state.episode, state.epoch = 0, 0, 0.0
        state.max_steps = num_updates
        state.num_train_epochs = total_episodes / len(self.train_dataset)
        for name in ("logging_steps", "eval_steps", "save_steps"):
            value = getattr(args, name)
            if value is not None:
                setattr(state, name, math.ceil(num_updates * value) if value < 1 else int(value))
        for callback in list(self.callback_handler.callbacks):
            if isinstance(callback, ProgressCallback):
                self.callback_handler.remove_callback(callback)
                self.add_callback(EpisodeProgressCallback(total_episodes))

    def _run_update(self, batch: dict[str, Any]) -> dict[str, float]:
        """One PPO update of the full loop: prompts -> ``Experience`` -> the optimisation epochs over it."""
        device = self.accelerator.device
        started, kl_coef = time.time(), self.kl_ctl.value
        update = self.state.global_step + 1
        # Seeds per episode (its place in the global batch): N processes sample what 1 process would.
        first = self.accelerator.process_index * self.args.batch_size
        seeds = episode_seeds(self.args.seed, update, range(first, first + len(batch["input_ids"])))
        exp = self.rollout.make_experience(
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch.get("prompt"),
            kl_coef,
            seeds,
        )
        if is_sample_update(update, self.state.max_steps, self.args.num_sample_generations):
            self.sample_generations += sample_rows(exp, self.processing_class, update)
        metrics = self._optimise(exp, kl_coef, rollout_seconds=time.time() - started)
        self.state.epoch = self.state.episode / len(self.train_dataset)
        return metrics

    def _optimise(self, exp: Experience, kl_coef: float, *, rollout_seconds: float) -> dict[str, float]:
        """The PPO epochs on one ``Experience``, then the KL-controller update, trainer state and metrics."""
        lr = self._current_lr()  # the rate this update uses (the scheduler steps during it)
        metrics = rollout_metrics(exp, kl_coef=kl_coef, stop_ids=self.rollout.stop_ids)
        started = time.time()
        stats = run_ppo_epochs(
            exp,
            model=self.model_wrapped,
            optimizer=self.optimizer,
            lr_scheduler=self.lr_scheduler,
            accelerator=self.accelerator,
            config=self.args,
            on_nonfinite=self._stop_nonfinite,
        )
        metrics.update(stats.means())
        metrics = self._mean_over_processes(metrics)
        episodes = len(exp) * self.accelerator.num_processes
        self.kl_ctl.update(metrics["objective/kl"], n_steps=episodes)
        self.state.global_step += 1
        self.state.episode += episodes
        metrics["loss/total"] = stats.loss_total / max(stats.optimizer_steps, 1)
        metrics["time/rollout"], metrics["time/optimisation"] = rollout_seconds, time.time() - started
        metrics["lr"] = lr
        return metrics

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="sum")

    def _mean_over_processes(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], device=self.accelerator.device)
        values = self.accelerator.reduce(values, reduction="mean")
        return dict(zip(keys, values.tolist()))

    def _current_lr(self) -> float:
        return (
            float(self.lr_scheduler.get_last_lr()[0])
            if self.lr_scheduler is not None
            else self.args.learning_rate
        )

    def _stop_nonfinite(self, what: str, value: float, micro_batch: int | None) -> None:
        step = self.state.global_step + 1
        where = f"micro-batch {micro_batch + 1}" if micro_batch is not None else "the accumulated gradient"
        episodes = f"episodes {self.state.episode + 1}-{self.state.episode + self.args.batch_size}"
        where = f"update {step} ({where}, {episodes})"
        causes = "a learning rate too high, non-finite scores from the reward, or fp16 overflow"
        raise_nonfinite(
            self, what, value, micro_batch=micro_batch, row_ids=None, where=where, causes=causes, label="PPO "
        )

    @property
    def tokenizer(self) -> Any:
        """TRL's old ``ppo_trainer.tokenizer``."""
        return self.processing_class


def _resolve_args(args: PPOConfig | None, config: PPOConfig | None) -> PPOConfig:
    if args is not None and config is not None and args is not config:
        raise ValueError(
            "args= and config= were both given: `config` is the classic alias of `args`, pass one"
        )
    args = args if args is not None else config
    if args is None:
        args = PPOConfig(output_dir="ppo_output")
    if not isinstance(args, PPOConfig):
        raise TypeError(f"PPOTrainer needs a PPOConfig, got {type(args).__name__}")
    return args


def _check_models(model: Any, ref_model: Any, reward_model: Any, reward_fn: Any) -> None:
    if model is None:
        raise ValueError("PPOTrainer needs a model (a causal LM object, a name/path or 'rlhf-tiny')")
    if ref_model is not None and ref_model is model:
        raise ValueError(
            "model and ref_model are the same object: pass a copy (create_reference_model) or None"
        )
    if reward_model is not None and reward_fn is not None:
        raise ValueError("pass reward_model= or reward_fn=, not both")


def _resolve_tokenizer(model: Any, processing_class: Any, tokenizer: Any) -> Any:
    """``processing_class`` or its alias ``tokenizer``, else the tokenizer saved with the model."""
    processing_class = resolve_processing_class_alias(processing_class, tokenizer)
    if processing_class is None:
        processing_class = load_processing_class(model)
    ensure_pad_token(processing_class)
    return processing_class


def _select_adapters(policy: nn.Module, ref_model: Any, args: PPOConfig) -> None:
    """TRL 1.12's adapter names: the policy trains ``model_adapter_name``; its reference is ``ref_adapter_name``."""
    names = [n for n in (args.model_adapter_name, args.ref_adapter_name) if n is not None]
    if not names:
        return
    if not is_peft_model(policy):
        raise ValueError("model_adapter_name / ref_adapter_name need a PEFT policy with those adapters")
    missing = [n for n in names if n not in policy.peft_config]
    if missing:
        raise ValueError(f"the policy has no adapter {missing}; its adapters: {sorted(policy.peft_config)}")
    if args.ref_adapter_name is not None and ref_model is not None:
        raise ValueError(
            "ref_adapter_name picks the reference among the policy's adapters: pass ref_model=None"
        )
    if args.model_adapter_name is not None:
        policy.set_adapter(args.model_adapter_name)
