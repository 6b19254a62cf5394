r"""MRI training augmentation on kornia: one geometric warp per sample shared by every image and label map, and
intensity changes (gamma, smooth bias field, noise) on the input modalities only.

The geometry is kornia's (:class:`kornia.augmentation.AugmentationSequential` with ``RandomAffine`` and a flip):
images are warped bilinearly, masks and label maps with nearest neighbour in the same call, so all of them move
together and labels keep their exact values. The intensity part is a few lines of torch on the whole batch, with
parameters drawn independently for every sample and every modality channel, applied inside the brain. See
``docs/augmentation.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

__all__ = ["IMAGE_KEYS", "LABEL_KEYS", "MRIAugmentation", "random_bias_field"]

#: Batch keys warped bilinearly and clipped to [0, 1]; "inputs" is also the one that gets intensity changes.
IMAGE_KEYS = ("inputs", "target")
#: Batch keys warped with nearest neighbour (values kept exactly, dtype kept).
LABEL_KEYS = ("brain_mask", "tumour_mask", "seg")

# Keeps pow() finite (and its gradient) at exactly 0 for gamma < 1; 0 ** gamma is 0 to this precision anyway.
_POW_FLOOR = 1e-6


def random_bias_field(
    shape: Sequence[int],
    strength: Tensor,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""Smooth multiplicative bias fields: the exponential of a random quadratic polynomial, one per (sample, channel).

    .. math::

        b(u, v) = \exp\!\Big(s \, \frac{q(u, v)}{\max_{u, v} |q(u, v)|}\Big), \qquad
        q = c_1 u + c_2 v + c_3 u^2 + c_4 u v + c_5 v^2, \quad c_k \sim \mathcal{U}(-1, 1)

    on normalised coordinates :math:`u, v \in [-1, 1]` (rows, columns), so each field lies in
    :math:`[e^{-s}, e^{s}]` and reaches one of the ends. Coefficients come from the global torch CPU generator
    (reproducible under :func:`torch.manual_seed` on any device).

    Args:
        shape: ``(B, C, H, W)``.
        strength: :math:`s \ge 0`, the largest log-amplitude, shape :math:`(B, C)`.
        device: where to build the fields (default: ``strength``'s device).
        dtype: floating dtype of the fields.

    Shape:
        - output: :math:`(B, C, H, W)`, positive.

    Example:
        >>> field = random_bias_field((2, 3, 8, 9), torch.full((2, 3), 0.3))
        >>> field.shape, bool(field.min() >= math.exp(-0.3) - 1e-6), bool(field.max() <= math.exp(0.3) + 1e-6)
        (torch.Size([2, 3, 8, 9]), True, True)
    """
    batch, channels, height, width = (int(n) for n in shape)
    if strength.shape != (batch, channels):
        raise ValueError(f"strength must have shape ({batch}, {channels}), got {tuple(strength.shape)}")
    device = strength.device if device is None else torch.device(device)
    coefficients = (torch.rand(batch, channels, 5) * 2 - 1).to(device=device, dtype=dtype)
    u = torch.linspace(-1, 1, height, device=device, dtype=dtype)[:, None].expand(height, width)
    v = torch.linspace(-1, 1, width, device=device, dtype=dtype)[None, :].expand(height, width)
    monomials = torch.stack((u, v, u * u, u * v, v * v))  # (5, H, W)
    polynomial = torch.einsum("bck,khw->bchw", coefficients, monomials)
    peak = polynomial.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    return torch.exp(strength.to(device=device, dtype=dtype)[..., None, None] * polynomial / peak)


class MRIAugmentation(nn.Module):
    r"""Random geometry for every image and label map of a slice batch, random intensity for its input modalities.

    **Geometry** (per sample, with probability ``p_geometric``; ``geometric=False`` switches it off): a flip of
    the left-right axis with probability 1/2 (``flip=True``), then a random affine (rotation in
    :math:`\pm` ``degrees`` about the centre, translation up to ``translate`` of each side, isotropic scale in
    ``scale``), zero padding. The SAME warp is applied to ``inputs`` (every modality), ``target`` and the label keys
    ``brain_mask``, ``tumour_mask``, ``seg``: images bilinearly, labels by nearest neighbour (their values and dtype
    are kept exactly). In ds3kit's slice layout (:class:`ds3kit.data.SliceDataset`) H is the volume's X axis, the
    left-right axis, so the flip is along H by default (``flip_dim=-2``).

    **Intensity** (per sample, with probability ``p_intensity``; ``intensity=False`` switches it off), on
    ``inputs`` only, never the target, with parameters drawn independently for every modality channel:

    .. math::

        x' = \operatorname{clip}_{[0, 1]}\big(x^{\gamma} \cdot b + \sigma n\big), \quad
        \log\gamma \sim \mathcal{U}(\log\gamma_{lo}, \log\gamma_{hi}),\;
        b = \text{random\_bias\_field}(s),\; s \sim \mathcal{U}(0, \text{bias\_field}),\;
        \sigma \sim \mathcal{U}(0, \text{noise\_std}),\; n \sim \mathcal{N}(0, 1)

    applied only inside the brain: the (warped) ``brain_mask`` when the batch has one, else the voxels where any
    input modality is > 0 (the brain of a skull-stripped slice). Outside it the voxels keep their values, so a zero
    background stays exactly zero.

    Images (``inputs``, ``target``) come back clipped to [0, 1], the range of ds3kit's normalised intensities. Other
    keys pass through untouched. Everything runs batched on the batch's device; random parameters come from torch's
    global generators, so :func:`torch.manual_seed` makes a call reproducible. The module augments whenever it is
    called (in train and eval mode alike): don't call it where no augmentation is wanted. The parameters of the last
    call are kept in :attr:`last_params` (for inspection and tests).

    Args:
        degrees: largest rotation, degrees, >= 0.
        translate: largest shift as a fraction of each side, in [0, 1).
        scale: (low, high) isotropic zoom factors, 0 < low <= high.
        flip: flip the left-right axis of half of the geometrically transformed samples.
        p_geometric: probability that a sample is warped, in [0, 1].
        gamma: (low, high) range of the gamma exponent, 0 < low <= high; drawn log-uniformly.
        bias_field: largest log-amplitude of the multiplicative bias field, >= 0 (0.3: a field in [0.74, 1.35]).
        noise_std: largest standard deviation of the additive Gaussian noise, >= 0.
        p_intensity: probability that a sample's inputs get the intensity changes, in [0, 1].
        geometric: enable the geometric part.
        intensity: enable the intensity part.
        flip_dim: the axis that ``flip`` reverses: -2 (H, default) or -1 (W).

    Shape:
        - ``inputs``: :math:`(B, M, H, W)` float, intensities in [0, 1] (M = 3 modalities: T1, T2, FLAIR).
        - ``target`` (optional): :math:`(B, C_t, H, W)` float.
        - ``brain_mask``, ``tumour_mask``, ``seg`` (optional): :math:`(B, 1, H, W)`, any dtype (bool, {0, 1}
          float, integer labels).
        - output: a new dict with the same keys and shapes.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> augment = MRIAugmentation()
        >>> batch = {"inputs": torch.rand(2, 3, 32, 32), "target": torch.rand(2, 1, 32, 32)}
        >>> batch["case_index"] = torch.tensor([0, 1])
        >>> out = augment(batch)
        >>> out["inputs"].shape, out["target"].shape, out["case_index"] is batch["case_index"]
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 1, 32, 32]), True)
    """

    def __init__(
        self,
        *,
        degrees: float = 10.0,
        translate: float = 0.05,
        scale: tuple[float, float] = (0.9, 1.1),
        flip: bool = True,
        p_geometric: float = 0.8,
        gamma: tuple[float, float] = (0.8, 1.25),
        bias_field: float = 0.3,
        noise_std: float = 0.02,
        p_intensity: float = 0.8,
        geometric: bool = True,
        intensity: bool = True,
        flip_dim: int = -2,
    ) -> None:
        super().__init__()
        if not degrees >= 0:
            raise ValueError(f"degrees must be >= 0, got {degrees}")
        if not 0 <= translate < 1:
            raise ValueError(f"translate must be in [0, 1), got {translate}")
        _check_range(scale, "scale")
        _check_range(gamma, "gamma")
        if not bias_field >= 0:
            raise ValueError(f"bias_field must be >= 0, got {bias_field}")
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        for name, value in (("p_geometric", p_geometric), ("p_intensity", p_intensity)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if flip_dim not in (-2, -1):
            raise ValueError(f"flip_dim must be -2 (H) or -1 (W), got {flip_dim}")
        self.degrees, self.translate, self.scale, self.flip = float(degrees), float(translate), tuple(scale), flip
        self.p_geometric, self.p_intensity = float(p_geometric), float(p_intensity)
        self.gamma, self.bias_field, self.noise_std = tuple(gamma), float(bias_field), float(noise_std)
        self.geometric, self.intensity, self.flip_dim = geometric, intensity, flip_dim

        steps: list[nn.Module] = []
        if flip:
            steps.append(K.RandomVerticalFlip(p=0.5) if flip_dim == -2 else K.RandomHorizontalFlip(p=0.5))
        steps.append(
            K.RandomAffine(
                degrees=self.degrees,
                translate=(self.translate, self.translate) if self.translate > 0 else None,
                scale=self.scale,
                padding_mode="zeros",
                p=1.0,
            )
        )
        # Both steps at p=1 (flip at 1/2): the p_geometric gate is drawn per sample in _warp, which passes only the
        # selected samples, so the flip and the affine act on the same samples and the others are left exactly alone.
        self.warp = K.AugmentationSequential(*steps, data_keys=None)
        self.last_params: dict[str, object] = {}

    def extra_repr(self) -> str:
        return (
            f"degrees={self.degrees}, translate={self.translate}, scale={self.scale}, flip={self.flip}, "
            f"p_geometric={self.p_geometric}, gamma={self.gamma}, bias_field={self.bias_field}, "
            f"noise_std={self.noise_std}, p_intensity={self.p_intensity}, geometric={self.geometric}, "
            f"intensity={self.intensity}, flip_dim={self.flip_dim}"
        )

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Augment one training batch; returns a new dict (the input dict and its tensors are not modified)."""
        inputs = _validate_batch(batch)
        out = dict(batch)
        batch_size = inputs.shape[0]
        self.last_params = {}

        if self.geometric and self.p_geometric > 0:
            self._warp(out, batch_size)
        for key in IMAGE_KEYS:
            if key in out:
                out[key] = out[key].clamp(0.0, 1.0)
        if self.intensity and self.p_intensity > 0:
            out["inputs"] = self._intensity(out["inputs"], out.get("brain_mask"))
        return out

    # ------------------------------------------------------------------------------------------------ geometry
    def _warp(self, out: dict[str, Tensor], batch_size: int) -> None:
        selected = torch.rand(batch_size) < self.p_geometric
        self.last_params["geometric"] = selected
        index = selected.nonzero().squeeze(1).to(out["inputs"].device)
        if index.numel() == 0:
            return
        images = [key for key in IMAGE_KEYS if key in out]
        labels = [key for key in LABEL_KEYS if key in out]
        # One tensor per interpolation, so each costs one kornia warp: the images (bilinear) and the label maps
        # (nearest neighbour; integer labels are exact in float32 up to 2**24 and are cast back to their dtype).
        dtype = out["inputs"].dtype
        images_in = torch.cat([out[key].to(dtype) for key in images], dim=1).index_select(0, index)
        if labels:
            labels_in = torch.cat([out[key].to(dtype) for key in labels], dim=1).index_select(0, index)
            images_out, labels_out = self.warp(images_in, labels_in, data_keys=["input", "mask"])
        else:
            images_out = self.warp(images_in, data_keys=["input"])
        self.last_params["warp"] = self.warp._params
        for key, part in zip(images, images_out.split([out[key].shape[1] for key in images], dim=1)):
            out[key] = _scatter(out[key], index, part.to(out[key].dtype))
        if labels:
            for key, part in zip(labels, labels_out.split([out[key].shape[1] for key in labels], dim=1)):
                out[key] = _scatter(out[key], index, _cast_like(part, out[key]))

    # ------------------------------------------------------------------------------------------------ intensity
    def _intensity(self, inputs: Tensor, brain_mask: Tensor | None) -> Tensor:
        batch_size, channels = inputs.shape[:2]
        device, dtype = inputs.device, inputs.dtype
        # All parameters from the CPU generator, so a seed gives the same draw on every device.
        selected = torch.rand(batch_size) < self.p_intensity
        low, high = math.log(self.gamma[0]), math.log(self.gamma[1])
        gamma = torch.exp(low + (high - low) * torch.rand(batch_size, channels))
        strength = self.bias_field * torch.rand(batch_size, channels)
        noise_std = self.noise_std * torch.rand(batch_size, channels)
        self.last_params.update(intensity=selected, gamma=gamma, bias_strength=strength, noise_std=noise_std)
        if not bool(selected.any()):
            return inputs

        field = random_bias_field(inputs.shape, strength, device=device, dtype=dtype)
        noise = torch.randn(inputs.shape, device=device, dtype=dtype)
        changed = inputs.clamp_min(_POW_FLOOR).pow(gamma.to(device, dtype)[..., None, None]) * field
        changed = (changed + noise_std.to(device, dtype)[..., None, None] * noise).clamp(0.0, 1.0)

        region = brain_mask != 0 if brain_mask is not None else (inputs > 0).any(dim=1, keepdim=True)
        region = region & selected.to(device)[:, None, None, None]
        return torch.where(region, changed, inputs)


def _check_range(values: tuple[float, float], name: str) -> None:
    if len(values) != 2 or not 0 < values[0] <= values[1]:
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {tuple(values)}")


def _validate_batch(batch: dict[str, Tensor]) -> Tensor:
    if not isinstance(batch, dict) or "inputs" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"batch must be a dict with an 'inputs' tensor (B, M, H, W), got {keys}")
    inputs = batch["inputs"]
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        got = f"shape {tuple(inputs.shape)} {inputs.dtype}" if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"batch['inputs'] must be (B, M, H, W) floating point (M modalities), got {got}")
    batch_size, _, height, width = inputs.shape
    for key in ("target", *LABEL_KEYS):
        if key not in batch:
            continue
        value = batch[key]
        expected = (
            f"(B, C, H, W) = ({batch_size}, C, {height}, {width})"
            if key == "target"
            else f"(B, 1, H, W) = ({batch_size}, 1, {height}, {width})"
        )
        if (
            not isinstance(value, Tensor)
            or value.dim() != 4
            or value.shape[0] != batch_size
            or value.shape[2:] != (height, width)
            or (key != "target" and value.shape[1] != 1)
        ):
            got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"batch[{key!r}] must be {expected} to match the inputs, got {got}")
        if key == "target" and not value.is_floating_point():
            raise ValueError(f"batch['target'] must be floating point, got {value.dtype}")
    return inputs


def _cast_like(values: Tensor, like: Tensor) -> Tensor:
    """Nearest-neighbour-warped label values back in the dtype of ``like`` (exact: no value was interpolated)."""
    if like.dtype == torch.bool:
        return values != 0
    if like.is_floating_point():
        return values.to(like.dtype)
    return values.round().to(like.dtype)


def _scatter(tensor: Tensor, index: Tensor, values: Tensor) -> Tensor:
    """``tensor`` with the samples at ``index`` replaced by ``values`` (out of place, differentiable)."""
    if index.numel() == tensor.shape[0]:
        return values
    return tensor.index_copy(0, index, values)
