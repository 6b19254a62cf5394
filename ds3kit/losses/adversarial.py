"""GAN objectives on raw discriminator scores, and the "realness" in [0, 1] the difficulty map reads from them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GAN_MODES = ("lsgan", "bce", "hinge")


def _check_mode(mode: str) -> None:
    if mode not in GAN_MODES:
        raise ValueError(f"mode must be one of {GAN_MODES}, got {mode!r}")


def adversarial_loss(
    scores: Tensor, target_is_real: bool, mode: str = "lsgan", *, for_discriminator: bool = True
) -> Tensor:
    r"""GAN loss of raw discriminator scores ``s`` against a real / fake target, averaged over every score.

    .. math::
        \text{lsgan: } \overline{(s - t)^2},\ t \in \{1, 0\} \qquad
        \text{bce: } \overline{\mathrm{BCEWithLogits}(s, t)} \qquad
        \text{hinge: } \overline{\max(0, 1 \mp s)}

    For ``hinge`` the generator's usual objective is :math:`-\bar{s}`: pass ``for_discriminator=False`` (with
    ``target_is_real=True``) to get it; otherwise the hinge form is used on both sides.

    Args:
        scores: raw scores, any shape (PatchGAN: (B, 1, h, w)).
        target_is_real: whether the scored samples should be judged real.
        mode: ``"lsgan"`` (default, pix2pix / CUT), ``"bce"`` or ``"hinge"``.
        for_discriminator: only changes ``hinge`` (see above).

    Returns:
        A scalar.

    Example:
        >>> adversarial_loss(torch.tensor([0.5, 1.0]), True)
        tensor(0.1250)
    """
    _check_mode(mode)
    if not isinstance(scores, Tensor):
        raise ValueError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if mode == "lsgan":
        return F.mse_loss(scores, torch.full_like(scores, 1.0 if target_is_real else 0.0))
    if mode == "bce":
        return F.binary_cross_entropy_with_logits(scores, torch.full_like(scores, 1.0 if target_is_real else 0.0))
    if not for_discriminator:
        if not target_is_real:
            raise ValueError("hinge generator loss (for_discriminator=False) is defined for target_is_real=True only")
        return -scores.mean()
    return F.relu(1.0 - scores).mean() if target_is_real else F.relu(1.0 + scores).mean()


def realness(scores: Tensor, mode: str = "lsgan") -> Tensor:
    r"""How real the discriminator finds each patch, in [0, 1] (1 = surely real).

    .. math::
        \text{lsgan: } \mathrm{clamp}(s, 0, 1) \qquad \text{bce: } \sigma(s) \qquad
        \text{hinge: } \mathrm{clamp}((s + 1) / 2, 0, 1)

    (LSGAN trains real -> 1 and fake -> 0; hinge pushes real above 1 and fake below -1.)

    Shape:
        - Input: any; Output: the same.
    """
    _check_mode(mode)
    if not isinstance(scores, Tensor):
        raise ValueError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if mode == "lsgan":
        return scores.clamp(0.0, 1.0)
    if mode == "bce":
        return torch.sigmoid(scores)
    return ((scores + 1.0) * 0.5).clamp(0.0, 1.0)
