r"""Fused Triton kernels of the patchwise contrastive loss (CUT's PatchNCE), with their autograd Function.

For group :math:`b` and row :math:`i`, with scores :math:`s_{ij} = q_i \cdot k_j / T` over the N keys of the group:

.. math::
    \ell_i = \log \sum_j e^{s_{ij}} - s_{ii}, \qquad
    \frac{\partial}{\partial q_i} = \frac{g_i}{T}\Big(\sum_j p_{ij} k_j - k_i\Big), \qquad
    \frac{\partial}{\partial k_j} = \frac{1}{T}\Big(\sum_i g_i p_{ij} q_i - g_j q_j\Big)

with :math:`p_{ij} = e^{s_{ij} - \mathrm{lse}_i}` and :math:`g_i` the upstream gradient of row i times its weight
(times :math:`1/(BN)` for the mean). No kernel ever holds more than one (BLOCK_M, BLOCK_N) score tile:

- forward, one launch over a (B, cdiv(N, BLOCK_M)) grid: a program loads its query tile once and streams the key
  tiles of its group with an online log-sum-exp (scores by ``tl.dot``); it writes the row log-sum-exp (B, N) float32
  (the only thing saved for backward besides the inputs) and the weighted row losses (B, N) float32;
- backward, query gradient: the same grid; each program recomputes its scores tile by tile from the saved
  log-sum-exp and accumulates :math:`\sum_j p_{ij} k_j`;
- backward, key gradient: a (B, cdiv(N, BLOCK_N)) grid; each program owns a key tile and streams the query tiles,
  accumulating :math:`\sum_i g_i p_{ij} q_i`. Every output row has one writer: no atomics, deterministic.

Inputs are float32, bfloat16 or float16 (float64 is rejected: use the streaming or reference backend); tiles are
multiplied in the input dtype and accumulated in float32. Float32 tiles are multiplied in IEEE float32 unless
``torch.get_float32_matmul_precision()`` allows TF32 (the same switch torch's own matmuls obey).

Tile sizes come from :class:`KernelConfig`: an explicit :func:`set_kernel_config` override, else the file that
``benchmarks/search.py --objective kernel`` writes for this GPU (``$DS3KIT_CACHE`` or ``~/.cache/ds3kit``, then
``kernels/patch_nce-<gpu-slug>.json``), else the defaults. On the CPU (Triton's interpreter, ``TRITON_INTERPRET=1``
set before this module is imported) the tiles are 16 x 16, the smallest ``tl.dot`` accepts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ds3kit.ops._checks import check_patch_nce_inputs

try:
    import triton
    import triton.language as tl
except ImportError as error:  # pragma: no cover - exercised only where triton is absent
    raise ImportError(
        "ds3kit.ops.patch_nce needs the 'triton' package (pip install triton); without it use "
        "patch_nce(..., backend='streaming')"
    ) from error

__all__ = ["KernelConfig", "PatchNCEFunction", "get_kernel_config", "kernel_cache_path", "patch_nce_triton",
           "set_kernel_config"]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MIN_BLOCK = 16  # tl.dot needs every tile side >= 16
MAX_DIM = 1024  # one (BLOCK_M, next_pow2(D)) query tile stays in registers / shared memory; CUT uses 256
_LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _mma(a, b, acc, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc + a @ b, accumulated in float32, with ``a`` cast to ``b``'s dtype (the input dtype) first.

    UPCAST works around two bfloat16 bugs of Triton's CPU interpreter (triton 3.8): it multiplies bfloat16 tiles as
    their raw uint16 bits, and it truncates float32 -> bfloat16 instead of rounding. There, bfloat16 tiles go
    through float32 (exact for products of bfloat16 values) and ``a`` is not rounded at all.
    """
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    else:
        a = a.to(b.dtype)
    return tl.dot(a, b, acc=acc, input_precision=INPUT_PRECISION)


@triton.jit
def _patch_nce_forward_kernel(
    Q, K, W, LSE, LOSS,
    N, D, qk_scale, scale,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    group = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_mask = rows < N
    dim_mask = dims < D
    base = group.to(tl.int64) * N * D  # int64: B * N * D may pass 2**31
    tile_mask = row_mask[:, None] & dim_mask[None, :]
    q = tl.load(Q + base + rows[:, None] * D + dims[None, :], mask=tile_mask, other=0.0)
    own_key = tl.load(K + base + rows[:, None] * D + dims[None, :], mask=tile_mask, other=0.0)
    positive = tl.sum(q.to(tl.float32) * own_key.to(tl.float32), axis=1) * scale

    # Online log-sum-exp in base 2 (exp2 is the native instruction): scores are pre-multiplied by log2(e) / T.
    running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_mask = cols < N
        k = tl.load(K + base + cols[:, None] * D + dims[None, :], mask=col_mask[:, None] & dim_mask[None, :],
                    other=0.0)
        scores = _mma(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), UPCAST, INPUT_PRECISION) * qk_scale
        scores = tl.where(col_mask[None, :], scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        running_sum = running_sum * tl.exp2(running_max - new_max) + tl.sum(tl.exp2(scores - new_max[:, None]), axis=1)
        running_max = new_max
    lse = (running_max + tl.log2(running_sum)) * 0.6931471805599453
    loss = lse - positive
    if HAS_WEIGHT:
        loss = loss * tl.load(W + group.to(tl.int64) * N + rows, mask=row_mask, other=0.0)
    tl.store(LSE + group.to(tl.int64) * N + rows, lse, mask=row_mask)
    tl.store(LOSS + group.to(tl.int64) * N + rows, loss, mask=row_mask)


@triton.jit
def _patch_nce_query_grad_kernel(
    Q, K, LSE, G, DQ,
    N, D, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """dq_i = g_i sum_j (p_ij - [i == j]) k_j, with g already holding the 1/T factor."""
    group = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_mask = rows < N
    dim_mask = dims < D
    base = group.to(tl.int64) * N * D
    tile_mask = row_mask[:, None] & dim_mask[None, :]
    q = tl.load(Q + base + rows[:, None] * D + dims[None, :], mask=tile_mask, other=0.0)
    lse2 = tl.load(LSE + group.to(tl.int64) * N + rows, mask=row_mask, other=0.0) * 1.4426950408889634
    g = tl.load(G + group.to(tl.int64) * N + rows, mask=row_mask, other=0.0)
    weighted_keys = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_mask = cols < N
        k = tl.load(K + base + cols[:, None] * D + dims[None, :], mask=col_mask[:, None] & dim_mask[None, :],
                    other=0.0)
        scores = _mma(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), UPCAST, INPUT_PRECISION) * qk_scale
        # p_ij - [i == j]: the positive's -k_i rides in the same product. Subtracting before the cast to the input
        # dtype keeps half-precision error relative to 1 - p_ii (small once the positive dominates), not to p_ii.
        p = tl.exp2(scores - lse2[:, None]) - tl.where(rows[:, None] == cols[None, :], 1.0, 0.0)
        p = tl.where(col_mask[None, :], p, 0.0)
        weighted_keys = _mma(p, k, weighted_keys, UPCAST, INPUT_PRECISION)
    dq = g[:, None] * weighted_keys
    tl.store(DQ + base + rows[:, None] * D + dims[None, :], dq.to(DQ.dtype.element_ty), mask=tile_mask)


@triton.jit
def _patch_nce_key_grad_kernel(
    Q, K, LSE, G, DK,
    N, D, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """dk_j = sum_i g_i (p_ij - [i == j]) q_i, with g already holding the 1/T factor; this program owns BLOCK_N keys."""
    group = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    col_mask = cols < N
    dim_mask = dims < D
    base = group.to(tl.int64) * N * D
    tile_mask = col_mask[:, None] & dim_mask[None, :]
    k = tl.load(K + base + cols[:, None] * D + dims[None, :], mask=tile_mask, other=0.0)
    weighted_queries = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_mask = rows < N
        q = tl.load(Q + base + rows[:, None] * D + dims[None, :], mask=row_mask[:, None] & dim_mask[None, :],
                    other=0.0)
        lse2 = tl.load(LSE + group.to(tl.int64) * N + rows, mask=row_mask, other=0.0) * 1.4426950408889634
        g = tl.load(G + group.to(tl.int64) * N + rows, mask=row_mask, other=0.0)
        zeros = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        scores_t = _mma(k, tl.trans(q), zeros, UPCAST, INPUT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(scores_t - lse2[None, :]) - tl.where(cols[:, None] == rows[None, :], 1.0, 0.0)
        p_t = tl.where(row_mask[None, :], p_t * g[None, :], 0.0)
        weighted_queries = _mma(p_t, q, weighted_queries, UPCAST, INPUT_PRECISION)
    tl.store(DK + base + cols[:, None] * D + dims[None, :], weighted_queries.to(DK.dtype.element_ty), mask=tile_mask)


_INTERPRETED = type(_patch_nce_forward_kernel).__name__ == "InterpretedFunction"


# --------------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class KernelConfig:
    """Tiles and launch parameters of the three kernels (names as ``benchmarks/search.py`` tunes them).

    ``block_m``: query rows per tile; ``block_n``: key rows per tile (powers of two >= 16). ``num_warps`` and
    ``num_stages`` go to every launch (ignored by the interpreter).
    """

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < MIN_BLOCK or value & (value - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of two >= {MIN_BLOCK}, got {value!r}")
        if not isinstance(self.num_warps, int) or self.num_warps < 1 or self.num_warps & (self.num_warps - 1):
            raise ValueError(f"KernelConfig.num_warps must be a power of two >= 1, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"KernelConfig.num_stages must be >= 1, got {self.num_stages!r}")


INTERPRETER_CONFIG = KernelConfig(block_m=16, block_n=16, num_warps=1, num_stages=1)
_override: KernelConfig | None = None


def set_kernel_config(config: KernelConfig | None) -> None:
    """Force ``config`` for every later call (``None`` goes back to the cached tuning file, then the defaults)."""
    global _override
    if config is not None and not isinstance(config, KernelConfig):
        raise ValueError(f"set_kernel_config expects a KernelConfig or None, got {type(config).__name__}")
    _override = config


def _gpu_name(device: torch.device) -> str:
    """The GPU's name as the search records it; a function of its own so that tests can replace it."""
    return torch.cuda.get_device_name(device)


def kernel_cache_path(device_name: str) -> Path:
    """``$DS3KIT_CACHE`` (or ``~/.cache/ds3kit``) ``/kernels/patch_nce-<slug>.json``, the path the search writes."""
    slug = "".join(c if c.isalnum() else "-" for c in device_name).strip("-").lower()
    base = Path(os.environ.get("DS3KIT_CACHE") or Path.home() / ".cache" / "ds3kit")
    return base / "kernels" / f"patch_nce-{slug}.json"


@functools.lru_cache(maxsize=None)
def _load_config(path: Path) -> KernelConfig:
    """The tuned config at ``path`` (read once per path and process), or the defaults when absent or unusable."""
    if not path.is_file():
        return KernelConfig()
    try:
        values = json.loads(path.read_text())["config"]
        known = {field.name for field in dataclasses.fields(KernelConfig)}
        return KernelConfig(**{name: value for name, value in values.items() if name in known})
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"ignoring the patch_nce kernel config {path}: {error}; using the defaults", stacklevel=3)
        return KernelConfig()


def get_kernel_config(device: torch.device | str) -> KernelConfig:
    """The config a launch on ``device`` uses: the override, else the search's file for this GPU, else defaults."""
    if _override is not None:
        return _override
    device = torch.device(device)
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    return _load_config(kernel_cache_path(_gpu_name(device)))


def clear_kernel_config_cache() -> None:
    """Forget the tuning files read so far (after a new search, or in tests)."""
    _load_config.cache_clear()


# --------------------------------------------------------------------------------------------------------- launch
def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def _launch_parameters(n: int, d: int, device: torch.device) -> dict:
    config = get_kernel_config(device)
    cap = max(MIN_BLOCK, triton.next_power_of_2(n))  # no tile wider than the padded group
    return {
        "BLOCK_M": min(config.block_m, cap), "BLOCK_N": min(config.block_n, cap),
        "BLOCK_D": max(MIN_BLOCK, triton.next_power_of_2(d)),
        "num_warps": config.num_warps, "num_stages": config.num_stages,
    }


class PatchNCEFunction(torch.autograd.Function):
    """Forward: one kernel over (B, cdiv(N, BLOCK_M)); saves the inputs and the row log-sum-exp (B, N) only."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, weight: Tensor | None = None, temperature: float = 0.07,
                reduction: str = "mean") -> Tensor:
        _check_device(query)
        q, k = query.contiguous(), key.contiguous()
        batch, n, d = q.shape
        w = None if weight is None else weight.detach().to(device=q.device, dtype=torch.float32).contiguous()
        lse = torch.empty(batch, n, device=q.device, dtype=torch.float32)
        losses = torch.empty(batch, n, device=q.device, dtype=torch.float32)
        launch = _launch_parameters(n, d, q.device)
        precision = _input_precision(q.dtype)
        upcast = _INTERPRETED and q.dtype == torch.bfloat16
        scale = 1.0 / temperature
        grid = (batch, triton.cdiv(n, launch["BLOCK_M"]))
        _patch_nce_forward_kernel[grid](
            q, k, lse if w is None else w, lse, losses, n, d, scale * _LOG2E, scale,
            HAS_WEIGHT=w is not None, INPUT_PRECISION=precision, UPCAST=upcast, **launch,
        )
        ctx.save_for_backward(q, k, w, lse)
        ctx.scale, ctx.reduction, ctx.launch, ctx.precision, ctx.upcast = scale, reduction, launch, precision, upcast
        if reduction == "mean":
            return losses.mean()
        if reduction == "sum":
            return losses.sum()
        return losses

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        need_query, need_key = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_query or need_key):
            return None, None, None, None, None
        q, k, w, lse = ctx.saved_tensors
        batch, n, d = q.shape
        # g_i = upstream_i * w_i * (1/(B N) for the mean) / T, a (B, N) vector: the upstream scalar is folded in
        # here, so it never scales the (B, N, D) gradients (and no host sync asks whether it equals 1).
        factor = ctx.scale / (batch * n) if ctx.reduction == "mean" else ctx.scale
        grad = grad_output.to(torch.float32)
        if ctx.reduction == "none":
            row_grad = grad * factor
        else:
            row_grad = (grad * factor).expand(batch, n)
        if w is not None:
            row_grad = row_grad * w
        row_grad = row_grad.contiguous()
        launch, qk_scale = ctx.launch, ctx.scale * _LOG2E
        grad_query = grad_key = None
        # The interpreter's float32 -> bfloat16 store truncates: there torch does the rounding (see _mma).
        grad_dtype = torch.float32 if ctx.upcast else q.dtype
        if need_query:
            grad_query = torch.empty_like(q, dtype=grad_dtype)
            _patch_nce_query_grad_kernel[(batch, triton.cdiv(n, launch["BLOCK_M"]))](
                q, k, lse, row_grad, grad_query, n, d, qk_scale,
                INPUT_PRECISION=ctx.precision, UPCAST=ctx.upcast, **launch,
            )
        if need_key:
            grad_key = torch.empty_like(k, dtype=grad_dtype)
            _patch_nce_key_grad_kernel[(batch, triton.cdiv(n, launch["BLOCK_N"]))](
                q, k, lse, row_grad, grad_key, n, d, qk_scale,
                INPUT_PRECISION=ctx.precision, UPCAST=ctx.upcast, **launch,
            )
        if ctx.upcast:
            grad_query = None if grad_query is None else grad_query.to(q.dtype)
            grad_key = None if grad_key is None else grad_key.to(k.dtype)
        return grad_query, grad_key, None, None, None


def _check_device(query: Tensor) -> None:
    if query.is_cuda or _INTERPRETED:
        return
    raise ValueError(
        "ds3kit.ops.patch_nce runs on CUDA tensors, or on the CPU through Triton's interpreter: set "
        "TRITON_INTERPRET=1 in the environment before ds3kit.ops.patch_nce is first imported; got a "
        f"{query.device.type} tensor and compiled kernels"
    )


def patch_nce_triton(
    query: Tensor, key: Tensor, *, temperature: float = 0.07, weight: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    r"""PatchNCE by the fused Triton kernels; the contract of :func:`ds3kit.losses.patch_nce.patch_nce`.

    Args:
        query: (B, N, D) float32 / bfloat16 / float16, rows L2-normalised; D <= 1024.
        key: (B, N, D), same dtype; row i is the positive of query row i. Gets a gradient when it requires one.
        temperature: T > 0.
        weight: (B, N) constant per-row weights (must not require grad), or None.
        reduction: ``"mean"`` (over B * N), ``"sum"`` or ``"none"`` ((B, N) of ``w_i * l_i``).

    Returns:
        float32: a scalar, or (B, N) for ``reduction="none"``. Gradients have the inputs' dtype.

    Raises:
        ValueError: bad shapes, dtypes (float64 included: use the ``"streaming"`` or ``"reference"`` backend),
            reduction or temperature, or CPU tensors without the interpreter.
    """
    check_patch_nce_inputs(query, key, temperature, weight, reduction)
    if query.dtype not in DTYPES:
        raise ValueError(
            f"the triton backend takes float32, bfloat16 or float16 query and key, got {query.dtype} "
            "(float64: use backend='streaming' or 'reference')"
        )
    if query.shape[2] > MAX_DIM:
        raise ValueError(f"the triton backend takes D <= {MAX_DIM}, got D = {query.shape[2]}")
    _check_device(query)
    return PatchNCEFunction.apply(query, key, weight, float(temperature), reduction)
