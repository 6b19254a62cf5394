"""Losses of DS3-Net: the difficulty map and L_pid, GAN objectives, and PatchNCE (L_pad)."""

from ds3kit.losses.adversarial import GAN_MODES, adversarial_loss, realness
from ds3kit.losses.difficulty import (
    DifficultyL1Loss,
    difficulty_beta,
    difficulty_l1,
    difficulty_map,
    difficulty_weighted_mean,
)

# TODO(lead): plain import once patch_nce lands
try:
    from ds3kit.losses.patch_nce import PatchNCELoss, patch_nce
except ModuleNotFoundError as error:
    # Only a missing patch_nce module is tolerated; an error inside it (or a missing dependency) must surface.
    if error.name != "ds3kit.losses.patch_nce":
        raise

__all__ = [
    "GAN_MODES",
    "DifficultyL1Loss",
    "PatchNCELoss",
    "adversarial_loss",
    "difficulty_beta",
    "difficulty_l1",
    "difficulty_map",
    "difficulty_weighted_mean",
    "patch_nce",
    "realness",
]
