"""ds3kit: semi-supervised multimodal MRI synthesis (DS3-Net) as reusable parts.

The package is laid out so each part of the method is found by its name:

- ``ds3kit.data``: NIfTI sessions, BraTS layout, normalisation, the phantom cohort, slice datasets.
- ``ds3kit.losses``: the difficulty map, the difficulty-guided pixel loss, PatchNCE.
- ``ds3kit.ops``: fused kernels behind the losses (Triton).
- ``ds3kit.models``: generators (built-in or timm encoders) and PatchGAN discriminators.
- ``ds3kit.distill``: dual-level teacher-student distillation.
- ``ds3kit.augment``: MRI augmentation on kornia.
- ``ds3kit.metrics``: SSIM, PSNR, MSE, whole brain and tumour region.
- ``ds3kit.train``: the training engine, checkpoints and logging used by ``recipes/``.
"""

from ds3kit.errors import CheckpointError, InputError

__version__ = "0.1.0"

__all__ = ["CheckpointError", "InputError", "__version__"]
