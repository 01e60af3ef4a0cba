"""rlhf_core.losses"""
