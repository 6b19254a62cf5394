"""The one answer to "is Triton's CPU interpreter on?", for every caller (no triton kernel is imported here)."""

from __future__ import annotations

import os


def interpreter_on() -> bool:
    """Whether ``triton.jit`` decorates kernels for Triton's CPU interpreter now.

    That is triton's own reading of ``TRITON_INTERPRET`` (``1``, ``true``, ``on``... or ``triton.knobs`` set in
    code); triton reads it when a kernel is decorated, so :mod:`ds3kit.ops.patch_nce` records the answer at its
    import (``_INTERPRETED``) and the kernels keep it even if the variable changes later. Without triton installed,
    whether ``TRITON_INTERPRET=1`` is in the environment.
    """
    try:
        from triton import knobs
    except ImportError:
        return os.environ.get("TRITON_INTERPRET") == "1"
    return bool(knobs.runtime.interpret)
