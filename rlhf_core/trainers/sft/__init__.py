"""SFT: SFTTrainer, SFTConfig, their data preparation, padding-free batches and token statistics."""
