"""Memory-efficient fused "LM head -> per-token log-prob / cross-entropy" ops.

``fused_linear_logprobs`` and ``fused_linear_cross_entropy`` take the last hidden states ``[N, H]``
and the LM-head weight ``[V, H]`` and work chunk by chunk over N, never materialising the ``[N, V]``
logits (the largest tensor of post-training). One dispatch: the Triton backend on CUDA when triton
imports, the chunked torch autograd functions everywhere else (``backend=`` or
``$RLHF_KERNEL_BACKEND`` force one). ``reference`` holds the naive version they are tested against.
"""

from rlhf_core.kernels.chunked import default_chunk_size
from rlhf_core.kernels.dispatch import (
    BACKEND_ENV,
    fused_linear_cross_entropy,
    fused_linear_logprobs,
    select_backend,
)

__all__ = [
    "BACKEND_ENV",
    "default_chunk_size",
    "fused_linear_cross_entropy",
    "fused_linear_logprobs",
    "select_backend",
]
