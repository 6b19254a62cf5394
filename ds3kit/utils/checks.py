"""One-line input checks that raise ``ValueError`` saying what was expected and what was given."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_ndim(tensor: torch.Tensor, ndims: int | Sequence[int], name: str, layout: str = "") -> None:
    """Raise if ``tensor.dim()`` is not one of ``ndims``; ``layout`` (e.g. "(B, N, D)") is named in the message."""
    allowed = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() not in allowed:
        expected = layout or " or ".join(f"{n}-D" for n in allowed)
        raise ValueError(f"{name} must be {expected}, got shape {tuple(tensor.shape)}")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Raise if two tensors differ in shape."""
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise if ``tensor`` holds NaN or Inf."""
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or Inf)")
