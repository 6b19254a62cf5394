"""MRI augmentation on kornia: one geometry for every modality, the target and the labels; intensity on the inputs.

Geometry (per sample, shared by all channels of that sample): rotation, translation, scaling and a left-right flip
via ``kornia.augmentation.AugmentationSequential``, bilinear for images, nearest-neighbour for masks and labels
(labels keep their exact values). Intensity (per sample and per modality, inputs only, never the target): gamma,
a smooth multiplicative bias field, Gaussian noise, applied inside the brain. Everything runs batched on the
tensors' device and draws from torch's global RNG, so ``torch.manual_seed`` makes it reproducible.
"""

from __future__ import annotations

import math

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGE_KEYS = ("inputs", "target")
LABEL_KEYS = ("brain_mask", "tumour_mask", "seg")


class MRIAugmentation(nn.Module):
    """Augments a training batch dict; see the module docstring.

    Args:
        degrees: rotation range (±degrees).
        translate: translation as a fraction of the size.
        scale: scaling range.
        flip: left-right flips (p = 0.5).
        p_geometric: probability that a sample is warped.
        gamma: range of the gamma exponent (log-uniform).
        bias_field: strength of the multiplicative bias field: the field is ``exp(bias_field * s)`` with ``s`` a
            smooth random surface in [-1, 1] (a 4 x 4 grid upsampled bicubically).
        noise_std: the largest standard deviation of the additive Gaussian noise (drawn uniformly in [0, max]).
        p_intensity: probability that a sample's inputs get the intensity changes.
        geometric, intensity: turn either part off.

    Shape:
        - ``batch["inputs"]``: (B, M, H, W) in [0, 1]; optional ``"target"`` (B, 1, H, W), masks / labels
          ``"brain_mask"``, ``"tumour_mask"``, ``"seg"`` (B, 1, H, W). Other keys pass through.

    Example:
        >>> augment = MRIAugmentation()
        >>> batch = {"inputs": torch.rand(2, 3, 32, 32), "target": torch.rand(2, 1, 32, 32)}
        >>> {k: tuple(v.shape) for k, v in augment(batch).items()}
        {'inputs': (2, 3, 32, 32), 'target': (2, 1, 32, 32)}
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
    ) -> None:
        super().__init__()
        if not (0 < gamma[0] <= gamma[1]):
            raise ValueError(f"gamma must be a range 0 < low <= high, got {gamma}")
        for name, p in (("p_geometric", p_geometric), ("p_intensity", p_intensity)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        transforms: list[nn.Module] = [
            K.RandomAffine(degrees=degrees, translate=(translate, translate), scale=scale, p=p_geometric)
        ]
        if flip:
            transforms.append(K.RandomHorizontalFlip(p=0.5))
        # "mask" data keys are warped with nearest-neighbour sampling, so labels keep their values.
        self.geometry = K.AugmentationSequential(*transforms, data_keys=["input", "mask"]) if geometric else None
        self.intensity = intensity
        self.gamma = gamma
        self.bias_field = bias_field
        self.noise_std = noise_std
        self.p_intensity = p_intensity

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "inputs" not in batch or batch["inputs"].dim() != 4:
            shape = tuple(batch["inputs"].shape) if "inputs" in batch else None
            raise ValueError(f"batch['inputs'] must be (B, M, H, W), got {shape}")
        out = dict(batch)
        if self.geometry is not None:
            out.update(self._warp(out))
        if self.intensity:
            out["inputs"] = self._intensity(out["inputs"], out.get("brain_mask"))
        return out

    def _warp(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images = [key for key in IMAGE_KEYS if key in batch]
        labels = [key for key in LABEL_KEYS if key in batch]
        stacked = torch.cat([batch[key] for key in images], dim=1)
        label_stack = (
            torch.cat([batch[key].to(stacked.dtype) for key in labels], dim=1)
            if labels else torch.zeros_like(stacked[:, :1])
        )
        warped, warped_labels = self.geometry(stacked, label_stack)
        out: dict[str, Tensor] = {}
        offset = 0
        for key in images:
            channels = batch[key].shape[1]
            out[key] = warped[:, offset : offset + channels].clamp(0.0, 1.0)
            offset += channels
        offset = 0
        for key in labels:
            channels = batch[key].shape[1]
            out[key] = warped_labels[:, offset : offset + channels].round().to(batch[key].dtype)
            offset += channels
        return out

    def _intensity(self, inputs: Tensor, brain_mask: Tensor | None) -> Tensor:
        batch, modalities, height, width = inputs.shape
        device, dtype = inputs.device, inputs.dtype
        apply = (torch.rand(batch, 1, 1, 1, device=device) < self.p_intensity).to(dtype)
        low, high = math.log(self.gamma[0]), math.log(self.gamma[1])
        gamma = torch.exp(torch.empty(batch, modalities, 1, 1, device=device, dtype=dtype).uniform_(low, high))
        surface = torch.empty(batch, modalities, 4, 4, device=device, dtype=dtype).uniform_(-1.0, 1.0)
        surface = F.interpolate(surface, size=(height, width), mode="bicubic", align_corners=True).clamp(-1.0, 1.0)
        field = torch.exp(self.bias_field * surface)
        sigma = torch.rand(batch, modalities, 1, 1, device=device, dtype=dtype) * self.noise_std
        changed = (inputs.clamp_min(0.0) ** gamma * field + sigma * torch.randn_like(inputs)).clamp(0.0, 1.0)
        # Background stays background: the change applies inside the brain (or where there is signal).
        region = (brain_mask > 0.5) if brain_mask is not None else (inputs > 0).any(dim=1, keepdim=True)
        changed = torch.where(region, changed, inputs)
        return apply * changed + (1.0 - apply) * inputs
