"""The loop GRPO and RLOO share: sample groups of completions, score them, then optimise the policy on them.

Built on ``transformers.Trainer`` as PPOTrainer is: its accelerator, optimizer and scheduler creation, callbacks
(progress bar, MLflow, ...), ``log()`` and checkpoint saving. It owns its loop like PPO: one *generation*
(sampling with the KV-cache decode loop, rewards, group advantages, reference log-probs in no-grad micro-batches
through the fused kernel) is followed by ``num_iterations`` passes of ``steps_per_generation`` micro-batches;
every ``gradient_accumulation_steps`` micro-batches make one optimizer step (one Trainer "step").

Subclasses say how rewards become advantages (``_advantages``) and what each micro-batch minimises (``_loss``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import TrainOutput

from rlhf_core.data.collators import PromptCollator
from rlhf_core.data.tokenization import tokenize_prompts
from rlhf_core.losses.grpo import PolicyLossOutput
from rlhf_core.models.pad_token import resolve_pad_token_id
from rlhf_core.rollout.logprobs import ResponseBatch
from rlhf_core.rollout.sampling import SamplingParams
from rlhf_core.trainers.online.checkpoint import GenerationBuffer, OnlineCheckpointMixin
from rlhf_core.trainers.online.config import OnlineConfig
from rlhf_core.trainers.online.evaluation import evaluate_generations
from rlhf_core.trainers.online.groups import (
    GroupBatch,
    generation_rows,
    local_examples,
    local_seeds,
    sample_completions,
)
from rlhf_core.trainers.online.metrics import (
    COMPLETIONS_FILE,
    CompletionLog,
    append_jsonl,
    completion_metrics,
    reward_metrics,
)
from rlhf_core.trainers.online.models import build_models, sync_reference
from rlhf_core.trainers.online.policy import CompletionPolicy
from rlhf_core.trainers.online.reward_functions import RewardFunctions
from rlhf_core.trainers.ppo.experience import reference_logprobs
from rlhf_core.trainers.ppo.metrics import MetricsWindow

__all__ = ["OnlineTrainer", "Rollout"]


class Rollout:
    """One generation, ready to optimise on: this process's rows, [L, R] log-prob tensors, [L] advantages."""

    def __init__(self, group: GroupBatch, mask: torch.Tensor, advantages: torch.Tensor,
                 old_logps: torch.Tensor | None, ref_logps: torch.Tensor | None, num_items: float) -> None:  # fmt: skip
        self.group, self.mask, self.advantages = group, mask, advantages
        self.old_logps, self.ref_logps, self.num_items = old_logps, ref_logps, num_items


class OnlineTrainer(OnlineCheckpointMixin, Trainer):
    """Shared construction and loop of GRPOTrainer and RLOOTrainer (see the module docstring)."""

    config_class: type[OnlineConfig] = OnlineConfig
    _name = "online"
    _kl_in_loss = True  # GRPO: the KL is a loss term (logged per micro-batch); RLOO: a reward term

    def __init__(
        self,
        model: nn.Module | str,
        reward_funcs: Any = None,
        args: OnlineConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: list[Any] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        peft_config: Any = None,
        **unsupported: Any,
    ) -> None:
        self._reject_unsupported(unsupported)
        args = args if args is not None else self.config_class(output_dir=f"{self._name}_output")
        if not isinstance(args, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(args).__name__}"
            )
        policy, ref_model, processing_class = build_models(model, args, processing_class, peft_config)
        self.pad_id = resolve_pad_token_id(processing_class)
        self.rewards = RewardFunctions(
            reward_funcs, weights=args.reward_weights, processing_classes=reward_processing_classes,
            policy_tokenizer=processing_class, model_init_kwargs=args.model_init_kwargs,
        )  # fmt: skip
        prompts = self._tokenize(train_dataset, processing_class) if train_dataset is not None else None
        eval_prompts = (
            None if eval_dataset is None else self._tokenize(eval_dataset, processing_class, "eval_dataset")
        )
        super().__init__(
            model=CompletionPolicy(policy), args=args, data_collator=PromptCollator(self.pad_id),
            train_dataset=prompts, eval_dataset=eval_prompts, processing_class=processing_class, callbacks=callbacks, optimizers=optimizers,
        )  # fmt: skip
        self.ref_model = ref_model
        for module in [ref_model, *self.rewards.models]:
            if module is not None:
                module.to(self.accelerator.device)
        eos = processing_class.eos_token_id
        self.stop_ids = [int(eos)] if eos is not None else []
        self.completion_log = CompletionLog(args.num_completions_to_print, args.log_unique_prompts)
        self._prepared = False

    @staticmethod
    def _reject_unsupported(unsupported: dict[str, Any]) -> None:
        given = {k: v for k, v in unsupported.items() if v is not None}
        if given:
            names = ", ".join(sorted(given))
            raise NotImplementedError(
                f"{names}: not implemented (tools, rollout functions, environments, quantisation)"
            )

    @staticmethod
    def _tokenize(dataset: Any, tokenizer: Any, name: str = "train_dataset") -> Any:
        columns = list(getattr(dataset, "column_names", None) or (dataset[0].keys() if len(dataset) else []))
        if "prompt" not in columns:
            raise ValueError(
                f"{name} has no 'prompt' column (its columns: {columns}): GRPO/RLOO need prompts"
            )
        return tokenize_prompts(dataset, tokenizer)

    # ---- set-up --------------------------------------------------------------------------------------------

    def _prepare(self, num_optimizer_steps: int) -> None:
        """Trainer's optimizer and scheduler, handed to the accelerator with the model, once."""
        if self._prepared:
            return
        self.create_optimizer_and_scheduler(num_training_steps=num_optimizer_steps)
        if self.args.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs
                or {"use_reentrant": False}
            )
        self.model_wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.callback_handler.optimizer = self.optimizer
        self.callback_handler.lr_scheduler = self.lr_scheduler
        self._prepared = True

    @property
    def prompts_per_generation(self) -> int:
        return self.args.generation_batch_size // self.args.num_generations

    @property
    def optimizer_steps_per_generation(self) -> int:
        args = self.args
        return args.steps_per_generation * args.num_iterations // args.gradient_accumulation_steps

    def _num_updates(self) -> int:
        args, n = self.args, len(self.train_dataset)
        if n < self.prompts_per_generation:
            raise ValueError(
                f"train_dataset has {n} prompts, fewer than one generation needs ({self.prompts_per_generation} = "
                f"generation_batch_size {args.generation_batch_size} / num_generations {args.num_generations})"
            )
        if args.max_steps > 0:
            return args.max_steps
        generations = math.ceil(args.num_train_epochs * (n // self.prompts_per_generation))
        return max(generations, 1) * self.optimizer_steps_per_generation

    # ---- the loop ------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> TrainOutput:
        """Optimise for ``max_steps`` optimizer steps (else ``num_train_epochs`` over the prompts).

        ``resume_from_checkpoint``: a checkpoint folder of this run, or True for the output_dir's last one.
        """
        if self.train_dataset is None:
            raise ValueError("train() needs train_dataset= (a dataset with a 'prompt' column)")
        args, num_updates = self.args, self._num_updates()
        self._prepare(num_updates)
        self._init_state(num_updates)
        self._buffer = self._resume(resume_from_checkpoint) if resume_from_checkpoint else None
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        rows = generation_rows(len(self.train_dataset), prompts_per_generation=self.prompts_per_generation,
                               shuffle=args.shuffle_dataset, seed=args.seed, skip=self._generations)  # fmt: skip
        window, losses, started = MetricsWindow(), [], time.time()
        while self.state.global_step < num_updates and not self.control.should_training_stop:
            # The first optimizer step of a generation includes sampling and scoring (as in TRL's loop).
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            if self._buffer is None or self._buffer.exhausted:
                rollout = self._generate_and_score(next(rows), window)
                self._buffer = GenerationBuffer(rollout, list(self._optimizer_step_batches(rollout)))
            buffer, first = self._buffer, self._buffer.next_step
            while not buffer.exhausted:
                if buffer.next_step > first:
                    self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
                micro_batches = buffer.steps[buffer.next_step]
                buffer.next_step += 1  # before the step's checkpoint, which records what is left
                losses.append(self._optimizer_step(buffer.rollout, micro_batches, window))
                self._finish_step(window)
                if self.state.global_step >= num_updates or self.control.should_training_stop:
                    break
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        train_loss = sum(losses) / max(len(losses), 1)
        metrics = {"train_runtime": time.time() - started, "train_loss": train_loss}
        return TrainOutput(self.state.global_step, train_loss, metrics)

    def _init_state(self, num_updates: int) -> None:
        state = self.state
        state.global_step, state.epoch, state.max_steps = 0, 0.0, num_updates
        state.num_train_epochs = self.args.num_train_epochs
        for name in ("logging_steps", "eval_steps", "save_steps"):
            value = getattr(self.args, name)
            if value is not None:
                setattr(state, name, math.ceil(num_updates * value) if value < 1 else int(value))
        self._generations = 0

    def _finish_step(self, window: MetricsWindow) -> None:
        self.state.global_step += 1
        self.control = self.callback_handler.on_step_end(self.args, self.state, self.control)
        due = self.state.global_step % self.args.ref_model_sync_steps == 0
        if self.args.sync_ref_model and self.ref_model is not None and due:
            sync_reference(self.ref_model, self._policy(), self.args.ref_model_mixup_alpha)
        if self.control.should_log:
            logs = self._mean_over_processes({**window.pop(), **self.completion_log.pop_metrics()})
            logs = {
                k: v for k, v in logs.items() if not math.isnan(v)
            }  # a function that abstained throughout
            logs["learning_rate"] = self._last_lr
            self.log(logs)
            rows = self.completion_log.pop()
            if self.is_world_process_zero() and self.args.should_save:
                # the table of each log, for whoever tracks the run (the pipeline logs it to MLflow)
                append_jsonl(os.path.join(self.args.output_dir, COMPLETIONS_FILE), rows)
            if self.args.log_completions and self.is_world_process_zero():
                self.completion_log.print(self.state.global_step, rows)
        if self.control.should_evaluate and self.eval_dataset is not None:
            self.evaluate()
        if self.control.should_save:
            self._save_checkpoint(self.model, trial=None)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"):
        """Sample ``num_generations_eval`` completions per eval prompt, score them, log and return the metrics."""
        dataset = (
            self.eval_dataset
            if eval_dataset is None
            else self._tokenize(eval_dataset, self.processing_class, "eval_dataset")
        )
        if dataset is None:
            raise ValueError("evaluate() needs eval_dataset= (a dataset with a 'prompt' column)")
        metrics = evaluate_generations(self, dataset, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    def _policy(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model).policy

    # ---- one generation ------------------------------------------------------------------------------------

    def _needs_old_logps(self) -> bool:
        """pi_old differs from the policy being optimised once a generation spans several optimizer steps."""
        return self.optimizer_steps_per_generation > 1

    @torch.no_grad()
    def _generate_and_score(self, rows: list[int], window: MetricsWindow) -> Rollout:
        args, acc = self.args, self.accelerator
        examples = local_examples(self.train_dataset, rows, num_generations=args.num_generations,
                                  rank=acc.process_index, world=acc.num_processes)  # fmt: skip
        group = sample_completions(
            self._policy(), examples, tokenizer=self.processing_class, collator=self.data_collator,
            max_completion_length=args.max_completion_length, sampling=self._sampling(),
            stop_token_ids=self.stop_ids, return_logprobs=self._needs_old_logps(), device=acc.device,
            num_generations=args.num_generations,
            row_seeds=local_seeds(args.seed, self._generations, len(examples), rank=acc.process_index),
        )  # fmt: skip
        mask = group.batch.response_mask
        if args.mask_truncated_completions:
            mask = mask * group.finished[:, None].to(mask.dtype)
        ref_logps = self._reference_logprobs(group) if args.beta != 0.0 else None
        local = self.rewards(group.prompts, group.completions, group.completion_ids,
                             {**group.columns, **self._reward_kwargs()}, device=acc.device,
                             micro_batch_size=args.per_device_train_batch_size)  # fmt: skip
        rewards = acc.gather(local)
        advantages, extra = self._advantages(rewards, group, ref_logps)
        share = slice(acc.process_index * len(examples), (acc.process_index + 1) * len(examples))
        self._record_generation(group, rewards, advantages, share, extra, window)
        num_items = float(acc.gather(mask.sum().reshape(1)).sum()) / acc.num_processes
        return Rollout(group, mask, advantages[share], group.logprobs, ref_logps, num_items)

    def _sampling(self) -> SamplingParams:
        args = self.args
        return SamplingParams(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p)

    def _reward_kwargs(self) -> dict[str, Any]:
        return {"trainer_state": self.state, "log_extra": self.completion_log.add_column,
                "log_metric": self.completion_log.add_metric}  # fmt: skip

    def _reference_logprobs(self, group: GroupBatch) -> torch.Tensor:
        return reference_logprobs(group.batch, ref_model=self.ref_model, policy=self._policy(),
                                  temperature=self.args.temperature,
                                  micro_batch_size=self.args.per_device_train_batch_size)  # fmt: skip

    def _advantages(
        self, rewards_per_func: torch.Tensor, group: GroupBatch, ref_logps: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(advantages [N] over all processes' completions, extra metrics). Subclasses implement it."""
        raise NotImplementedError

    def _record_generation(self, group, rewards, advantages, share, extra, window: MetricsWindow) -> None:
        acc = self.accelerator
        lengths = acc.gather(group.batch.response_mask.sum(-1))
        finished = acc.gather(group.finished.long())
        metrics = {**reward_metrics(rewards, self.rewards), **completion_metrics(lengths, finished), **extra}
        self._generations += 1
        self.state.epoch = self._generations / max(len(self.train_dataset) // self.prompts_per_generation, 1)
        metrics["num_tokens"] = float(
            acc.gather(group.batch.prompt_mask.sum().reshape(1)).sum() + lengths.sum()
        )
        window.add(metrics)
        self.completion_log.add(  # the step: the first optimizer step that trains on them
            self.state.global_step + 1, group, rewards[share], advantages[share], self.rewards.names
        )

    # ---- optimisation --------------------------------------------------------------------------------------

    def _loss_ignores_micro_batching(self) -> bool:
        """Whether the summed loss of an optimizer step is the same however its rows are cut into micro-batches."""
        return False

    def _row_order(self, rollout: Rollout) -> torch.Tensor:
        """The rows in micro-batch order: shuffled, as TRL does, unless each optimizer step takes the whole
        generation and the loss ignores how it is cut; then by prompt length (stable, so each prompt's copies stay
        together): a micro-batch pads to fewer columns and holds fewer distinct prompts to run."""
        args = self.args
        whole = args.steps_per_generation == args.gradient_accumulation_steps
        if not (whole and self._loss_ignores_micro_batching()):
            return torch.randperm(len(rollout.advantages))
        lengths = rollout.group.batch.prompt_mask.sum(-1).cpu()
        return torch.sort(lengths, descending=True, stable=True).indices

    def _optimizer_step_batches(self, rollout: Rollout):
        """Row indices of each optimizer step's micro-batches: ``num_iterations`` passes over one order."""
        args = self.args
        order = self._row_order(rollout)
        micro = [order[i : i + args.per_device_train_batch_size]
                 for i in range(0, len(order), args.per_device_train_batch_size)]  # fmt: skip
        accumulation = args.gradient_accumulation_steps
        for _ in range(args.num_iterations):
            for start in range(0, len(micro), accumulation):
                yield micro[start : start + accumulation]

    def _optimizer_step(
        self, rollout: Rollout, micro_batches: list[torch.Tensor], window: MetricsWindow
    ) -> float:
        acc, model, total = self.accelerator, self.model_wrapped, 0.0
        model.train()
        for index, rows in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or acc.num_processes == 1 else acc.no_sync(model)
            with sync, acc.autocast():
                out, entropy = self._micro_batch_loss(model, rollout, rows)
            if not math.isfinite(float(out.loss.detach())):
                model.zero_grad(set_to_none=True)
                raise FloatingPointError(f"non-finite {self._name} loss {float(out.loss)} at step "
                                         f"{self.state.global_step + 1}, micro-batch {index + 1}")  # fmt: skip
            with sync:
                acc.backward(out.loss)
            total += float(out.loss.detach())
            stats = {
                "loss": float(out.policy_loss),
                "entropy": entropy,
                "clip_ratio/low_mean": float(out.clip_low),
                "clip_ratio/high_mean": float(out.clip_high),
                "clip_ratio/region_mean": float(out.clip_region),
            }
            if self._kl_in_loss and self.args.beta != 0.0:
                stats["kl"] = float(out.kl)
            window.add(stats)  # fmt: skip
        self._last_lr = self._current_lr()
        if self.args.max_grad_norm is not None and self.args.max_grad_norm > 0:
            grad_norm = acc.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
            window.add({"grad_norm": float(grad_norm)})
        self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _micro_batch_loss(self, model: nn.Module, rollout: Rollout, rows: torch.Tensor):
        part, _ = rollout.group.batch.select(rows).trimmed()
        width = part.response_ids.shape[1]
        mask = rollout.mask[rows][:, :width]
        part = ResponseBatch(part.prompt_ids, part.prompt_mask, part.response_ids, mask)
        logps, entropy = model(part, temperature=self.args.temperature, return_entropy=True)

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows][:, :width]

        old = cut(rollout.old_logps)
        old = logps.detach() if old is None else old
        out = self._loss(
            logps, old, cut(rollout.ref_logps), rollout.advantages[rows], mask, rollout.num_items
        )
        entropy_mean = float((entropy * mask).sum() / mask.sum().clamp(min=1))
        return out, entropy_mean

    def _loss(self, logps, old_logps, ref_logps, advantages, mask, num_items) -> PolicyLossOutput:
        raise NotImplementedError

    # ---- helpers -------------------------------------------------------------------------------------------

    def _current_lr(self) -> float:
        if self.lr_scheduler is None:
            return float(self.args.learning_rate)
        return float(self.lr_scheduler.get_last_lr()[0])

    def _mean_over_processes(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], device=self.accelerator.device)
        return dict(zip(keys, self.accelerator.reduce(values, reduction="mean").tolist()))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._policy().save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
