"""Input checks shared by every PatchNCE backend (no triton import, so CPU-only code can use them)."""

from __future__ import annotations

import torch
from torch import Tensor

from ds3kit.utils.checks import check_ndim, check_same_shape

REDUCTIONS = ("mean", "sum", "none")


def check_patch_nce_inputs(
    query: Tensor, key: Tensor, temperature: float, weight: Tensor | None, reduction: str
) -> None:
    """Raise ``ValueError`` naming the problem: shapes, dtypes, an empty group, T, the reduction, the weights."""
    check_ndim(query, 3, "query", "(B, N, D)")
    check_ndim(key, 3, "key", "(B, N, D)")
    check_same_shape(query, key, "query", "key")
    if query.dtype != key.dtype:
        raise ValueError(f"query and key must share a dtype, got {query.dtype} and {key.dtype}")
    if key.device != query.device:
        raise ValueError(f"query and key must be on one device, got {query.device} and {key.device}")
    if query.shape[1] == 0:
        raise ValueError(f"query must hold at least one patch, got shape {tuple(query.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if weight is not None:
        if weight.shape != query.shape[:2]:
            raise ValueError(f"weight must be (B, N) = {tuple(query.shape[:2])}, got shape {tuple(weight.shape)}")
        if weight.requires_grad:
            raise ValueError("weight is a constant (the detached difficulty map); it must not require grad")
        if weight.device != query.device:
            raise ValueError(f"weight must be on the query's device {query.device}, got {weight.device}")


def is_float_dtype(dtype: torch.dtype) -> bool:
    return dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
