"""rlhf_core.data"""
