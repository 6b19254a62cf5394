r"""The patchwise contrastive loss (CUT's PatchNCE, difficulty-weighted): functional API, backends, module.

For group :math:`b` (an image, or an image at one encoder layer) with queries :math:`q_i` (synthesized patches) and
keys :math:`k_j` (input patches at the same locations), rows L2-normalised, temperature :math:`T`:

.. math::
    \ell_i = \log \sum_{j=1}^{N} e^{q_i \cdot k_j / T} - q_i \cdot k_i / T

the cross-entropy of picking the key at the query's own location among all N keys of the same group (CUT with
negatives from the same image; in float32 identical to CUT's PatchNCELoss, which fills the diagonal of its
negative block with -10 before dividing by T). Per-patch weights :math:`w_i` (the difficulty map at the patch)
multiply :math:`\ell_i`.

Backends (one dispatch point, :func:`patch_nce`):

- ``"reference"``: eager, materialises the (B, N, N) logits. The readable definition.
- ``"streaming"``: tiles queries and keys, keeps a running log-sum-exp; memory O(N D + tile^2). Scalar outputs get
  their gradients in the forward pass (backward only scales them); ``reduction="none"`` recomputes per tile. Its
  autograd Function is in :mod:`ds3kit.ops.patch_nce_streaming`.
- ``"triton"``: the fused kernels of :mod:`ds3kit.ops.patch_nce` (CUDA, or the CPU under ``TRITON_INTERPRET=1``).
- ``"auto"``: triton for CUDA tensors, streaming otherwise.

Under ``torch.compile`` the streaming and triton backends run as the custom op ``torch.ops.ds3kit.patch_nce_rows``
(with its backward op, an autograd formula and fake implementations), so a compiled graph holds the loss without
a break; in eager mode they run as their autograd Functions (in :mod:`ds3kit.ops`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ds3kit.ops._checks import check_patch_nce_inputs, is_float_dtype
from ds3kit.ops.interpreter import interpreter_on
from ds3kit.ops.patch_nce_streaming import (
    StreamingPatchNCE,
    accumulator_dtype,
    reduce_losses,
    row_logsumexp,
    streaming_gradients,
)
from ds3kit.utils.checks import check_ndim, check_same_shape

BACKENDS = ("auto", "reference", "streaming", "triton")
SAMPLINGS = ("uniform", "difficulty")


def patch_nce(
    query: Tensor,
    key: Tensor,
    *,
    temperature: float = 0.07,
    weight: Tensor | None = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    r"""Patchwise InfoNCE with negatives from the same group; see the module docstring for the math.

    Args:
        query: (B, N, D) float32 / bfloat16 / float16, rows L2-normalised by the caller.
        key: (B, N, D), same dtype; row i of ``key`` is the positive of row i of ``query``.
        temperature: T > 0.
        weight: (B, N) per-patch weights, a constant (must not require grad).
        reduction: ``"mean"`` (over B * N), ``"sum"``, or ``"none"`` ((B, N) of ``w_i * l_i``).
        backend: ``"auto"``, ``"reference"``, ``"streaming"`` or ``"triton"``.

    Returns:
        float32 scalar (float64 for float64 inputs), or (B, N) for ``reduction="none"``. Gradients reach ``query`` and ``key`` whenever
        they require grad (nothing is detached here).

    Example:
        >>> q = F.normalize(torch.randn(2, 17, 8), dim=-1)
        >>> k = F.normalize(torch.randn(2, 17, 8), dim=-1)
        >>> loss = patch_nce(q, k)
        >>> bool(torch.isclose(loss, patch_nce(q, k, backend="reference")))
        True
    """
    _check_inputs(query, key, temperature, weight, reduction, backend)
    if backend == "auto":
        backend = "triton" if query.is_cuda else "streaming"
    if backend == "reference":
        return patch_nce_reference(query, key, temperature=temperature, weight=weight, reduction=reduction)
    if backend == "triton" and not query.is_cuda and not interpreter_on():
        raise ValueError(
            "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 in the environment to run the kernels on the "
            "CPU through Triton's interpreter; use backend='streaming' on the CPU"
        )
    if torch.compiler.is_compiling():
        rows, _ = torch.ops.ds3kit.patch_nce_rows(query, key, weight, float(temperature), backend)
        return reduce_losses(rows, reduction)
    if backend == "streaming":
        return StreamingPatchNCE.apply(query, key, weight, temperature, reduction)
    from ds3kit.ops.patch_nce import patch_nce_triton

    return patch_nce_triton(query, key, temperature=temperature, weight=weight, reduction=reduction)


def patch_nce_reference(
    query: Tensor, key: Tensor, *, temperature: float = 0.07, weight: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Eager definition: (B, N, N) logits, logsumexp minus the diagonal, accumulated in float32 (float64 stays)."""
    accumulator = accumulator_dtype(query)
    logits = torch.bmm(query.to(accumulator), key.to(accumulator).transpose(1, 2)) / temperature
    losses = torch.logsumexp(logits, dim=-1) - torch.diagonal(logits, dim1=-2, dim2=-1)
    return reduce_losses(losses if weight is None else losses * weight.to(accumulator), reduction)


def _check_inputs(
    query: Tensor, key: Tensor, temperature: float, weight: Tensor | None, reduction: str, backend: str
) -> None:
    check_patch_nce_inputs(query, key, temperature, weight, reduction)
    if not is_float_dtype(query.dtype):
        raise ValueError(f"query must be float32, bfloat16 or float16, got {query.dtype}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


# ------------------------------------------------------------------------------------------- the custom op
@torch.library.custom_op("ds3kit::patch_nce_rows", mutates_args=())
def _patch_nce_rows(
    query: Tensor, key: Tensor, weight: Tensor | None, temperature: float, backend: str
) -> tuple[Tensor, Tensor]:
    """(B, N) weighted row losses ``w_i l_i`` and the row log-sum-exp, float32 (float64 for float64 inputs)."""
    if backend == "triton":
        from ds3kit.ops import patch_nce as ops

        w = None if weight is None else weight.to(torch.float32).contiguous()
        try:
            rows, lse, _ = ops.forward_rows(query.contiguous(), key.contiguous(), w, temperature)
            return rows, lse
        except ops.NoConfigLaunches as error:
            ops._warn_once(
                (str(query.device), query.dtype, query.shape[2], "streaming"),
                f"{error}; using the streaming torch path",
            )
    q, k = query.to(accumulator_dtype(query)), key.to(accumulator_dtype(key))
    scale = 1.0 / temperature
    lse, _ = row_logsumexp(q, k, scale)
    rows = lse - (q * k).sum(-1) * scale
    return (rows if weight is None else rows * weight.to(q.dtype)), lse


@_patch_nce_rows.register_fake
def _(query: Tensor, key: Tensor, weight: Tensor | None, temperature: float, backend: str) -> tuple[Tensor, Tensor]:
    shape = query.shape[:2]
    dtype = accumulator_dtype(query)
    return query.new_empty(shape, dtype=dtype), query.new_empty(shape, dtype=dtype)


@torch.library.custom_op("ds3kit::patch_nce_rows_backward", mutates_args=())
def _patch_nce_rows_backward(
    grad_rows: Tensor,
    query: Tensor,
    key: Tensor,
    weight: Tensor | None,
    lse: Tensor,
    temperature: float,
    backend: str,
    need_query: bool,
    need_key: bool,
) -> tuple[Tensor, Tensor]:
    """Gradients of ``sum_i grad_rows_i w_i l_i`` in the inputs' dtype; an unwanted one is an empty tensor."""
    row_grad = grad_rows if weight is None else grad_rows * weight.to(grad_rows.dtype)
    if backend == "triton" and query.dtype != torch.float64:
        from ds3kit.ops.patch_nce import backward_rows

        dq, dk = backward_rows(
            query.contiguous(), key.contiguous(), lse, row_grad.to(torch.float32), temperature, need_query, need_key
        )
    else:
        q, k = query.to(accumulator_dtype(query)), key.to(accumulator_dtype(key))
        dq, dk = streaming_gradients(
            q, k, lse.to(q.dtype), row_grad.to(q.dtype), 1.0 / temperature, need_query, need_key
        )
    empty = query.new_empty(0)
    return (empty if dq is None else dq.to(query.dtype)), (empty if dk is None else dk.to(key.dtype))


@_patch_nce_rows_backward.register_fake
def _(
    grad_rows: Tensor,
    query: Tensor,
    key: Tensor,
    weight: Tensor | None,
    lse: Tensor,
    temperature: float,
    backend: str,
    need_query: bool,
    need_key: bool,
) -> tuple[Tensor, Tensor]:
    return (torch.empty_like(query) if need_query else query.new_empty(0)), (
        torch.empty_like(key) if need_key else key.new_empty(0)
    )


def _rows_setup_context(ctx, inputs, output) -> None:
    query, key, weight, temperature, backend = inputs
    _, lse = output
    ctx.save_for_backward(query, key, weight, lse)
    ctx.temperature, ctx.backend = temperature, backend
    ctx.mark_non_differentiable(lse)


def _rows_backward(ctx, grad_rows: Tensor, _grad_lse: Tensor):
    query, key, weight, lse = ctx.saved_tensors
    need_query, need_key = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dq, dk = torch.ops.ds3kit.patch_nce_rows_backward(
        grad_rows, query, key, weight, lse, ctx.temperature, ctx.backend, need_query, need_key
    )
    return (dq if need_query else None), (dk if need_key else None), None, None, None


_patch_nce_rows.register_autograd(_rows_backward, setup_context=_rows_setup_context)


class PatchNCELoss(nn.Module):
    r"""CUT's PatchNCE over a generator's feature pyramid, weighted by the difficulty map, all layers in one call.

    For each layer k: ``num_patches`` locations are sampled (the same for query and key), the features there go
    through the layer's MLP head (Linear(C_k, 256) - ReLU - Linear(256, 256)) and are L2-normalised
    (``x / (||x|| + 1e-7)``); the key side is detached (as CUT does). The K layers' (B, N, 256) queries and keys are
    stacked into (K B, N, 256) and go through ONE :func:`patch_nce` call; the loss is the mean over patches, then
    over layers (equal N per layer: the smallest of ``num_patches`` and every layer's location count).

    Args:
        feature_channels: channels of each feature map (the generator's ``feature_channels``).
        num_patches: locations per layer (CUT: 256).
        head_dim: width of the MLP heads (CUT: 256).
        temperature: T (CUT: 0.07).
        sampling: ``"uniform"`` (CUT: a random subset of locations, shared across the batch) or ``"difficulty"``
            (per image, drawn without replacement in proportion to the difficulty map; the patches are then not
            weighted again, to avoid counting the difficulty twice).
        detach_key: detach the key features (CUT). ``False`` lets gradients reach the input's encoder too.
        backend: passed to :func:`patch_nce`.

    Shape:
        - query_features, key_features: sequences of (B, C_k, H_k, W_k).
        - difficulty: (B, 1, H, W) or None; pooled (area) to each layer's size and gathered at the locations.
        - Output: scalar.
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        *,
        num_patches: int = 256,
        head_dim: int = 256,
        temperature: float = 0.07,
        sampling: str = "uniform",
        detach_key: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if num_patches < 1:
            raise ValueError(f"num_patches must be >= 1, got {num_patches}")
        if not feature_channels:
            raise ValueError("feature_channels must name at least one layer")
        self.num_patches = num_patches
        self.temperature = temperature
        self.sampling = sampling
        self.detach_key = detach_key
        self.backend = backend
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(channels, head_dim), nn.ReLU(inplace=True), nn.Linear(head_dim, head_dim))
            for channels in feature_channels
        )

    def forward(
        self,
        query_features: Sequence[Tensor],
        key_features: Sequence[Tensor],
        difficulty: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if len(query_features) != len(self.heads) or len(key_features) != len(self.heads):
            raise ValueError(
                f"expected {len(self.heads)} feature maps for query and key, got {len(query_features)} and "
                f"{len(key_features)}"
            )
        for index, (q, k) in enumerate(zip(query_features, key_features)):
            check_ndim(q, 4, f"query_features[{index}]", "(B, C, H, W)")
            check_same_shape(q, k, f"query_features[{index}]", f"key_features[{index}]")
        count = min(self.num_patches, *(q.shape[-2] * q.shape[-1] for q in query_features))
        queries, keys, weights = [], [], []
        for head, q, k in zip(self.heads, query_features, key_features):
            locations, layer_weight = self.sample(q.shape, count, difficulty, generator, q.device)
            queries.append(_normalise(head(_gather(q, locations))))
            key = _normalise(head(_gather(k.detach() if self.detach_key else k, locations)))
            keys.append(key.detach() if self.detach_key else key)
            weights.append(layer_weight)
        weight = None if weights[0] is None else torch.cat(weights).detach()
        return patch_nce(
            torch.cat(queries),
            torch.cat(keys).to(queries[0].dtype),
            temperature=self.temperature,
            weight=weight,
            backend=self.backend,
        )

    def sample(
        self,
        shape: torch.Size,
        count: int,
        difficulty: Tensor | None,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> tuple[Tensor, Tensor | None]:
        """Locations (B, count) into a layer's flattened H_k W_k grid, and the weights there ((B, count) or None)."""
        batch, _, height, width = shape
        pooled = None
        if difficulty is not None:
            check_ndim(difficulty, 4, "difficulty", "(B, 1, H, W)")
            if difficulty.shape[0] != batch or difficulty.shape[1] != 1:
                raise ValueError(f"difficulty must be ({batch}, 1, H, W), got shape {tuple(difficulty.shape)}")
            pooled = F.adaptive_avg_pool2d(difficulty.detach().float(), (height, width)).flatten(1)  # (B, H_k W_k)
        if self.sampling == "difficulty" and pooled is not None:
            locations = torch.multinomial(pooled.cpu(), count, replacement=False, generator=generator).to(device)
            return locations, None
        order = torch.randperm(height * width, generator=generator)[:count].to(device)
        locations = order.expand(batch, count)
        return locations, None if pooled is None else pooled.gather(1, locations)


def _gather(features: Tensor, locations: Tensor) -> Tensor:
    """(B, C, H, W) features at (B, N) flat locations -> (B, N, C)."""
    flat = features.flatten(2).transpose(1, 2)  # (B, HW, C)
    return flat.gather(1, locations[..., None].expand(-1, -1, flat.shape[-1]))


def _normalise(x: Tensor) -> Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + 1e-7)
