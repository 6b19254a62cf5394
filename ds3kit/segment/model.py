"""The tumour segmenter: MONAI's 2-D U-Net on the four real modalities, and its checkpoint."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import UNet
from torch import nn

from ds3kit.checkpoint import load_checkpoint, save_checkpoint
from ds3kit.errors import CheckpointError
from ds3kit.segment.regions import REGIONS

SEGMENTER_FORMAT = "ds3kit.segmenter"
# Input channel order of every segmenter: BraTS's four structural sequences.
SEGMENTER_MODALITIES = ("t1", "t1ce", "t2", "flair")


class Segmenter(nn.Module):
    """A 2-D U-Net (``monai.networks.nets.UNet``) mapping axial slices of T1, T1ce, T2, FLAIR to region logits.

    Slices of any size are accepted: they are zero-padded (the background outside the brain is 0 anyway) up to a
    multiple of the network's total stride and the logits are cropped back.

    Args:
        channels: feature channels per U-Net level.
        strides: down-sampling stride between levels (one fewer than ``channels``).
        num_res_units: residual units per block (MONAI's ``num_res_units``).
        norm: MONAI norm name, e.g. ``"instance"`` or ``"batch"``.
        dropout: dropout probability.

    Shape:
        (B, 4, H, W) normalised T1, T1ce, T2, FLAIR in [0, 1] -> (B, 3, H, W) logits of WT, TC, ET
        (:data:`~ds3kit.segment.REGIONS`); a region is ``sigmoid(logit) > 0.5``.
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 0,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels, strides = [int(c) for c in channels], [int(s) for s in strides]
        if len(channels) < 2 or len(strides) != len(channels) - 1:
            raise ValueError(
                f"channels needs >= 2 levels and strides one fewer, got {len(channels)} channels and {len(strides)} strides"
            )
        self._config = {
            "channels": channels,
            "strides": strides,
            "num_res_units": int(num_res_units),
            "norm": str(norm),
            "dropout": float(dropout),
        }
        self.net = UNet(
            spatial_dims=2,
            in_channels=len(SEGMENTER_MODALITIES),
            out_channels=len(REGIONS),
            channels=channels,
            strides=strides,
            num_res_units=int(num_res_units),
            norm=norm,
            dropout=float(dropout),
        )
        self.multiple = math.prod(strides)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (plain containers), enough to rebuild the architecture."""
        return {key: list(value) if isinstance(value, list) else value for key, value in self._config.items()}

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        if slices.ndim != 4 or slices.shape[1] != len(SEGMENTER_MODALITIES):
            raise ValueError(f"slices must be (B, 4, H, W) (T1, T1ce, T2, FLAIR), got shape {tuple(slices.shape)}")
        height, width = slices.shape[-2:]
        pad_height, pad_width = -height % self.multiple, -width % self.multiple
        if pad_height or pad_width:
            slices = nn.functional.pad(slices, (0, pad_width, 0, pad_height))
        return self.net(slices)[..., :height, :width]


def save_segmenter(path: str | Path, segmenter: Segmenter, **metadata: Any) -> None:
    """Write a segmenter checkpoint (architecture config + weights + ``metadata``) atomically, loadable with
    ``torch.load(weights_only=True)``. ``metadata`` must hold only plain containers of str/int/float/bool/None."""
    if not isinstance(segmenter, Segmenter):
        raise ValueError(f"segmenter must be a ds3kit.segment.Segmenter, got {type(segmenter).__name__}")
    state = {name: tensor.detach().cpu() for name, tensor in segmenter.state_dict().items()}
    payload = {
        "config": segmenter.config(),
        "state_dict": state,
        "modalities": list(SEGMENTER_MODALITIES),
        "regions": list(REGIONS),
        "metadata": metadata,
    }
    save_checkpoint(path, payload, kind=SEGMENTER_FORMAT)


def load_segmenter(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[Segmenter, dict[str, Any]]:
    """Rebuild a segmenter from a checkpoint of :func:`save_segmenter`; returns it (eval mode) and its metadata.

    Raises:
        CheckpointError: not a ds3kit segmenter checkpoint (e.g. a generator's), channels in another order, or
            weights that do not fit the stored architecture.
    """
    payload = load_checkpoint(path, kind=SEGMENTER_FORMAT)
    if tuple(payload.get("modalities", ())) != SEGMENTER_MODALITIES or tuple(payload.get("regions", ())) != REGIONS:
        raise CheckpointError(
            f"{path}: expected inputs {SEGMENTER_MODALITIES} and regions {REGIONS}, found "
            f"{payload.get('modalities')} and {payload.get('regions')}"
        )
    try:
        segmenter = Segmenter(**payload["config"])
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: cannot rebuild the segmenter from its config: {error}") from None
    try:
        segmenter.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        summary = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the segmenter architecture: {summary}") from None
    return segmenter.to(device).eval(), dict(payload.get("metadata", {}))
