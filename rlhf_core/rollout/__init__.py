"""rlhf_core.rollout"""
