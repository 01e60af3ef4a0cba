"""rlhf_core.kernels"""
