"""rlhf_core.models"""
