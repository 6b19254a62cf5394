"""Roofline estimate of the patch_nce kernels and of eager PyTorch (CUT's formula) on A100 and H100.

A prediction from published peak figures, not a measurement: the time of a kernel is the largest of its FLOPs
over the matmul peak, its exponentials over the special-function peak, and its bytes over the memory bandwidth.
The table in docs/patch_nce.md is ``ds3kit kernels roofline`` (this module's :func:`roofline_markdown`).

Counts, for B groups of N rows of dimension D, element size e of the inputs, c chunks of D in the gradient
kernels (each recomputes its score tiles, see :class:`ds3kit.ops.configs.KernelConfig`):

- fused forward: 2 B N^2 D FLOPs, B N^2 exponentials; bytes: q and k once (2 B N D e), the weight, lse and row
  losses (12 B N). Keys re-read by every row tile are assumed to hit L2 (the grid keeps one group's programs
  resident together).
- fused dq (dk alike): (2 c + 2) B N^2 D FLOPs, c B N^2 exponentials; bytes: q, k and the gradient (3 B N D e),
  lse and g (8 B N).
- eager (CUT's PatchNCELoss, key detached): the bmm at the matmul peak; then each (N, N)-sized pass of the
  elementwise kernels moves 4 bytes an element. Forward: bmm write, masked_fill read + write, cat read + write,
  / T read + write, log_softmax read + write (9 passes). Backward (query only): the log_softmax gradient write,
  its backward read x 2 + write, / T read + write, cat and masked_fill backward read + write each, the bmm
  gradient read (11 passes) and a 2 B N^2 D bmm.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """Published peaks: dense matmul FLOP/s per precision, special-function (exp2) op/s, memory bytes/s."""

    name: str
    matmul_flops: dict[str, float]
    exp_per_second: float
    bandwidth: float


# A100 SXM4 80 GB (NVIDIA A100 datasheet): 19.5 TFLOP/s fp32, 156 TF32, 312 bf16 dense; 2.039 TB/s HBM2e;
# 108 SMs x 16 MUFU ops / clock x 1.41 GHz. H100 SXM5 (H100 datasheet): 67 TFLOP/s fp32, 494.7 TF32,
# 989.4 bf16 dense; 3.35 TB/s HBM3; 3.9 T special-function ops/s (FlashAttention-3 paper's figure).
A100 = Device("A100", {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12}, 108 * 16 * 1.41e9, 2.039e12)
H100 = Device("H100", {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12}, 3.9e12, 3.35e12)
DEVICES = (A100, H100)
ELEMENT_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2}
N_VALUES = (256, 1024, 4096, 16384)


@dataclass(frozen=True)
class Work:
    flops: float
    exps: float
    bytes: float

    def seconds(self, device: Device, precision: str) -> float:
        return max(
            self.flops / device.matmul_flops[precision],
            self.exps / device.exp_per_second,
            self.bytes / device.bandwidth,
        )

    def bound(self, device: Device, precision: str) -> str:
        times = {
            "compute": self.flops / device.matmul_flops[precision],
            "exp": self.exps / device.exp_per_second,
            "memory": self.bytes / device.bandwidth,
        }
        return max(times, key=times.get)


def fused_work(kernel: str, batch: int, n: int, dim: int, precision: str, chunks: int = 1) -> Work:
    """FLOPs, exponentials and compulsory bytes of one fused kernel (``"forward"``, ``"dq"`` or ``"dk"``)."""
    e = ELEMENT_BYTES[precision]
    pairs = batch * n * n
    if kernel == "forward":
        return Work(2 * pairs * dim, pairs, 2 * batch * n * dim * e + 12 * batch * n)
    if kernel in ("dq", "dk"):
        return Work((2 * chunks + 2) * pairs * dim, chunks * pairs, 3 * batch * n * dim * e + 8 * batch * n)
    raise ValueError(f"kernel must be 'forward', 'dq' or 'dk', got {kernel!r}")


def eager_seconds(kernel: str, batch: int, n: int, dim: int, precision: str, device: Device) -> float:
    """Eager CUT's formula: the bmm (compute or memory bound) plus its elementwise passes (memory bound)."""
    e = ELEMENT_BYTES[precision]
    pairs = batch * n * n
    bmm = Work(2 * pairs * dim, 0, 2 * batch * n * dim * e + pairs * 4).seconds(device, precision)
    passes = {"forward": 8, "dq": 11}[kernel]  # the bmm's own write is in its bytes above
    softmax_exps = pairs / device.exp_per_second  # log_softmax's exponentials
    return bmm + max(passes * pairs * 4 / device.bandwidth, softmax_exps)


def roofline_rows(batch: int = 8, dim: int = 256, precision: str = "bf16", n_values=N_VALUES) -> list[dict]:
    """One row per (N, kernel) with the fused and eager predictions on each device (microseconds)."""
    rows = []
    for n in n_values:
        for kernel in ("forward", "dq", "dk"):
            work = fused_work(kernel, batch, n, dim, precision)
            row = {"n": n, "kernel": kernel, "gflop": work.flops / 1e9, "mb": work.bytes / 1e6}
            for device in DEVICES:
                row[f"{device.name}_us"] = work.seconds(device, precision) * 1e6
                row[f"{device.name}_bound"] = work.bound(device, precision)
                # CUT detaches the key: eager has no key-gradient bmm to compare with.
                row[f"{device.name}_eager_us"] = (
                    None if kernel == "dk" else eager_seconds(kernel, batch, n, dim, precision, device) * 1e6
                )
            rows.append(row)
    return rows


def _us(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def roofline_markdown(batch: int = 8, dim: int = 256) -> str:
    """The tables of docs/patch_nce.md: one per precision (fp32 IEEE on FMA units, TF32, bf16)."""
    parts = []
    for precision, title in (
        ("fp32", "float32 (IEEE products, FMA units)"),
        ("tf32", "float32 with TF32 allowed"),
        ("bf16", "bfloat16"),
    ):
        parts.append(f"**{title}**, B = {batch}, D = {dim} (microseconds; eager = CUT's formula)\n")
        parts.append(
            "| N | kernel | GFLOP | fused MB | A100 fused | A100 eager | bound | H100 fused | H100 eager | bound |"
        )
        parts.append("|---:|---|---:|---:|---:|---:|---|---:|---:|---|")
        for row in roofline_rows(batch, dim, precision):
            parts.append(
                f"| {row['n']} | {row['kernel']} | {row['gflop']:.2f} | {row['mb']:.1f} | {_us(row['A100_us'])} | "
                f"{_us(row['A100_eager_us'])} | {row['A100_bound']} | {_us(row['H100_us'])} | "
                f"{_us(row['H100_eager_us'])} | {row['H100_bound']} |"
            )
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"
