"""The patchwise contrastive loss's ops: fused GPU kernels (Triton) and the streaming torch path beside them.

- :mod:`ds3kit.ops.patch_nce`: the fused kernels (``patch_nce_triton``, ``KernelConfig``), with their
  ``torch.autograd.Function``.
- :mod:`ds3kit.ops.patch_nce_streaming`: the streaming torch path (``StreamingPatchNCE``), the CPU backend and the
  kernels' fallback; no triton import.
- :mod:`ds3kit.ops.interpreter`: ``interpreter_on()``, the one check of whether Triton's CPU interpreter is on.

Nothing is imported here: ``triton`` loads only when an op module is, and ``TRITON_INTERPRET=1`` (the CPU
interpreter) must be in the environment before that. Callers go through the dispatcher
:func:`ds3kit.losses.patch_nce.patch_nce` rather than these modules.
"""
