"""Small helpers shared by the rest of the package."""

from ds3kit.utils.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from ds3kit.utils.checks import check_finite, check_ndim, check_same_shape

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_finite",
    "check_ndim",
    "check_same_shape",
]
