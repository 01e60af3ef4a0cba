"""Evaluation entry points shared by the pairwise trainers (RewardTrainer, DPOTrainer).

Both accept a raw (untokenised) preference dataset in `evaluate` / `predict`, tokenised with the trainer's own
length policy, and keep only the pair columns when the Trainer drops unused ones.
"""

from __future__ import annotations

from typing import Any

from rlhf_core.trainers.preference.data import PAIR_COLUMNS, prepare_preference_dataset


class PreferenceEvaluationMixin:
    """Mixed in before `TokenNormalisedTrainer`; the trainer sets ``self._length_policy``."""

    _length_policy: dict[str, Any]

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ):
        """`Trainer.evaluate`, also accepting a raw (untokenised) preference dataset."""
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            eval_dataset = prepare_preference_dataset(
                eval_dataset, self.processing_class, **self._length_policy, what=metric_key_prefix
            )
        return super().evaluate(
            eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )

    def predict(
        self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"
    ):
        """`Trainer.predict` (also on a raw preference dataset): predictions `[N, 2]` = (chosen, rejected)."""
        test_dataset = prepare_preference_dataset(
            test_dataset, self.processing_class, **self._length_policy, what=metric_key_prefix
        )
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = list(PAIR_COLUMNS)
        super()._set_signature_columns_if_needed()
