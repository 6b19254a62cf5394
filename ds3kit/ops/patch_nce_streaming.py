r"""The streaming torch path of the patchwise contrastive loss (CUT's PatchNCE), with its autograd Function.

The CPU (and fallback) counterpart of the Triton kernels in :mod:`ds3kit.ops.patch_nce`, same contract and no
triton import: queries and keys are tiled, a running log-sum-exp is kept over the key tiles, so memory is
O(N D + tile^2) instead of the (B, N, N) logits. Scalar outputs get their gradients in the forward pass (backward
only scales them); ``reduction="none"`` recomputes the score tiles in backward. Callers go through the dispatcher
:func:`ds3kit.losses.patch_nce.patch_nce` (``backend="streaming"``, and ``"auto"`` on the CPU); the Triton
backend falls back to this path when no kernel config launches.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "KEY_TILE",
    "QUERY_TILE",
    "StreamingPatchNCE",
    "accumulator_dtype",
    "reduce_losses",
    "row_logsumexp",
    "streaming_gradients",
]

# Tile sides of the streaming path: a (B, 4096, 1024) float32 score tile is 16 MiB per group. Why these sides (the
# timings): docs/benchmarks.md, "Streaming PatchNCE tile sides".
QUERY_TILE = 4096
KEY_TILE = 1024
# float32 exp underflows below about -87; a fixed shift is used only when every score lies within this range of it.
_EXP_SAFE_RANGE = 60.0


def accumulator_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype the losses are accumulated in: float64 for float64 inputs, float32 otherwise."""
    # Half-precision inputs accumulate in float32; float64 (gradcheck, references) stays float64.
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def reduce_losses(losses: Tensor, reduction: str) -> Tensor:
    """``"mean"``, ``"sum"`` or ``"none"`` (the rows as they are) of (B, N) row losses."""
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


class StreamingPatchNCE(torch.autograd.Function):
    """Tiled forward with a running log-sum-exp; never holds more than a (B, QUERY_TILE, KEY_TILE) score tile."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, weight: Tensor | None, temperature: float, reduction: str) -> Tensor:
        need_query, need_key = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        q, k = query.to(accumulator_dtype(query)), key.to(accumulator_dtype(key))
        batch, n, _ = q.shape
        scale = 1.0 / temperature
        positive = (q * k).sum(-1) * scale
        # The query gradient needs sum_j p_ij k_j (attention with values = keys); when it is wanted now (scalar
        # output), it is accumulated in the same pass as the log-sum-exp, so no score tile is computed twice.
        early_query_grad = need_query and reduction != "none"
        lse, attention = row_logsumexp(q, k, scale, with_attention=early_query_grad)
        losses = lse - positive
        weighted = losses if weight is None else losses * weight.to(q.dtype)
        output = reduce_losses(weighted, reduction)
        ctx.reduction, ctx.scale = reduction, scale
        ctx.input_dtypes = (query.dtype, key.dtype)
        if not (need_query or need_key):
            return output
        if reduction == "none":
            ctx.save_for_backward(q, k, weight, lse)
            return output
        # Scalar output: the gradient is known up to the upstream scalar, so produce it now (no recompute later).
        row_grad = torch.full(
            (batch, n), 1.0 / (batch * n) if reduction == "mean" else 1.0, device=q.device, dtype=q.dtype
        )
        if weight is not None:
            row_grad = row_grad * weight.to(q.dtype)
        grad_query = (row_grad * scale)[..., None] * (attention - k) if early_query_grad else None
        _, grad_key = streaming_gradients(q, k, lse, row_grad, scale, False, need_key) if need_key else (None, None)
        ctx.save_for_backward(grad_query, grad_key)
        return output

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        if ctx.reduction == "none":
            q, k, weight, lse = ctx.saved_tensors
            row_grad = grad_output.to(q.dtype) if weight is None else grad_output.to(q.dtype) * weight.to(q.dtype)
            grad_query, grad_key = streaming_gradients(q, k, lse, row_grad, ctx.scale, *ctx.needs_input_grad[:2])
        else:
            grad_query, grad_key = ctx.saved_tensors
            if not torch.equal(grad_output, torch.ones_like(grad_output)):  # skip the scaling when it is 1
                grad_query = None if grad_query is None else grad_query * grad_output
                grad_key = None if grad_key is None else grad_key * grad_output
        grad_query = None if grad_query is None else grad_query.to(ctx.input_dtypes[0])
        grad_key = None if grad_key is None else grad_key.to(ctx.input_dtypes[1])
        return grad_query, grad_key, None, None, None


def row_logsumexp(q: Tensor, k: Tensor, scale: float, *, with_attention: bool = False) -> tuple[Tensor, Tensor | None]:
    """log sum_j exp(q_i . k_j * scale) per row over key tiles and, if asked, the softmax-weighted key average
    sum_j p_ij k_j accumulated in the same pass."""
    batch, n, _ = q.shape
    q = q * scale  # scale once here instead of once per score tile
    if n <= min(QUERY_TILE, KEY_TILE):
        # One tile holds every score (CUT's 256 patches): fused library kernels beat the running sums.
        scores = torch.bmm(q, k.transpose(1, 2))
        lse = torch.logsumexp(scores, dim=-1)
        attention = torch.bmm(scores.sub_(lse[..., None]).exp_(), k) if with_attention else None
        return lse, attention
    # |q_i . k_j| * scale <= bound. When exp(-2 * bound) cannot underflow, subtracting the fixed bound instead of a
    # running row maximum is exact enough and skips the max and every rescale (unit rows, T = 0.07: bound 14.3).
    bound = float(q.norm(dim=-1).amax() * k.norm(dim=-1).amax())
    fixed_max = 2.0 * bound < _EXP_SAFE_RANGE
    lse = torch.empty(batch, n, device=q.device, dtype=q.dtype)
    attention = torch.empty_like(q) if with_attention else None
    for i0 in range(0, n, QUERY_TILE):
        q_tile = q[:, i0 : i0 + QUERY_TILE]
        running_max = torch.full(
            q_tile.shape[:2], bound if fixed_max else float("-inf"), device=q.device, dtype=q.dtype
        )
        running_sum = torch.zeros(q_tile.shape[:2], device=q.device, dtype=q.dtype)
        running_values = torch.zeros_like(q_tile) if with_attention else None
        for j0 in range(0, n, KEY_TILE):
            k_tile = k[:, j0 : j0 + KEY_TILE]
            scores = torch.bmm(q_tile, k_tile.transpose(1, 2))
            if not fixed_max:
                new_max = torch.maximum(running_max, scores.amax(-1))
                rescale = torch.exp(running_max - new_max)
                running_sum.mul_(rescale)
                if running_values is not None:
                    running_values.mul_(rescale[..., None])
                running_max = new_max
            probabilities = scores.sub_(running_max[..., None]).exp_()
            running_sum.add_(probabilities.sum(-1))
            if running_values is not None:
                running_values.baddbmm_(probabilities, k_tile)
        lse[:, i0 : i0 + QUERY_TILE] = running_max + torch.log(running_sum)
        if attention is not None:
            attention[:, i0 : i0 + QUERY_TILE] = running_values / running_sum[..., None]
    return lse, attention


def streaming_gradients(
    q: Tensor, k: Tensor, lse: Tensor, row_grad: Tensor, scale: float, need_query: bool, need_key: bool
):
    r"""With :math:`p_{ij} = \mathrm{softmax}_j(s_{ij})` and :math:`g_i` the upstream gradient of row i:
    :math:`dq_i = s\,g_i(\sum_j p_{ij} k_j - k_i)`, :math:`dk_j = s(\sum_i g_i p_{ij} q_i - g_j q_j)`."""
    n = q.shape[1]
    g = row_grad * scale  # (B, N)
    # Scores rounded exactly as row_logsumexp rounded them (scale folded into q first): with scores near 1/T the
    # slightest difference would show in p_ij = exp(s_ij - lse_i).
    scaled_q = q * scale
    grad_query = torch.zeros_like(q) if need_query else None
    grad_key = torch.zeros_like(k) if need_key else None
    for i0 in range(0, n, QUERY_TILE):
        rows = slice(i0, i0 + QUERY_TILE)
        q_tile, g_tile = q[:, rows], g[:, rows, None]
        for j0 in range(0, n, KEY_TILE):
            cols = slice(j0, j0 + KEY_TILE)
            # g_i * p_ij, built in place in the score buffer.
            weights = (
                torch.bmm(scaled_q[:, rows], k[:, cols].transpose(1, 2)).sub_(lse[:, rows, None]).exp_().mul_(g_tile)
            )
            if need_query:
                grad_query[:, rows].baddbmm_(weights, k[:, cols])
            if need_key:
                grad_key[:, cols].baddbmm_(weights.transpose(1, 2), q_tile)
    if need_query:
        grad_query.sub_(g[..., None] * k)
    if need_key:
        grad_key.sub_(g[..., None] * q)
    return grad_query, grad_key
