"""Training the tumour segmenter on the four real modalities of labelled subjects, 2-D axial slices."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.losses import DiceLoss
from tqdm.auto import tqdm

from ds3kit.data.dataset import center_crop_or_pad
from ds3kit.data.session import Session, load_brats_case
from ds3kit.errors import InputError
from ds3kit.segment.model import SEGMENTER_MODALITIES, Segmenter
from ds3kit.segment.regions import seg_to_regions


@dataclass
class RegionSlices:
    """Axial slices of labelled sessions, in memory.

    Attributes:
        images: float32 (N, 4, H, W): T1, T1ce, T2, FLAIR, normalised as in ``ds3kit.data``.
        regions: bool (N, 3, H, W): WT, TC, ET.
        case_ids: the subjects the slices come from, in order.
    """

    images: torch.Tensor
    regions: torch.Tensor
    case_ids: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def has_tumour(self) -> torch.Tensor:
        """bool (N,): the slice holds whole-tumour voxels."""
        return self.regions[:, 0].flatten(1).any(dim=1)


def load_region_slices(
    cases: Sequence[str | os.PathLike | Session],
    *,
    image_size: int | None = None,
    min_brain_fraction: float = 0.01,
    without_t1ce: bool = False,
) -> RegionSlices:
    """Load the slices a segmenter trains on: every subject's four real modalities and its BraTS regions.

    Args:
        cases: BraTS-layout case folders (read with T1ce and seg) or loaded sessions that have both.
        image_size: centre-crop / zero-pad each slice to ``image_size x image_size``; None keeps the native
            (X, Y), which must then be the same for every subject.
        min_brain_fraction: slices with a smaller brain fraction are left out.
        without_t1ce: put the T1 in the T1ce's channel, so the segmenter learns from T1, T2 and FLAIR alone (the
            reference of what the inputs of a synthesis carry, scored with the T1 copied in: docs/metrics.md);
            the subjects then need no T1ce.

    Raises:
        InputError: a subject without T1ce (unless ``without_t1ce``) or segmentation, subjects of different slice
            sizes with ``image_size=None``, or no slice left.
    """
    if image_size is not None and int(image_size) < 1:
        raise ValueError(f"image_size must be a positive int or None, got {image_size}")
    if not 0.0 <= min_brain_fraction <= 1.0:
        raise ValueError(f"min_brain_fraction must be in [0, 1], got {min_brain_fraction}")
    images, regions, case_ids = [], [], []
    for case in cases:
        session = case if isinstance(case, Session) else load_brats_case(case, with_target=not without_t1ce)
        if (session.target is None and not without_t1ce) or session.seg is None:
            raise InputError(f"{session.case_id}: a segmenter trains on subjects with T1ce and a segmentation")
        kept = np.flatnonzero(session.brain_mask.mean(axis=(0, 1)) >= min_brain_fraction)
        t1ce = session.inputs[0] if without_t1ce else session.target
        volumes = {"t1": session.inputs[0], "t1ce": t1ce, "t2": session.inputs[1], "flair": session.inputs[2]}
        stacked = np.stack([volumes[name] for name in SEGMENTER_MODALITIES])[..., kept]
        image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(stacked, -1, 0), dtype=np.float32))
        region = torch.from_numpy(np.ascontiguousarray(np.moveaxis(seg_to_regions(session.seg)[..., kept], -1, 0)))
        if image_size is not None:
            image = center_crop_or_pad(image, (int(image_size), int(image_size)))
            region = center_crop_or_pad(region.to(torch.uint8), (int(image_size), int(image_size))).bool()
        if images and image.shape[-2:] != images[0].shape[-2:]:
            raise InputError(
                f"{session.case_id}: slices of {tuple(image.shape[-2:])} differ from {case_ids[0]}'s "
                f"{tuple(images[0].shape[-2:])}; pass image_size to crop / pad them to one size"
            )
        images.append(image)
        regions.append(region)
        case_ids.append(session.case_id)
    if not images or sum(len(image) for image in images) == 0:
        raise InputError("no training slice with brain tissue")
    return RegionSlices(torch.cat(images), torch.cat(regions), case_ids)


class SegmentationLoss(torch.nn.Module):
    """Soft Dice (MONAI's ``DiceLoss(sigmoid=True, batch=True)``) plus binary cross-entropy, per region channel.

    Not ``monai.losses.DiceCELoss``: with more than one channel its cross-entropy term is a softmax across the
    channels, which treats WT, TC and ET as exclusive classes; BraTS's regions are nested, one sigmoid each.
    ``batch=True`` sums the Dice terms over the batch, so a slice without tumour does not make the loss undefined.

    Shape:
        logits (B, 3, H, W), regions (B, 3, H, W) bool or {0, 1} -> scalar.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_bce: float = 1.0) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, batch=True)
        self.lambda_dice, self.lambda_bce = float(lambda_dice), float(lambda_bce)

    def forward(self, logits: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        if logits.shape != regions.shape:
            raise ValueError(
                f"logits and regions must have the same shape, got {tuple(logits.shape)} and {tuple(regions.shape)}"
            )
        target = regions.to(logits.dtype)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        return self.lambda_dice * self.dice(logits, target) + self.lambda_bce * bce


def train_segmenter(
    slices: RegionSlices,
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 3e-3,
    tumour_fraction: float = 0.5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    segmenter: Segmenter | None = None,
    progress: bool = True,
) -> Segmenter:
    """Train a segmenter on axial slices with Adam and a cosine learning-rate decay.

    Each batch draws ``tumour_fraction`` of its slices from those holding tumour (a minority of a brain's slices),
    the rest from all slices, and flips every slice at random along both in-plane axes.

    Args:
        slices: from :func:`load_region_slices`.
        steps: optimiser steps.
        batch_size: slices per step.
        lr: initial Adam learning rate, decayed to 0 along a cosine.
        tumour_fraction: in [0, 1].
        seed: initialisation, sampling and flips.
        segmenter: to continue training; None builds the default :class:`Segmenter`.
        progress: a tqdm bar showing the running loss.

    Returns:
        The trained segmenter in eval mode, on ``device``.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if not 0.0 <= tumour_fraction <= 1.0:
        raise ValueError(f"tumour_fraction must be in [0, 1], got {tumour_fraction}")
    device = torch.device(device)
    torch.manual_seed(seed)
    segmenter = (segmenter or Segmenter()).to(device).train()
    optimizer = torch.optim.Adam(segmenter.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / steps)))
    loss_fn = SegmentationLoss()
    generator = torch.Generator().manual_seed(seed)
    tumour_slices = torch.nonzero(slices.has_tumour).flatten()
    tumour_count = round(tumour_fraction * batch_size) if len(tumour_slices) else 0
    running = None
    bar = tqdm(range(steps), desc="segmenter", unit="step", disable=not progress)
    for _ in bar:
        index = torch.cat(
            [
                tumour_slices[torch.randint(len(tumour_slices), (tumour_count,), generator=generator)],
                torch.randint(len(slices), (batch_size - tumour_count,), generator=generator),
            ]
        )
        images, regions = slices.images[index], slices.regions[index]
        flips = torch.rand(2, len(index), generator=generator) < 0.5
        images, regions = _flip(images, flips), _flip(regions, flips)
        loss = loss_fn(segmenter(images.to(device)), regions.to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"segmenter loss became {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}", refresh=False)
    return segmenter.eval()


def _flip(batch: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip sample i along H where ``flips[0, i]`` and along W where ``flips[1, i]``."""
    batch = torch.where(flips[0].view(-1, 1, 1, 1), batch.flip(-2), batch)
    return torch.where(flips[1].view(-1, 1, 1, 1), batch.flip(-1), batch)
