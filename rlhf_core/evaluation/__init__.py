"""Evaluation: generation and scoring of held-out prompts (judge, reward model, KL)."""
