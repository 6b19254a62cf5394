"""Training methods composed from ds3kit's parts: DS3-Net, its paired-only teacher / pix2pix, and CUT."""

from ds3kit.methods.base import Method, NonFiniteLossError
from ds3kit.methods.cut import CUT, CUTOptions
from ds3kit.methods.ds3net import RECIPE_OPTIONS, DS3Net, DS3NetOptions, PairedTeacher

__all__ = [
    "CUT",
    "CUTOptions",
    "DS3Net",
    "DS3NetOptions",
    "Method",
    "NonFiniteLossError",
    "PairedTeacher",
    "RECIPE_OPTIONS",
]
