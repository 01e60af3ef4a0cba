"""Chunked linear -> log-prob / cross-entropy autograd functions that never build ``[N, V]`` logits.

Per chunk of rows the logits ``(h_c @ W.T + b) / T`` are written into one reused fp32 buffer
``[C, V]``; a ``RowSoftmaxOps`` backend (torch here, Triton on CUDA) reduces them to per-row
statistics. The log-prob op keeps only ``[N]``-sized statistics (the rows' logsumexp) between forward
and backward (``[N, H]`` with a frozen LM head, see below); the cross-entropy op keeps the gradients
it computed. The extra memory is the weight gradient plus one chunk of logits.

Gradients: with ``logp_i = z_i[y_i] - lse(z_i)`` and ``z = (h W^T + b) / T``, an upstream ``g_i`` gives
``dL/d(hW^T + b)_i = -(g_i / T) * (softmax(z_i) - onehot(y_i))``. The chunk buffer is turned into
``D = softmax - onehot`` in place (one softmax pass plus a C-element scatter) and three matmuls give
``grad_h = -coef * (D @ W)``, ``grad_W += -D^T @ (coef * h)`` and ``grad_b += -D^T @ coef``, accumulated
in fp32 whatever the input dtype (bf16 inputs: the logits matmul runs in bf16, everything after it
in fp32; gradients are returned in the input dtype). fp64 inputs run in fp64 throughout (gradcheck).

- ``LinearLogprobsFunction`` (per-token log-probs, any upstream gradient): recomputes each chunk's
  logits in backward (4 matmuls in all against naive's 3, but no ``[N, V]`` traffic).
- ``LinearCrossEntropyFunction`` (``mean``/``sum``: the upstream gradient is a scalar): computes the
  gradients during the forward pass and only rescales them in backward, so no recompute (3 matmuls).

Rows whose label is ``ignore_index`` are dropped before any matmul (prompt and padding tokens cost
nothing), and so are rows whose upstream gradient is exactly 0 in backward.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rlhf_core.kernels.row_softmax import RowSoftmaxOps, RowStats

__all__ = [
    "LinearCrossEntropyFunction",
    "LinearLogprobsFunction",
    "OpSpec",
    "accumulation_dtype",
    "default_chunk_size",
    "grad_needs",
]

# Why these sizes: the chunk of logits is the only [rows, V] tensor alive, so it sets the memory above
# the weight gradient; but each chunk's three GEMMs re-stream the whole weight ([V, H], 65 MB at the
# benchmark's V=32000, H=512: more than the last-level cache) and re-read/write the fp32 weight-gradient
# accumulator, so too few rows per chunk turns the GEMMs memory-bound. On the 2-core benchmark CPU 64 MiB
# (512 rows at V=32k) is where the GEMMs approach their full-matrix rate, while weight gradient + chunk
# stays well under 0.1x of the naive op's extra peak. On CUDA a larger chunk amortises kernel launches
# and still is a small fraction of GPU memory.
CPU_CHUNK_BYTES = 64 * 2**20
CUDA_CHUNK_BYTES = 256 * 2**20
MIN_CHUNK_ROWS = 16


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs, fp64 for fp64 ones."""
    return torch.promote_types(dtype, torch.float32)


def default_chunk_size(n_rows: int, vocab_size: int, device: torch.device | str = "cpu") -> int:
    """Rows per chunk so that one fp32 chunk of logits is about ``CPU_CHUNK_BYTES`` (``CUDA_CHUNK_BYTES``).

    Rounded down to a multiple of 16 rows (GEMM-friendly), at least ``MIN_CHUNK_ROWS``, at most ``n_rows``.
    """
    budget = CUDA_CHUNK_BYTES if torch.device(device).type == "cuda" else CPU_CHUNK_BYTES
    rows = max(MIN_CHUNK_ROWS, budget // (4 * max(1, vocab_size)) // 16 * 16)
    return max(1, min(rows, n_rows))


class _TokenRows:
    """The rows that take part: all ``N`` (``index is None``) or the subset ``index`` (ascending)."""

    def __init__(self, index: torch.Tensor | None, targets: torch.Tensor, n_total: int) -> None:
        self.index = index
        self.targets = targets
        self.n_total = n_total

    @classmethod
    def where(cls, keep: torch.Tensor, labels: torch.Tensor) -> _TokenRows:
        if bool(keep.all()):
            return cls(None, labels, labels.shape[0])
        index = keep.nonzero().squeeze(1)
        return cls(index, labels.index_select(0, index), labels.shape[0])

    def __len__(self) -> int:
        return self.targets.shape[0]

    def subset(self, keep: torch.Tensor) -> _TokenRows:
        """Rows of this selection where ``keep [len(self)]`` is true."""
        if bool(keep.all()):
            return self
        local = keep.nonzero().squeeze(1)
        index = local if self.index is None else self.index.index_select(0, local)
        return _TokenRows(index, self.targets.index_select(0, local), self.n_total)

    def hidden(self, hidden: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if self.index is None:
            return hidden[start:end]
        return hidden.index_select(0, self.index[start:end])

    def gather(self, per_token: torch.Tensor) -> torch.Tensor:
        """``[N] -> [len(self)]``."""
        return per_token if self.index is None else per_token.index_select(0, self.index)

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """``[len(self)] -> [N]`` with zeros at the rows left out."""
        if self.index is None:
            return values
        return values.new_zeros(self.n_total).index_copy_(0, self.index, values)

    def write_rows(self, out: torch.Tensor, start: int, end: int, values: torch.Tensor) -> None:
        if self.index is None:
            out[start:end].copy_(values)
        else:
            out.index_copy_(0, self.index[start:end], values.to(out.dtype))


def _chunk_logits(
    out: torch.Tensor, h_c: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, inv_t: float
) -> None:
    """``out[C, V] (fp32) = (h_c @ weight.T + bias) * inv_t``, without a temporary for fp32 inputs."""
    w_t = weight.t()
    if h_c.dtype == out.dtype:
        # The temperature rides on the GEMM's alpha/beta: no extra pass over the chunk.
        if bias is None:
            torch.addmm(out, h_c, w_t, beta=0.0, alpha=inv_t, out=out)
        else:
            torch.addmm(bias, h_c, w_t, beta=inv_t, alpha=inv_t, out=out)
        return
    # Low-precision inputs: the GEMM runs (with fp32 accumulation inside) in the input dtype, as the
    # model's own LM head would; the softmax statistics then run in fp32.
    raw = torch.mm(h_c, w_t) if bias is None else torch.addmm(bias, h_c, w_t)
    out.copy_(raw)
    if inv_t != 1.0:
        out.mul_(inv_t)


def _chunks(
    rows: _TokenRows,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    inv_t: float,
    chunk_size: int | None,
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, end, h_c, targets_c, logits_c)`` with ``logits_c`` in one buffer reused by all chunks."""
    n = len(rows)
    if n == 0:
        return
    vocab = weight.shape[0]
    size = chunk_size or default_chunk_size(n, vocab, hidden.device)
    buffer = torch.empty((min(size, n), vocab), dtype=accumulation_dtype(hidden.dtype), device=hidden.device)
    for start in range(0, n, size):
        end = min(start + size, n)
        h_c = rows.hidden(hidden, start, end)
        logits = buffer[: end - start]
        _chunk_logits(logits, h_c, weight, bias, inv_t)
        yield start, end, h_c, rows.targets[start:end], logits


class _GradBuffers:
    """fp32 accumulators for the weight and bias gradients; the hidden gradient is written row by row.

    Why no ``torch.zeros`` for the two big ones: the weight accumulator ``[V, H]`` is written, not added to, by the
    first chunk's GEMM (``beta=0`` ignores its uninitialised contents), and the hidden gradient needs zeros only for
    the rows that are left out (ignored labels): each saves a full pass over a vocabulary- or token-sized tensor.
    """

    def __init__(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        needs: tuple[bool, ...],
        rows: _TokenRows,
    ) -> None:
        self.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        acc = {"dtype": accumulation_dtype(weight.dtype), "device": weight.device}
        every_row = rows.index is None and len(rows) > 0
        self.hidden = (
            None if not needs[0] else torch.empty_like(hidden) if every_row else torch.zeros_like(hidden)
        )
        self.weight = torch.empty(weight.shape, **acc) if needs[1] else None
        self.bias = torch.zeros(weight.shape[0], **acc) if bias is not None and needs[2] else None
        self._weight_written = False

    def add_weight(self, delta_t: torch.Tensor, operand: torch.Tensor, alpha: float) -> None:
        """``weight += alpha * delta_t @ operand`` (the first call writes instead of adding)."""
        self.weight.addmm_(delta_t, operand, beta=1.0 if self._weight_written else 0.0, alpha=alpha)
        self._weight_written = True

    def results(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        if self.weight is not None and not self._weight_written:
            self.weight.zero_()  # no row took part
        weight = None if self.weight is None else self.weight.to(self.dtypes[1])
        bias = None if self.bias is None else self.bias.to(self.dtypes[2])
        return self.hidden, weight, bias


def _subtract_onehot_(probs: torch.Tensor, targets: torch.Tensor) -> None:
    """``probs -= onehot(targets)`` in place: a C-element scatter, done in fp32 before any low-precision
    cast so that p_y ~ 1 does not cancel."""
    index = targets.unsqueeze(1)
    probs.scatter_(1, index, probs.gather(1, index).sub_(1.0))


def _hidden_direction(delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``-(delta @ W)`` in ``delta``'s dtype: with ``delta = softmax - onehot`` it is ``T * d logp / d h``."""
    low_precision = delta if delta.dtype == weight.dtype else delta.to(weight.dtype)
    return torch.mm(low_precision, weight).to(delta.dtype).neg_()


def _write_hidden_grad(
    out: torch.Tensor,
    probs: torch.Tensor,
    weight: torch.Tensor,
    row_scale: torch.Tensor | float,
    rows: _TokenRows,
    start: int,
    end: int,
) -> None:
    """``out[rows start:end] = -row_scale * (probs @ W)`` for ``probs = softmax - onehot``.

    Why two paths: when every row takes part and all dtypes are the accumulation dtype (fp32 training), the GEMM
    writes straight into the gradient's rows, a scalar scale riding on its alpha; that saves the temporary and
    its negate, scale and copy passes. Otherwise (row subsets, low-precision inputs) a temporary is needed anyway.
    """
    if rows.index is None and out.dtype == probs.dtype == weight.dtype:
        target = out[start:end]
        if isinstance(row_scale, torch.Tensor):
            torch.mm(probs, weight, out=target)
            target.mul_(row_scale.neg())
        else:
            torch.addmm(target, probs, weight, beta=0.0, alpha=-row_scale, out=target)
        return
    rows.write_rows(out, start, end, _hidden_direction(probs, weight).mul_(row_scale))


def _accumulate_chunk_grads(
    grads: _GradBuffers,
    probs: torch.Tensor,
    h_c: torch.Tensor,
    targets: torch.Tensor,
    coef: torch.Tensor | float,
    weight: torch.Tensor,
    rows: _TokenRows,
    start: int,
    end: int,
) -> None:
    """Add the gradient of ``sum_i coef_i * T * logp_i`` for one chunk; ``probs`` is the chunk's softmax.

    ``coef`` is ``upstream_grad / T``: ``[C]`` in ``probs.dtype``, or one number for every row (the
    cross-entropy's), which rides on the GEMMs' alpha. ``probs`` is overwritten with ``softmax - onehot``.
    """
    _subtract_onehot_(probs, targets)
    per_row = isinstance(coef, torch.Tensor)
    row_scale = coef.unsqueeze(1) if per_row else coef
    if grads.hidden is not None:
        _write_hidden_grad(grads.hidden, probs, weight, row_scale, rows, start, end)
    if grads.weight is not None:
        operand = h_c.to(probs.dtype) * row_scale if per_row else h_c.to(probs.dtype)
        grads.add_weight(probs.t(), operand, -1.0 if per_row else -coef)
    if grads.bias is not None:
        if per_row:
            grads.bias.addmv_(probs.t(), coef, alpha=-1.0)
        else:
            grads.bias.add_(probs.sum(0), alpha=-coef)


def grad_needs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[bool, bool, bool]:
    """Which of (hidden, weight, bias) will get a gradient. Taken at the call site: inside
    ``Function.forward`` grad mode is off and ``ctx.needs_input_grad`` ignores ``torch.no_grad()``."""
    if not torch.is_grad_enabled():
        return (False, False, False)
    return (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)


@dataclass(frozen=True)
class OpSpec:
    """Everything of one call but the tensors: the row backend, which inputs get gradients, and the options."""

    ops: RowSoftmaxOps
    needs: tuple[bool, bool, bool]
    ignore_index: int = -100
    temperature: float = 1.0
    chunk_size: int | None = None
    return_entropy: bool = False  # log-probs: also the per-token entropy
    reduction: str = "mean"  # cross-entropy: "mean" or "sum"


class LinearLogprobsFunction(torch.autograd.Function):
    """``(logps [N], entropy [N] detached or empty)`` in fp32 (fp64 for fp64 inputs).

    Backward recomputes each chunk's logits, except when only ``hidden`` needs a gradient (frozen LM
    head, e.g. LoRA): ``d logp_i / d h_i = (W[y_i] - p_i W) / T`` does not depend on the upstream
    gradient, so forward computes it from the logits it already has (``[N, H]`` kept) and backward is a
    row scaling: 2 matmuls in all instead of 3.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, spec: OpSpec):  # type: ignore[override]  # (logps, entropy)
        ignore_index, chunk_size, ops = spec.ignore_index, spec.chunk_size, spec.ops
        rows = _TokenRows.where(labels != ignore_index, labels)
        inv_t = 1.0 / spec.temperature
        logp = hidden.new_empty(len(rows), dtype=accumulation_dtype(hidden.dtype))
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if spec.return_entropy else None
        eager = spec.needs == (True, False, False)
        direction = logp.new_empty((len(rows), hidden.shape[1])) if eager else None
        for start, end, _, targets, logits in _chunks(rows, hidden, weight, bias, inv_t, chunk_size):
            out = RowStats(logp[start:end], lse[start:end], None if entropy is None else entropy[start:end])
            ops.log_softmax_stats(logits, targets, out, keep_softmax=direction is not None)
            if direction is not None:
                _subtract_onehot_(logits, targets)
                direction[start:end] = _hidden_direction(logits, weight)
        ctx.save_for_backward(hidden, weight, bias, lse, rows.index, rows.targets, direction)
        ctx.inv_t, ctx.chunk_size, ctx.ops, ctx.n_total = inv_t, chunk_size, ops, labels.shape[0]
        entropy_out = rows.scatter(entropy) if entropy is not None else logp.new_empty(0)
        ctx.mark_non_differentiable(entropy_out)
        return rows.scatter(logp), entropy_out

    @staticmethod
    def backward(ctx, grad_logp: torch.Tensor, grad_entropy: torch.Tensor | None):  # type: ignore[override]
        del grad_entropy  # entropy is a detached statistic
        hidden, weight, bias, lse, index, targets, direction = ctx.saved_tensors
        rows = _TokenRows(index, targets, ctx.n_total)
        coef = rows.gather(grad_logp.to(lse.dtype)) * ctx.inv_t
        nones = (None, None)  # labels, spec
        if direction is not None:
            grad_hidden = torch.zeros_like(hidden)
            rows.write_rows(grad_hidden, 0, len(rows), direction * coef.unsqueeze(1))
            return (grad_hidden, None, None, *nones)
        active = coef != 0
        rows, coef, lse = rows.subset(active), coef[active], lse[active]
        grads = _GradBuffers(hidden, weight, bias, ctx.needs_input_grad[:3], rows)
        for start, end, h_c, targets_c, logits in _chunks(
            rows, hidden, weight, bias, ctx.inv_t, ctx.chunk_size
        ):
            ctx.ops.softmax_(logits, lse[start:end])
            _accumulate_chunk_grads(grads, logits, h_c, targets_c, coef[start:end], weight, rows, start, end)
        return (*grads.results(), *nones)


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Scalar cross-entropy (``mean`` over non-ignored tokens, or ``sum``) with gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, spec: OpSpec):  # type: ignore[override]  # scalar loss
        ignore_index, chunk_size, ops, needs = spec.ignore_index, spec.chunk_size, spec.ops, spec.needs
        rows = _TokenRows.where(labels != ignore_index, labels)
        n, inv_t = len(rows), 1.0 / spec.temperature
        # mean over zero tokens is 0/0 = nan, as in torch.nn.functional.cross_entropy.
        scale = (1.0 / n if n else float("nan")) if spec.reduction == "mean" else 1.0
        grads = _GradBuffers(hidden, weight, bias, needs, rows) if any(needs) else None
        logp = hidden.new_empty(n, dtype=accumulation_dtype(hidden.dtype))
        lse = torch.empty_like(logp)
        for start, end, h_c, targets, logits in _chunks(rows, hidden, weight, bias, inv_t, chunk_size):
            out = RowStats(logp[start:end], lse[start:end])
            ops.log_softmax_stats(logits, targets, out, keep_softmax=grads is not None)
            if grads is not None:
                # loss = -scale * sum(logp): the upstream gradient of each logp is -scale.
                _accumulate_chunk_grads(grads, logits, h_c, targets, -scale * inv_t, weight, rows, start, end)
        ctx.grads = None if grads is None else grads.results()
        return logp.sum().neg_() * scale

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):  # type: ignore[override]
        grads = ctx.grads
        if grads is None:
            raise RuntimeError(
                "fused_linear_cross_entropy computes its gradients during forward and hands them on in the "
                "first backward; a second backward through the same graph (retain_graph=True) is not supported"
            )
        ctx.grads = None  # the stored gradients are weight-sized: free them as soon as they are handed on
        if (
            float(grad_loss) != 1.0
        ):  # e.g. the trainer's 1 / tokens: scaled in place, these buffers are ours alone
            grads = tuple(None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in grads)
        return (*grads, None, None)  # labels, spec
