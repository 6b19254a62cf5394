"""Fused GPU kernels (Triton), one op per module, each with its ``torch.autograd.Function``.

- :mod:`ds3kit.ops.patch_nce`: the patchwise contrastive loss (``patch_nce_triton``, ``KernelConfig``).

Nothing is imported here: ``triton`` loads only when an op module is, and ``TRITON_INTERPRET=1`` (the CPU
interpreter) must be in the environment before that. Callers go through the dispatcher
:func:`ds3kit.losses.patch_nce.patch_nce` rather than these modules.
"""
