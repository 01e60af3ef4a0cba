"""PPO: PPOTrainer, PPOConfig, experience, optimisation epochs, checkpoint/resume, the classic API, metrics, KL control."""
