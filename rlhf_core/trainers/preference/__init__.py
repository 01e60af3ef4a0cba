"""Pairwise preference trainers: RewardTrainer, DPOTrainer, their configs, data, log-probs and reference."""
