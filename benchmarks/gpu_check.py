"""GPU check, one command: the Triton kernels against the torch reference and Liger, then SFT and DPO steps of a 0.5B model.

    python benchmarks/gpu_check.py            # on a machine with a CUDA GPU; under 10 minutes on one H100/H200
    python benchmarks/gpu_check.py --quick    # smaller head shapes and fewer steps (a first look)
    python benchmarks/gpu_check.py --dry-run  # every part on the CPU at tiny shapes, torch backend: proves the script
                                              # runs end to end before a GPU is lent; measures nothing

Without CUDA it prints why and exits with status 2 (nothing is measured). With CUDA, three parts, each printed as it
finishes:

1. **Correctness**: ``fused_linear_logprobs`` and ``fused_linear_cross_entropy`` on the Triton backend against the
   naive reference (full logits, ``log_softmax`` + ``gather``) in fp32 and bf16, values and the gradients of hidden,
   weight and bias, at Liger-Kernel's test tolerances (fp32: atol 1e-5, rtol 5e-4; bf16: atol 5e-3, rtol 5e-2; the
   bf16 reference also runs its matmul in bf16, as Liger's and TRL's do).
2. **Speed and memory** of forward + backward of the cross-entropy at Llama-3-8B head shapes (H=4,096, V=128,256,
   N=8,192 tokens, bf16): the naive op, ours (Triton backend), and Liger's ``LigerFusedLinearCrossEntropyLoss`` when
   ``liger_kernel`` imports (else a line says it is not installed). Median milliseconds over CUDA-synchronised steps,
   and peak allocated memory above the inputs (``torch.cuda.max_memory_allocated``).
3. **Training steps** of a 0.5B-parameter Llama-shaped model built from config (Qwen2.5-0.5B's shape: hidden 896,
   24 layers, 14 heads, 2 KV heads, intermediate 4,864, vocabulary 151,936, tied embeddings; random weights), bf16
   mixed precision, fused AdamW: one SFT and one DPO run of rlhf_core's trainers on random token rows, printing
   tokens/s of the measured steps and peak GPU memory.

Every piece takes a device, so the unit tests run the same functions on the CPU with tiny shapes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

NO_CUDA_EXIT = 2
# Liger-Kernel's tolerances for its fused linear cross-entropy tests (test/transformers/test_fused_linear_cross_entropy.py).
TOLERANCES = {"float32": {"atol": 1e-5, "rtol": 5e-4}, "bfloat16": {"atol": 5e-3, "rtol": 5e-2}}
HEAD_SHAPE = {"hidden": 4096, "vocab": 128256, "tokens": 8192}
QUICK_HEAD_SHAPE = {"hidden": 1024, "vocab": 32000, "tokens": 2048}
MODEL_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096)  # fmt: skip


def cuda_or_exit() -> None:
    """Exit with status 2 and a clear message where torch sees no CUDA device."""
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False): nothing measured. "
            "Run it on a machine with an NVIDIA GPU and a CUDA build of torch (and `pip install triton`).",
            file=sys.stderr,
        )
        raise SystemExit(NO_CUDA_EXIT)


def make_head_inputs(
    tokens: int, hidden: int, vocab: int, *, dtype, device, bias: bool = True, seed: int = 0
):
    """``(hidden [N, H], weight [V, H], bias [V] or None, labels [N])`` with a realistic logit spread, 1/8 ignored."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=generator)
    w = torch.randn(vocab, hidden, generator=generator) * (2.0 / hidden**0.5)
    b = torch.randn(vocab, generator=generator) * 0.5 if bias else None
    labels = torch.randint(0, vocab, (tokens,), generator=generator)
    labels[::8] = -100
    move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return move(h), move(w), move(b), labels.to(device)


def _forward_backward(fn: Callable, leaves: tuple, labels, upstream) -> tuple[Any, tuple]:
    hidden, weight, bias = (None if t is None else t.detach().clone().requires_grad_() for t in leaves)
    out = fn(hidden, weight, labels, bias)
    loss = out.float().sum() if upstream is None else (out.float() * upstream).sum()
    loss.backward()
    return out.detach(), (hidden.grad, weight.grad, None if bias is None else bias.grad)


def _max_violation(got, want, atol: float, rtol: float) -> float:
    """max(|got - want| - rtol*|want|) / atol: <= 1 means within ``assert_close``'s tolerance."""
    got, want = got.float(), want.float()
    return float(((got - want).abs() - rtol * want.abs()).max() / atol)


def check_against_reference(op: str, dtype_name: str, device, backend, *, shape: dict | None = None) -> dict:
    """Value and gradients of ``op`` (``"logprobs"`` or ``"cross_entropy"``) vs the naive reference.

    fp32 is compared with the naive op in fp32. bf16 is compared with the naive op run in fp64 on the same
    (bf16-valued) inputs: the naive bf16 op rounds the logits' gradient to bf16 before its two backward matmuls, so
    its own error is of the order of the tolerance, and ours (fp32 statistics and accumulation) against it can add
    up to more than the tolerance while each is within it of the exact result (measured on the CPU at the default
    shape with a per-token upstream gradient: ours 0.86 of the tolerance, naive bf16 1.25, ours vs naive bf16 2.4).
    ``naive_worst`` gives the naive bf16 op's violations against the same fp64 reference, for comparison.

    Returns ``{"op", "dtype", "worst": {name: violation}, "naive_worst", "ok": bool}``; a violation <= 1 is within
    tolerance.
    """
    import torch

    from rlhf_core.kernels import fused_linear_cross_entropy, fused_linear_logprobs
    from rlhf_core.kernels.reference import naive_linear_cross_entropy, naive_linear_logprobs

    shape = shape or {"tokens": 257, "hidden": 128, "vocab": 5003}
    dtype = getattr(torch, dtype_name)
    h, w, b, labels = make_head_inputs(
        shape["tokens"], shape["hidden"], shape["vocab"], dtype=dtype, device=device
    )
    upstream = torch.randn(labels.shape, generator=torch.Generator().manual_seed(1)).to(device)
    if op == "logprobs":
        ours = lambda *a: fused_linear_logprobs(*a, backend=backend)  # noqa: E731
        naive, weights = naive_linear_logprobs, upstream
    else:
        ours = lambda *a: fused_linear_cross_entropy(*a, backend=backend)  # noqa: E731
        naive, weights = naive_linear_cross_entropy, None
    exact = dtype != torch.float32
    leaves = (h, w, b) if not exact else tuple(t.double() for t in (h, w, b))
    want = _forward_backward(naive, leaves, labels, None if weights is None else weights.to(leaves[0].dtype))
    tolerance = TOLERANCES[dtype_name]

    def violations(result: tuple) -> dict[str, float]:
        names = ("value", "grad hidden", "grad weight", "grad bias")
        pairs = zip(names, (result[0], *result[1]), (want[0], *want[1]))
        return {n: _max_violation(g, r, **tolerance) for n, g, r in pairs}

    worst = violations(_forward_backward(ours, (h, w, b), labels, weights))
    naive_worst = violations(_forward_backward(naive, (h, w, b), labels, weights)) if exact else None
    return {"op": op, "dtype": dtype_name, "worst": worst, "naive_worst": naive_worst,
            "ok": all(v <= 1.0 for v in worst.values())}  # fmt: skip


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_and_memory(fn: Callable[[], None], device, *, repeats: int = 5) -> dict:
    """Median ms of ``fn()`` after one warm-up call, and its peak memory above what was allocated before (CUDA only:
    ``None`` elsewhere)."""
    import torch

    cuda = torch.device(device).type == "cuda"
    fn()
    _sync(device)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - start))
    extra = torch.cuda.max_memory_allocated() - before if cuda else None
    return {"ms": statistics.median(times), "extra_peak_bytes": extra}


def liger_cross_entropy() -> Callable | None:
    """Liger's fused linear cross-entropy as ``fn(hidden, weight, labels, bias) -> mean loss``, or None (not installed)."""
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except Exception:  # not installed, or broken against this torch/triton
        return None
    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)
    return lambda hidden, weight, labels, bias: loss(weight, hidden, labels, bias)


def head_variants(backend) -> dict[str, Callable]:
    """The cross-entropy variants compared in part 2 (each ``fn(hidden, weight, labels, bias) -> mean loss``)."""
    from rlhf_core.kernels import fused_linear_cross_entropy
    from rlhf_core.kernels.reference import naive_linear_cross_entropy

    variants = {
        "naive": naive_linear_cross_entropy,
        "ours": lambda h, w, y, b: fused_linear_cross_entropy(h, w, y, b, backend=backend),
    }
    liger = liger_cross_entropy()
    if liger is not None:
        variants["liger"] = liger
    return variants


def bench_head(
    shape: dict, device, backend, *, dtype_name: str = "bfloat16", repeats: int = 5
) -> dict[str, dict]:
    """Forward + backward of each cross-entropy variant at ``shape``: ms, extra peak bytes, GFLOP/s (3 GEMMs)."""
    import torch

    dtype = getattr(torch, dtype_name)
    h, w, b, labels = make_head_inputs(
        shape["tokens"], shape["hidden"], shape["vocab"], dtype=dtype, device=device
    )
    flops = 3 * 2 * shape["tokens"] * shape["hidden"] * shape["vocab"]
    results = {}
    for name, fn in head_variants(backend).items():
        leaves = [t.detach().clone().requires_grad_() for t in (h, w, b)]

        def step(fn=fn, leaves=leaves) -> None:
            fn(*leaves[:2], labels, leaves[2]).float().backward()
            for leaf in leaves:
                leaf.grad = None

        result = time_and_memory(step, device, repeats=repeats)
        results[name] = {**result, "gflops": flops / (result["ms"] / 1000) / 1e9}
        del leaves
    return results


def model_config(**overrides: Any):
    """The 0.5B Llama-shaped config (``overrides`` shrink it for tests)."""
    from transformers import LlamaConfig

    return LlamaConfig(**{**MODEL_05B, **overrides}, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _token_data(kind: str, rows: int, length: int, vocab: int):
    """Random token rows: SFT ``input_ids`` of ``length``, or DPO prompt/chosen/rejected ids (half prompt)."""
    import torch
    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab, (rows, n), generator=generator).tolist()  # noqa: E731
    if kind == "sft":
        return Dataset.from_dict({"input_ids": ids(length)})
    half = length // 2
    return Dataset.from_dict(
        {"prompt_input_ids": ids(half), "chosen_input_ids": ids(half), "rejected_input_ids": ids(half)}
    )


def train_steps(kind: str, config, device, *, steps: int, warmup: int, batch: int, length: int) -> dict:
    """``steps`` optimizer steps of rlhf_core's SFT or DPO trainer on ``config`` (random weights and tokens).

    Returns tokens/s over the steps after ``warmup``, the parameter count and the peak GPU memory (None on CPU).
    """
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback

    from rlhf_core import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    cuda = torch.device(device).type == "cuda"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<s>": 1, "</s>": 2}, "<pad>")),
                                        pad_token="<pad>", bos_token="<s>", eos_token="</s>")  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device)
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            marks.append(time.perf_counter())

    Args, Trainer = (SFTConfig, SFTTrainer) if kind == "sft" else (DPOConfig, DPOTrainer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        args = Args(output_dir=out, per_device_train_batch_size=batch, max_length=length, max_steps=steps,
                    logging_steps=10_000, save_strategy="no", report_to="none", disable_tqdm=True, bf16=cuda,
                    optim="adamw_torch_fused", learning_rate=1e-5, use_cpu=not cuda, dataloader_num_workers=0)  # fmt: skip
        data = _token_data(kind, batch * steps, length, config.vocab_size)
        trainer = Trainer(
            model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[Clock()]
        )
        trainer.train()
    tokens_per_step = (
        batch * length * (1 if kind == "sft" else 2)
    )  # DPO: prompt + answer, chosen and rejected
    measured = marks[warmup:]
    seconds = measured[-1] - marks[warmup - 1] if warmup and len(measured) else float("nan")
    return {
        "kind": kind,
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_s": tokens_per_step * len(measured) / seconds,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }


def _print_checks(backend, device: str = "cuda", shape: dict | None = None) -> bool:
    print(f"\n== 1. {backend} kernels vs the naive reference (Liger's tolerances; violation <= 1 passes) ==")
    ok = True
    for dtype_name in ("float32", "bfloat16"):
        for op in ("logprobs", "cross_entropy"):
            result = check_against_reference(op, dtype_name, device, backend, shape=shape)
            ok &= result["ok"]
            worst = ", ".join(f"{name} {value:.2f}" for name, value in result["worst"].items())
            if result["naive_worst"]:
                worst += (
                    " (vs fp64; naive bf16: "
                    + ", ".join(f"{v:.2f}" for v in result["naive_worst"].values())
                    + ")"
                )
            print(f"{op:14} {dtype_name:9} {'ok' if result['ok'] else 'FAILED':7} {worst}", flush=True)
    return ok


def _print_head(shape: dict, backend, device: str = "cuda") -> None:
    print(
        f"\n== 2. cross-entropy forward+backward, H={shape['hidden']} V={shape['vocab']} N={shape['tokens']}, bf16 =="
    )
    results = bench_head(shape, device, backend)
    if "liger" not in results:
        print("liger-kernel is not importable here: Liger's fused linear cross-entropy not compared")
    naive = results["naive"]
    print(
        f"{'variant':8} {'ms':>9} {'extra peak MiB':>15} {'GFLOP/s':>9} {'time x naive':>13} {'memory x naive':>15}"
    )
    for name, r in results.items():
        peak, naive_peak = r["extra_peak_bytes"], naive["extra_peak_bytes"]  # None off CUDA
        mib = "n/a" if peak is None else f"{peak / 2**20:.0f}"
        ratio = "n/a" if peak is None else f"{peak / naive_peak:.3f}"
        print(f"{name:8} {r['ms']:9.1f} {mib:>15} {r['gflops']:9.0f} {r['ms'] / naive['ms']:13.2f} {ratio:>15}",
              flush=True)  # fmt: skip


def _print_training(
    quick: bool, device: str = "cuda", config=None, lengths: tuple[int, int] = (2048, 1024)
) -> None:
    import torch

    cuda = device == "cuda"
    config = config or model_config()
    steps, warmup = (3, 1) if quick else (6, 2)
    where = torch.cuda.get_device_name() if cuda else "CPU, fp32"
    print(f"\n== 3. training steps, Llama-shaped model from config, bf16, {where} ==")
    for kind, batch, length in (("sft", 4, lengths[0]), ("dpo", 2, lengths[1])):
        r = train_steps(kind, config, device, steps=steps, warmup=warmup, batch=batch, length=length)
        peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.1f} GiB"
        print(f"{kind}: {r['params'] / 1e6:.0f}M parameters, batch {batch} x {length} tokens, "
              f"{r['tokens_per_s']:,.0f} tokens/s, peak GPU memory {peak}", flush=True)  # fmt: skip
        if cuda:
            torch.cuda.empty_cache()


def dry_run() -> int:
    """Every part of the check on the CPU at tiny shapes with the torch backend: the script's own code paths run
    (argument handling, the three parts, their printing); the figures mean nothing and are labelled so."""
    print("gpu_check --dry-run: CPU, tiny shapes, torch backend; nothing here is a measurement")
    ok = _print_checks("torch", "cpu", shape={"tokens": 33, "hidden": 16, "vocab": 97})
    _print_head({"tokens": 64, "hidden": 16, "vocab": 300}, "torch", "cpu")
    tiny = model_config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                        intermediate_size=32, vocab_size=64)  # fmt: skip
    _print_training(True, "cpu", tiny, lengths=(16, 16))
    print(f"\ngpu_check --dry-run: done; torch kernels {'match' if ok else 'DO NOT match'} the reference")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller head shape, fewer training steps")
    parser.add_argument(
        "--dry-run", action="store_true", help="every part on the CPU at tiny shapes (no GPU needed)"
    )
    args = parser.parse_args(argv)
    if args.dry_run:
        return dry_run()
    cuda_or_exit()
    import torch

    from rlhf_core.kernels._triton_row_softmax import triton_available

    if not triton_available():
        print(
            "gpu_check: `import triton` fails here: the Triton backend cannot run (pip install triton)",
            file=sys.stderr,
        )
        return NO_CUDA_EXIT
    start = time.perf_counter()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    ok = _print_checks("triton")
    _print_head(QUICK_HEAD_SHAPE if args.quick else HEAD_SHAPE, "triton")
    _print_training(args.quick)
    print(
        f"\ngpu_check: done in {time.perf_counter() - start:.0f} s; kernels {'match' if ok else 'DO NOT match'} the reference"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
