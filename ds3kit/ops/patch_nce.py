r"""Fused Triton kernels of the patchwise contrastive loss (CUT's PatchNCE), with their autograd Function.

For group :math:`b` and row :math:`i`, with scores :math:`s_{ij} = q_i \cdot k_j / T` over the N keys of the group:

.. math::
    \ell_i = \log \sum_j e^{s_{ij}} - s_{ii}, \qquad
    \frac{\partial}{\partial q_i} = \frac{g_i}{T}\Big(\sum_j p_{ij} k_j - k_i\Big), \qquad
    \frac{\partial}{\partial k_j} = \frac{1}{T}\Big(\sum_i g_i p_{ij} q_i - g_j q_j\Big)

with :math:`p_{ij} = e^{s_{ij} - \mathrm{lse}_i}` and :math:`g_i` the upstream gradient of row i times its weight
(times :math:`1/(BN)` for the mean). No kernel ever holds more than one (BLOCK_M, BLOCK_N) score tile, nor more
than a BLOCK_D-wide slice of D (``KernelConfig.block_d``: with several chunks the score tiles are summed over them):

- forward, one launch over a (cdiv(N, BLOCK_M), B) grid: a program loads its query tile once and streams the key
  tiles of its group with an online log-sum-exp (scores by ``tl.dot``); it writes the row log-sum-exp (B, N) float32
  (the only thing saved for backward besides the inputs) and the weighted row losses (B, N) float32;
- backward, query gradient: the same grid times the D chunks; each program recomputes its scores tile by tile
  from the saved log-sum-exp and accumulates :math:`\sum_j p_{ij} k_j` for its chunk of D;
- backward, key gradient: a (cdiv(N, BLOCK_N), B, D chunks) grid; each program owns a key tile and streams the
  query tiles, accumulating :math:`\sum_i g_i p_{ij} q_i`. Every output row has one writer: no atomics, deterministic.

Inputs are float32, bfloat16 or float16 (float64 is rejected: use the streaming or reference backend); tiles are
multiplied in the input dtype and accumulated in float32. Float32 tiles are multiplied in IEEE float32 unless
``torch.get_float32_matmul_precision()`` allows TF32 (the same switch torch's own matmuls obey).

Tile sizes come from :class:`KernelConfig`: an explicit :func:`set_kernel_config` override, else the file that
``benchmarks/search.py --objective kernel`` writes for this GPU (``$DS3KIT_CACHE`` or ``~/.cache/ds3kit``, then
``kernels/patch_nce-<gpu-slug>.json``) for the dtype and D it was tuned for, else the per-GPU table of
:mod:`ds3kit.ops.configs` (by compute capability, dtype and D: configs that fit the GPU's shared memory with no
spills, ``ds3kit kernels check`` verifies them). A launch that still raises ``OutOfResources`` retries smaller
configs, then the streaming torch path, with one warning. On the CPU (Triton's interpreter, ``TRITON_INTERPRET=1``
set before this module is imported) the tiles are 16 x 16, the smallest ``tl.dot`` accepts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from ds3kit.ops._checks import check_patch_nce_inputs
from ds3kit.ops.configs import (
    DTYPE_NAMES,
    INTERPRETER_CONFIG,
    MAX_DIM,
    MIN_BLOCK,
    KernelConfig,
    default_config,
    padded_dim,
    smaller_configs,
)
from ds3kit.ops.interpreter import interpreter_on
from ds3kit.ops.patch_nce_streaming import StreamingPatchNCE, streaming_gradients

try:
    import triton
    import triton.language as tl
    from triton.runtime.errors import OutOfResources
except ImportError as error:  # pragma: no cover - exercised only where triton is absent
    raise ImportError(
        "ds3kit.ops.patch_nce needs the 'triton' package (pip install triton); without it use "
        "patch_nce(..., backend='streaming')"
    ) from error

__all__ = [
    "KernelConfig",
    "NoConfigLaunches",
    "PatchNCEFunction",
    "backward_rows",
    "forward_rows",
    "get_kernel_config",
    "kernel_cache_path",
    "patch_nce_triton",
    "set_kernel_config",
]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
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
def _scores(
    A,
    B,
    base,
    a_rows,
    b_rows,
    a_mask,
    b_mask,
    D,
    a_tile,
    b_tile,
    BLOCK_D: tl.constexpr,
    D_CHUNKS: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """(len(a_rows), len(b_rows)) float32 tile of a_i . b_j over all of D.

    One chunk (D_CHUNKS == 1): ``a_tile`` and ``b_tile`` are the caller's loaded (rows, BLOCK_D) tiles. Several:
    the products are summed over D in chunks of BLOCK_D loaded here (the caller's tiles are unused), so no program
    holds more than a (rows, BLOCK_D) slice of either side.
    """
    acc = tl.zeros([a_rows.shape[0], b_rows.shape[0]], tl.float32)
    if D_CHUNKS == 1:
        acc = _mma(a_tile, tl.trans(b_tile), acc, UPCAST, INPUT_PRECISION)
    else:
        for chunk in range(0, D_CHUNKS):
            dims = chunk * BLOCK_D + tl.arange(0, BLOCK_D)
            dim_mask = dims < D
            a = tl.load(
                A + base + a_rows[:, None] * D + dims[None, :], mask=a_mask[:, None] & dim_mask[None, :], other=0.0
            )
            b = tl.load(
                B + base + b_rows[:, None] * D + dims[None, :], mask=b_mask[:, None] & dim_mask[None, :], other=0.0
            )
            acc = _mma(a, tl.trans(b), acc, UPCAST, INPUT_PRECISION)
    return acc


@triton.jit
def _patch_nce_forward_kernel(
    Q,
    K,
    W,
    LSE,
    LOSS,
    N,
    D,
    qk_scale,
    scale,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    D_CHUNKS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    group = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    base = group.to(tl.int64) * N * D  # int64: B * N * D may pass 2**31
    # The positives s_ii, chunk by chunk; with one chunk the query tile stays loaded for the score loop.
    positive = tl.zeros([BLOCK_M], tl.float32)
    q = tl.zeros([BLOCK_M, BLOCK_D], Q.dtype.element_ty)
    for chunk in range(0, D_CHUNKS):
        dims = chunk * BLOCK_D + tl.arange(0, BLOCK_D)
        tile_mask = row_mask[:, None] & (dims < D)[None, :]
        q = tl.load(Q + base + rows[:, None] * D + dims[None, :], mask=tile_mask, other=0.0)
        own_key = tl.load(K + base + rows[:, None] * D + dims[None, :], mask=tile_mask, other=0.0)
        positive += tl.sum(q.to(tl.float32) * own_key.to(tl.float32), axis=1)
    positive = positive * scale

    # Online log-sum-exp in base 2 (exp2 is the native instruction): scores are pre-multiplied by log2(e) / T.
    dims = tl.arange(0, BLOCK_D)
    running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_mask = cols < N
        k = q  # unused with several chunks
        if D_CHUNKS == 1:
            k = tl.load(
                K + base + cols[:, None] * D + dims[None, :], mask=col_mask[:, None] & (dims < D)[None, :], other=0.0
            )
        scores = (
            _scores(Q, K, base, rows, cols, row_mask, col_mask, D, q, k, BLOCK_D, D_CHUNKS, UPCAST, INPUT_PRECISION)
            * qk_scale
        )
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
    Q,
    K,
    LSE,
    G,
    DQ,
    N,
    D,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    D_CHUNKS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """dq_i = g_i sum_j (p_ij - [i == j]) k_j, with g already holding the 1/T factor; program (i, b, c) writes
    the rows of query tile i of group b, columns of D-chunk c."""
    group = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_mask = rows < N
    dim_mask = dims < D
    base = group.to(tl.int64) * N * D
    tile_mask = row_mask[:, None] & dim_mask[None, :]
    q = tl.zeros([BLOCK_M, BLOCK_D], Q.dtype.element_ty)  # unused with several chunks
    if D_CHUNKS == 1:
        q = tl.load(Q + base + rows[:, None] * D + dims[None, :], mask=tile_mask, other=0.0)
    lse2 = tl.load(LSE + group.to(tl.int64) * N + rows, mask=row_mask, other=0.0) * 1.4426950408889634
    g = tl.load(G + group.to(tl.int64) * N + rows, mask=row_mask, other=0.0)
    weighted_keys = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_mask = cols < N
        k = tl.load(K + base + cols[:, None] * D + dims[None, :], mask=col_mask[:, None] & dim_mask[None, :], other=0.0)
        scores = (
            _scores(Q, K, base, rows, cols, row_mask, col_mask, D, q, k, BLOCK_D, D_CHUNKS, UPCAST, INPUT_PRECISION)
            * qk_scale
        )
        # p_ij - [i == j]: the positive's -k_i rides in the same product. Subtracting before the cast to the input
        # dtype keeps half-precision error relative to 1 - p_ii (small once the positive dominates), not to p_ii.
        p = tl.exp2(scores - lse2[:, None]) - tl.where(rows[:, None] == cols[None, :], 1.0, 0.0)
        p = tl.where(col_mask[None, :], p, 0.0)
        weighted_keys = _mma(p, k, weighted_keys, UPCAST, INPUT_PRECISION)
    dq = g[:, None] * weighted_keys
    tl.store(DQ + base + rows[:, None] * D + dims[None, :], dq.to(DQ.dtype.element_ty), mask=tile_mask)


@triton.jit
def _patch_nce_key_grad_kernel(
    Q,
    K,
    LSE,
    G,
    DK,
    N,
    D,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    D_CHUNKS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """dk_j = sum_i g_i (p_ij - [i == j]) q_i, with g already holding the 1/T factor; program (j, b, c) owns
    key tile j of group b and writes its D-chunk c."""
    group = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < N
    dim_mask = dims < D
    base = group.to(tl.int64) * N * D
    tile_mask = col_mask[:, None] & dim_mask[None, :]
    k = tl.zeros([BLOCK_N, BLOCK_D], K.dtype.element_ty)  # unused with several chunks
    if D_CHUNKS == 1:
        k = tl.load(K + base + cols[:, None] * D + dims[None, :], mask=tile_mask, other=0.0)
    weighted_queries = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_mask = rows < N
        q = tl.load(Q + base + rows[:, None] * D + dims[None, :], mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
        lse2 = tl.load(LSE + group.to(tl.int64) * N + rows, mask=row_mask, other=0.0) * 1.4426950408889634
        g = tl.load(G + group.to(tl.int64) * N + rows, mask=row_mask, other=0.0)
        scores_t = (
            _scores(K, Q, base, cols, rows, col_mask, row_mask, D, k, q, BLOCK_D, D_CHUNKS, UPCAST, INPUT_PRECISION)
            * qk_scale
        )  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(scores_t - lse2[None, :]) - tl.where(cols[:, None] == rows[None, :], 1.0, 0.0)
        p_t = tl.where(row_mask[None, :], p_t * g[None, :], 0.0)
        weighted_queries = _mma(p_t, q, weighted_queries, UPCAST, INPUT_PRECISION)
    tl.store(DK + base + cols[:, None] * D + dims[None, :], weighted_queries.to(DK.dtype.element_ty), mask=tile_mask)


KERNELS = {"forward": _patch_nce_forward_kernel, "dq": _patch_nce_query_grad_kernel, "dk": _patch_nce_key_grad_kernel}
_INTERPRETED = interpreter_on()  # what triton.jit read when it decorated the kernels above


# --------------------------------------------------------------------------------------------------------- config
_override: KernelConfig | None = None


def set_kernel_config(config: KernelConfig | None) -> None:
    """Force ``config`` for every later call (``None`` goes back to the tuning file, then the per-GPU table)."""
    global _override
    if config is not None and not isinstance(config, KernelConfig):
        raise ValueError(f"set_kernel_config expects a KernelConfig or None, got {type(config).__name__}")
    _override = config


def _gpu_name(device: torch.device) -> str:
    """The GPU's name as the search records it; a function of its own so that tests can replace it."""
    return torch.cuda.get_device_name(device)


def _capability(device: torch.device) -> tuple[int, int]:
    """The GPU's compute capability; a function of its own so that tests can replace it."""
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def kernel_cache_path(device_name: str) -> Path:
    """``$DS3KIT_CACHE`` (or ``~/.cache/ds3kit``) ``/kernels/patch_nce-<slug>.json``, the path the search writes."""
    slug = "".join(c if c.isalnum() else "-" for c in device_name).strip("-").lower()
    base = Path(os.environ.get("DS3KIT_CACHE") or Path.home() / ".cache" / "ds3kit")
    return base / "kernels" / f"patch_nce-{slug}.json"


@functools.cache
def _load_tuned(path: Path) -> tuple[KernelConfig | None, str | None, int | None]:
    """The tuned config at ``path`` and the (dtype, D) it was tuned for, when the file names them; read once per
    path and process. ``(None, None, None)`` when the file is absent or unusable."""
    if not path.is_file():
        return None, None, None
    try:
        payload = json.loads(path.read_text())
        values = payload["config"]
        known = {field.name for field in dataclasses.fields(KernelConfig)}
        config = KernelConfig(**{name: value for name, value in values.items() if name in known})
        dtype, dim = payload.get("dtype"), payload.get("dim")
        return config, dtype, None if dim is None else padded_dim(int(dim))
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"ignoring the patch_nce kernel config {path}: {error}; using the per-GPU table", stacklevel=3)
        return None, None, None


def get_kernel_config(device: torch.device | str, dtype: torch.dtype = torch.float32, dim: int = 256) -> KernelConfig:
    """The config a launch on ``device`` for ``dtype`` inputs of feature dimension ``dim`` tries first.

    The :func:`set_kernel_config` override; else, on CUDA, the search's file for this GPU (when it was tuned for
    this dtype and padded D, or names neither); else the per-GPU table (:func:`ds3kit.ops.configs.default_config`).
    The interpreter (CPU) gets 16 x 16 tiles.
    """
    if _override is not None:
        return _override
    device = torch.device(device)
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    config, tuned_dtype, tuned_dim = _load_tuned(kernel_cache_path(_gpu_name(device)))
    if config is not None and tuned_dtype in (None, DTYPE_NAMES[dtype]) and tuned_dim in (None, padded_dim(dim)):
        return config
    return default_config(_capability(device), dtype, dim)


def clear_kernel_config_cache() -> None:
    """Forget the tuning files read and the configs found not to launch so far (after a new search, or in tests)."""
    _load_tuned.cache_clear()
    _FAILED.clear()
    _WARNED.clear()


# --------------------------------------------------------------------------------------------------------- launch
class NoConfigLaunches(RuntimeError):
    """No config of a kernel could be launched on this device (each raised ``OutOfResources``)."""


# (device, kernel, dtype, D, config) known not to launch, and the (device, dtype, D, what) already warned about:
# a config that failed once is not compiled again, and each fallback warns once per process.
_FAILED: set[tuple] = set()
_WARNED: set[tuple] = set()


def _input_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def tile_parameters(config: KernelConfig, n: int, d: int) -> dict:
    """The constexprs and launch options of ``config`` for a (B, n, d) problem: tiles no wider than the padded
    group, one D chunk when ``block_d`` is None or covers D."""
    cap = max(MIN_BLOCK, triton.next_power_of_2(n))  # no tile wider than the padded group
    padded = max(MIN_BLOCK, triton.next_power_of_2(d))
    block_d = padded if config.block_d is None else min(config.block_d, padded)
    return {
        "BLOCK_M": min(config.block_m, cap),
        "BLOCK_N": min(config.block_n, cap),
        "BLOCK_D": block_d,
        "D_CHUNKS": triton.cdiv(d, block_d),
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
    }


def _grid(name: str, batch: int, n: int, params: dict) -> tuple[int, int, int]:
    # Row tiles on the fastest axis: the programs resident together belong to one group and stream the same
    # (N, D) operand, which then comes from L2 rather than from memory once per program.
    if name == "forward":
        return triton.cdiv(n, params["BLOCK_M"]), batch, 1
    rows = params["BLOCK_M"] if name == "dq" else params["BLOCK_N"]
    return triton.cdiv(n, rows), batch, params["D_CHUNKS"]


def _warn_once(key: tuple, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _launch(
    name: str,
    configs: list[KernelConfig],
    args: tuple,
    shape: tuple[int, int, int],
    device: torch.device,
    dtype: torch.dtype,
    **constexprs,
) -> KernelConfig:
    """Launch kernel ``name`` with the first of ``configs`` that the device accepts; the config that ran.

    Triton raises ``OutOfResources`` when a compiled kernel needs more shared memory (or threads) than the device
    has; that config is then remembered as failed and the next, smaller one is tried. Raises
    :class:`NoConfigLaunches` when none launches.
    """
    batch, n, d = shape
    last_error: Exception | None = None
    for index, config in enumerate(configs):
        key = (str(device), name, dtype, d, config)
        if key in _FAILED:
            continue
        params = tile_parameters(config, n, d)
        try:
            KERNELS[name][_grid(name, batch, n, params)](*args, **constexprs, **params)
        except OutOfResources as error:
            _FAILED.add(key)
            last_error = error
            continue
        if index > 0 and last_error is not None:
            _warn_once(
                (str(device), dtype, d, "smaller"),
                f"patch_nce: the {name} kernel's config {configs[0].short()} does not launch on {device} for "
                f"{DTYPE_NAMES[dtype]} D = {d} ({last_error}); using {config.short()}",
            )
        return config
    raise NoConfigLaunches(
        f"no config of the patch_nce {name} kernel launches on {device} for {DTYPE_NAMES[dtype]} D = {d}: {last_error}"
    )


def _configs(device: torch.device, dtype: torch.dtype, d: int, first: KernelConfig | None = None) -> list[KernelConfig]:
    first = first or get_kernel_config(device, dtype, d)
    return [first, *smaller_configs(first, d)]


def forward_rows(
    query: Tensor, key: Tensor, weight: Tensor | None, temperature: float
) -> tuple[Tensor, Tensor, KernelConfig]:
    """The weighted row losses (B, N) float32, the row log-sum-exp (B, N) float32, and the config that ran.

    ``query`` and ``key`` contiguous (B, N, D) of one dtype; ``weight`` (B, N) float32 contiguous or None. Raises
    :class:`NoConfigLaunches` when no config launches.
    """
    batch, n, d = query.shape
    lse = torch.empty(batch, n, device=query.device, dtype=torch.float32)
    losses = torch.empty(batch, n, device=query.device, dtype=torch.float32)
    scale = 1.0 / temperature
    config = _launch(
        "forward",
        _configs(query.device, query.dtype, d),
        (query, key, lse if weight is None else weight, lse, losses, n, d, scale * _LOG2E, scale),
        (batch, n, d),
        query.device,
        query.dtype,
        HAS_WEIGHT=weight is not None,
        INPUT_PRECISION=_input_precision(query.dtype),
        UPCAST=_upcast(query.dtype),
    )
    return losses, lse, config


def backward_rows(
    query: Tensor,
    key: Tensor,
    lse: Tensor,
    row_grad: Tensor,
    temperature: float,
    need_query: bool,
    need_key: bool,
    config: KernelConfig | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``sum_i row_grad_i * l_i`` for the wanted inputs (the inputs' dtype).

    ``row_grad`` (B, N) float32: the upstream gradient of each row loss, times its weight. A kernel that launches
    with no config falls back (one warning) to the streaming torch computation of its gradient.
    """
    batch, n, d = query.shape
    scale = 1.0 / temperature
    g = (row_grad.to(torch.float32) * scale).contiguous()
    qk_scale = scale * _LOG2E
    upcast = _upcast(query.dtype)
    # The interpreter's float32 -> bfloat16 store truncates: there torch does the rounding (see _mma).
    grad_dtype = torch.float32 if upcast else query.dtype
    constexprs = {"INPUT_PRECISION": _input_precision(query.dtype), "UPCAST": upcast}
    configs = _configs(query.device, query.dtype, d, config)
    grads: dict[str, Tensor | None] = {"dq": None, "dk": None}
    for name, wanted in (("dq", need_query), ("dk", need_key)):
        if not wanted:
            continue
        out = torch.empty_like(query, dtype=grad_dtype)
        try:
            _launch(
                name,
                configs,
                (query, key, lse, g, out, n, d, qk_scale),
                (batch, n, d),
                query.device,
                query.dtype,
                **constexprs,
            )
        except NoConfigLaunches as error:
            _warn_once((str(query.device), query.dtype, d, "streaming"), f"{error}; using the streaming torch path")
            out = _streaming_gradient(query, key, lse, row_grad, scale, name)
        grads[name] = out.to(query.dtype)
    return grads["dq"], grads["dk"]


def _streaming_gradient(query: Tensor, key: Tensor, lse: Tensor, row_grad: Tensor, scale: float, name: str) -> Tensor:
    dq, dk = streaming_gradients(
        query.float(), key.float(), lse, row_grad.to(torch.float32), scale, name == "dq", name == "dk"
    )
    return dq if name == "dq" else dk


def _upcast(dtype: torch.dtype) -> bool:
    return _INTERPRETED and dtype == torch.bfloat16


class PatchNCEFunction(torch.autograd.Function):
    """Forward: one kernel over (B, cdiv(N, BLOCK_M)); saves the inputs and the row log-sum-exp (B, N) only."""

    @staticmethod
    def forward(
        ctx,
        query: Tensor,
        key: Tensor,
        weight: Tensor | None = None,
        temperature: float = 0.07,
        reduction: str = "mean",
    ) -> Tensor:
        _check_device(query)
        q, k = query.contiguous(), key.contiguous()
        w = None if weight is None else weight.detach().to(device=q.device, dtype=torch.float32).contiguous()
        losses, lse, config = forward_rows(q, k, w, temperature)
        ctx.save_for_backward(q, k, w, lse)
        ctx.temperature, ctx.reduction, ctx.config = temperature, reduction, config
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
        batch, n, _ = q.shape
        # row_grad_i = upstream_i * w_i (/ (B N) for the mean), a (B, N) vector: the upstream scalar is folded in
        # here, so it never scales the (B, N, D) gradients (and no host sync asks whether it equals 1).
        grad = grad_output.to(torch.float32)
        if ctx.reduction == "mean":
            grad = grad / (batch * n)
        row_grad = grad if ctx.reduction == "none" else grad.expand(batch, n)
        if w is not None:
            row_grad = row_grad * w
        grad_query, grad_key = backward_rows(q, k, lse, row_grad, ctx.temperature, need_query, need_key, ctx.config)
        return grad_query, grad_key, None, None, None


def _check_device(query: Tensor) -> None:
    if query.is_cuda or _INTERPRETED:
        return
    raise ValueError(
        "ds3kit.ops.patch_nce runs on CUDA tensors, or on the CPU through Triton's interpreter: set "
        "TRITON_INTERPRET=1 in the environment before ds3kit.ops.patch_nce is first imported; got a "
        f"{query.device.type} tensor and compiled kernels"
    )


def _check_triton_inputs(query: Tensor, key: Tensor, temperature: float, weight: Tensor | None, reduction: str) -> None:
    check_patch_nce_inputs(query, key, temperature, weight, reduction)
    if query.dtype not in DTYPES:
        raise ValueError(
            f"the triton backend takes float32, bfloat16 or float16 query and key, got {query.dtype} "
            "(float64: use backend='streaming' or 'reference')"
        )
    if query.shape[2] > MAX_DIM:
        raise ValueError(f"the triton backend takes D <= {MAX_DIM}, got D = {query.shape[2]}")
    _check_device(query)


def patch_nce_triton(
    query: Tensor, key: Tensor, *, temperature: float = 0.07, weight: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    r"""PatchNCE by the fused Triton kernels; the contract of :func:`ds3kit.losses.patch_nce.patch_nce`.

    When no config of the forward kernel launches on the device (``OutOfResources`` for each), the loss comes
    from the streaming torch path instead, with one warning; the same holds for each backward kernel.

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
    _check_triton_inputs(query, key, temperature, weight, reduction)
    try:
        return PatchNCEFunction.apply(query, key, weight, float(temperature), reduction)
    except NoConfigLaunches as error:
        _warn_once(
            (str(query.device), query.dtype, query.shape[2], "streaming"), f"{error}; using the streaming torch path"
        )
    return StreamingPatchNCE.apply(query, key, weight, float(temperature), reduction)
