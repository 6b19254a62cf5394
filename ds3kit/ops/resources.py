"""Ahead-of-time compilation of the patch_nce kernels for a GPU target, and the resources each variant needs.

No GPU is needed: ``triton.compile`` builds PTX and a cubin for any ``GPUTarget("cuda", capability, 32)`` on the
CPU, with the ptxas the triton wheel ships. The shared memory a launch needs is the compiled kernel's
``metadata.shared`` (what Triton compares with the device's opt-in limit before a launch); registers and stack
(spills) come from ``cuobjdump --dump-resource-usage`` on the cubin, also shipped in the wheel.

The kernels must be compiled ones (``triton.jit``), not the CPU interpreter's: import this module in a process
where ``TRITON_INTERPRET`` is not 1 when :mod:`ds3kit.ops.patch_nce` is first imported.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ds3kit.ops.configs import SHARED_MEMORY_LIMITS, KernelConfig, arch_to_capability, has_bfloat16

KERNEL_NAMES = ("forward", "dq", "dk")
_POINTER_TYPES = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}
# The N the variants are compiled for: large enough that no tile is capped by a small group, divisible by 16 as
# CUT's 256 and the benchmark sizes are (Triton specialises such integers, and so does this compile).
COMPILE_N = 16384


@dataclass
class Resources:
    """What one compiled variant needs per block on its target."""

    registers: int
    stack_bytes: int
    shared_bytes: int
    cubin: bytes


def dtypes_for(arch: str) -> tuple[str, ...]:
    """The input dtypes the dispatcher launches on ``arch``: bfloat16 only from sm_80 on."""
    return ("fp32", "bf16", "fp16") if has_bfloat16(arch_to_capability(arch)) else ("fp32", "fp16")


def shared_limit(arch: str) -> int:
    capability = arch_to_capability(arch)
    if capability not in SHARED_MEMORY_LIMITS:
        raise ValueError(f"arch must be one of {sorted(f'sm_{a}{b}' for a, b in SHARED_MEMORY_LIMITS)}, got {arch!r}")
    return SHARED_MEMORY_LIMITS[capability]


def must_not_spill(arch: str, dim: int) -> bool:
    """Spills are refused for D <= 256 on sm_80 and newer (the CUT sizes on the GPUs that train it)."""
    return dim <= 256 and arch_to_capability(arch) >= (8, 0)


def _signature(kernel: str, dtype: str) -> dict[str, str]:
    pointer = _POINTER_TYPES[dtype]
    if kernel == "forward":
        names = {
            "Q": pointer,
            "K": pointer,
            "W": "*fp32",
            "LSE": "*fp32",
            "LOSS": "*fp32",
            "N": "i32",
            "D": "i32",
            "qk_scale": "fp32",
            "scale": "fp32",
            "HAS_WEIGHT": "constexpr",
        }
    else:
        out = "DQ" if kernel == "dq" else "DK"
        names = {
            "Q": pointer,
            "K": pointer,
            "LSE": "*fp32",
            "G": "*fp32",
            out: pointer,
            "N": "i32",
            "D": "i32",
            "qk_scale": "fp32",
        }
    for constexpr in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "D_CHUNKS", "INPUT_PRECISION", "UPCAST"):
        names[constexpr] = "constexpr"
    return names


def _cuobjdump() -> Path:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.is_file():
        raise FileNotFoundError(f"cuobjdump is not in the triton wheel at {path}")
    return path


def cubin_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) of the one function in ``cubin``, read by ``cuobjdump --dump-resource-usage``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        report = subprocess.run(
            [str(_cuobjdump()), "--dump-resource-usage", str(path)], check=True, capture_output=True, text=True
        ).stdout
    match = re.search(r"REG:(\d+)\s+STACK:(\d+)", report)
    if match is None:
        raise RuntimeError(f"cuobjdump printed no REG/STACK line:\n{report}")
    return int(match.group(1)), int(match.group(2))


def compile_variant(
    kernel: str, arch: str, dtype: str, dim: int, config: KernelConfig, input_precision: str | None = None
) -> Resources:
    """Compile one kernel for ``arch`` (e.g. ``"sm_80"``) with ``config`` and measure it.

    Args:
        kernel: ``"forward"``, ``"dq"`` or ``"dk"``.
        dtype: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        dim: the feature dimension D.
        input_precision: ``"ieee"`` or ``"tf32"`` for fp32 (default ``"ieee"``, torch's default matmul precision);
            ignored otherwise.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ds3kit.ops import patch_nce as ops

    if ops._INTERPRETED:
        raise RuntimeError(
            "the patch_nce kernels were decorated for Triton's CPU interpreter (TRITON_INTERPRET=1 "
            "when ds3kit.ops.patch_nce was imported); compile them in a process without it"
        )
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"kernel must be one of {KERNEL_NAMES}, got {kernel!r}")
    if dtype not in _POINTER_TYPES:
        raise ValueError(f"dtype must be one of {tuple(_POINTER_TYPES)}, got {dtype!r}")
    major, minor = arch_to_capability(arch)
    params = ops.tile_parameters(config, COMPILE_N, dim)
    options = {"num_warps": params.pop("num_warps"), "num_stages": params.pop("num_stages")}
    constexprs = {
        **params,
        "INPUT_PRECISION": (input_precision or "ieee") if dtype == "fp32" else "ieee",
        "UPCAST": False,
    }
    if kernel == "forward":
        constexprs["HAS_WEIGHT"] = True  # the difficulty-weighted loss, DS3-Net's case
    signature = _signature(kernel, dtype)
    # Triton specialises pointers (16-byte aligned allocations) and integers divisible by 16 at launch; so does this.
    aligned = [name for name, kind in signature.items() if kind.startswith("*")] + ["N"]
    if dim % 16 == 0:
        aligned.append("D")
    names = list(signature)
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    source = ASTSource(ops.KERNELS[kernel], signature, constexprs, attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", major * 10 + minor, 32), options=options)
    registers, stack = cubin_usage(compiled.asm["cubin"])
    return Resources(
        registers=registers, stack_bytes=stack, shared_bytes=int(compiled.metadata.shared), cubin=compiled.asm["cubin"]
    )


def fits(resources: Resources, arch: str, dim: int) -> bool:
    """Shared memory within the arch's opt-in limit, and no spills where :func:`must_not_spill` says so."""
    if resources.shared_bytes > shared_limit(arch):
        return False
    return not (must_not_spill(arch, dim) and resources.stack_bytes > 0)


def cubin_name(arch: str, dtype: str, dim: int, kernel: str) -> str:
    return f"patch_nce_{kernel}-{arch}-{dtype}-d{dim}.cubin"


def candidates(dim: int) -> list[KernelConfig]:
    """Configs to try for D = ``dim``, best first: one D chunk before several (chunks make each gradient program
    recompute its score tiles), then larger tiles (more reuse of each loaded row), then more pipeline stages."""
    padded = max(64, 1 << (dim - 1).bit_length())
    whole = [
        (64, 64, 8, 2),
        (64, 64, 4, 2),
        (64, 32, 4, 2),
        (32, 64, 4, 2),
        (32, 32, 8, 2),
        (32, 32, 4, 2),
        (32, 32, 4, 1),
    ]
    chunked = [(64, 64, 8, 2), (64, 64, 4, 2), (32, 32, 4, 2), (32, 32, 4, 1), (16, 16, 2, 1)]
    result = []
    if padded <= 256:  # a whole row of D = 512 or more cannot stay in registers beside a score tile
        result += [KernelConfig(block_m=m, block_n=n, num_warps=w, num_stages=s) for m, n, w, s in whole]
    for chunk in (128, 64, 32):
        if chunk < padded:
            result += [
                KernelConfig(block_m=m, block_n=n, block_d=chunk, num_warps=w, num_stages=s) for m, n, w, s in chunked
            ]
    return result


def choose_config(arch: str, dtype: str, dim: int, log=None) -> tuple[KernelConfig | None, dict[str, Resources]]:
    """The first of :func:`candidates` whose three kernels all fit ``arch`` with no spills at all, else the first
    that fits (:func:`fits`), with their resources; ``(None, {})`` when none does. The heaviest kernel (dq) is
    compiled first, so most misfits cost one compile (Triton's cache makes the second pass cheap)."""
    for strict in (True, False):
        for config in candidates(dim):
            measured: dict[str, Resources] = {}
            for kernel in ("dq", "dk", "forward"):
                measured[kernel] = usage = compile_variant(kernel, arch, dtype, dim, config)
                if log is not None:
                    log(
                        f"{arch} {dtype} D={dim} {config.short()} {kernel}: {usage.registers} registers, "
                        f"{usage.stack_bytes} B stack, {usage.shared_bytes} B shared"
                    )
                if not fits(usage, arch, dim) or (strict and usage.stack_bytes > 0):
                    break
            else:
                return config, measured
    return None, {}
