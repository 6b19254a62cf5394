"""Losses of DS3-Net: the difficulty map and L_pid, GAN objectives, and PatchNCE (L_pad)."""

from ds3kit.losses.adversarial import GAN_MODES, adversarial_loss, realness
from ds3kit.losses.difficulty import (
    PIXEL_LOSSES,
    DifficultyL1Loss,
    difficulty_beta,
    difficulty_l1,
    difficulty_map,
    difficulty_pixel,
    difficulty_weighted_mean,
)
from ds3kit.losses.patch_nce import PatchNCELoss, patch_nce

__all__ = [
    "GAN_MODES",
    "PIXEL_LOSSES",
    "DifficultyL1Loss",
    "PatchNCELoss",
    "adversarial_loss",
    "difficulty_beta",
    "difficulty_l1",
    "difficulty_map",
    "difficulty_pixel",
    "difficulty_weighted_mean",
    "patch_nce",
    "realness",
]
