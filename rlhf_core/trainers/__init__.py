"""rlhf_core.trainers"""
