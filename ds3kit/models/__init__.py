"""Networks: the DS3-Net generator (built-in or timm modality encoders), its inference copy, its intensity calibration,
the PatchGAN discriminator."""

from ds3kit.models.calibration import CalibrationFit, IntensityCalibration
from ds3kit.models.discriminator import DISCRIMINATOR_PRESETS, PatchDiscriminator, build_discriminator
from ds3kit.models.encoders import BuiltinEncoder, TimmEncoder, build_encoder
from ds3kit.models.fusion import for_inference
from ds3kit.models.generator import GENERATOR_PRESETS, FusionBlock, Generator, build_generator

__all__ = [
    "DISCRIMINATOR_PRESETS",
    "GENERATOR_PRESETS",
    "BuiltinEncoder",
    "CalibrationFit",
    "FusionBlock",
    "Generator",
    "IntensityCalibration",
    "PatchDiscriminator",
    "TimmEncoder",
    "build_discriminator",
    "build_encoder",
    "build_generator",
    "for_inference",
]
