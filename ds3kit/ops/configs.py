"""Launch configurations of the patch_nce kernels, chosen per GPU so that they fit it (no triton import here).

A :class:`KernelConfig` is the tile shape (``block_m`` query rows, ``block_n`` key rows, ``block_d`` feature
columns per chunk) and the launch parameters (``num_warps``, ``num_stages``) of all three kernels. Which one a
launch gets is decided by :func:`default_config` from the GPU's compute capability, the input dtype and the feature
dimension D: the table below was chosen by ``ds3kit kernels check`` (ahead-of-time compilation for each target,
no GPU needed), as the largest tiles whose forward, query-gradient and key-gradient kernels all fit the target's
shared memory per block with no register spills. ``ds3kit kernels check`` recompiles every entry and fails when
one no longer fits (a Triton or ptxas upgrade can change the figures).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_BLOCK = 16  # tl.dot needs every tile side >= 16
MAX_DIM = 1024  # the kernels chunk D by block_d; CUT uses 256

# Opt-in shared memory per block (bytes), cudaDevAttrMaxSharedMemoryPerBlockOptin, by compute capability: what
# torch.cuda.get_device_properties(...).shared_memory_per_block_optin reports on these GPUs (CUDA programming
# guide, table of compute-capability limits).
SHARED_MEMORY_LIMITS = {
    (7, 0): 96 * 1024,  # V100
    (7, 5): 64 * 1024,  # T4, RTX 20
    (8, 0): 163 * 1024,  # A100, A30
    (8, 6): 99 * 1024,  # RTX 30, A10, A40
    (8, 7): 163 * 1024,  # Jetson Orin
    (8, 9): 99 * 1024,  # RTX 40, L4, L40
    (9, 0): 227 * 1024,  # H100, H200
    (10, 0): 227 * 1024,  # B200
    (12, 0): 99 * 1024,  # RTX 50
}
# Targets of ``ds3kit kernels check`` and of the table: the GPUs users mostly own.
ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class KernelConfig:
    """Tiles and launch parameters of the three kernels (names as ``benchmarks/search.py`` tunes them).

    ``block_m``: query rows per tile; ``block_n``: key rows per tile; ``block_d``: feature columns per chunk, or
    ``None`` for all of D in one chunk (powers of two >= 16). With ``block_d`` < D the forward sums each score tile
    over D in chunks, and the gradient kernels get one program per output chunk (each recomputes its score tiles).
    ``num_warps`` and ``num_stages`` go to every launch (ignored by the interpreter).
    """

    block_m: int = 64
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    block_d: int | None = None

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_d"):
            value = getattr(self, name)
            if name == "block_d" and value is None:
                continue
            if not isinstance(value, int) or value < MIN_BLOCK or value & (value - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of two >= {MIN_BLOCK}, got {value!r}")
        if not isinstance(self.num_warps, int) or self.num_warps < 1 or self.num_warps & (self.num_warps - 1):
            raise ValueError(f"KernelConfig.num_warps must be a power of two >= 1, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"KernelConfig.num_stages must be >= 1, got {self.num_stages!r}")

    def short(self) -> str:
        """``64x64xD w4 s2``: tiles (block_m x block_n x block_d), warps, stages."""
        chunk = "D" if self.block_d is None else str(self.block_d)
        return f"{self.block_m}x{self.block_n}x{chunk} w{self.num_warps} s{self.num_stages}"


INTERPRETER_CONFIG = KernelConfig(block_m=16, block_n=16, num_warps=1, num_stages=1)


def _c(block_m: int, block_n: int, block_d: int | None, num_warps: int, num_stages: int) -> KernelConfig:
    return KernelConfig(block_m=block_m, block_n=block_n, block_d=block_d, num_warps=num_warps, num_stages=num_stages)


# (arch, dtype, padded D) -> config; padded D is next_power_of_2(max(D, 64)); other compute capabilities use the
# row of a listed arch (_table_arch). sm_75, sm_80 and sm_90: what ``ds3kit kernels choose`` printed, the first
# candidate (ds3kit.ops.resources.candidates) whose three kernels fit with no spill. sm_86 / sm_89 (99 KiB):
# sm_80's rows, whose largest variant needs 72.5 KiB (Triton generates the same code for sm_80 and sm_86 / sm_89).
# On sm_75 (64 KiB, no bfloat16; bfloat16 inputs get the fp16 row) every float16 tile of 32 x 32 or more spills
# for D >= 128, hence 16 x 16 tiles there. ``ds3kit kernels check`` compiles every row for its arch and fails when
# one does not fit.
_SM80 = {
    ("fp32", 64): _c(32, 32, None, 8, 2),
    ("fp32", 128): _c(32, 32, None, 8, 2),
    ("fp32", 256): _c(32, 32, None, 8, 2),
    ("fp32", 512): _c(32, 32, 128, 4, 2),
    ("fp32", 1024): _c(32, 32, 128, 4, 2),
    **{(half, dim): _c(64, 64, None, 8, 2) for half in ("bf16", "fp16") for dim in (64, 128, 256)},
    **{(half, dim): _c(64, 64, 128, 8, 2) for half in ("bf16", "fp16") for dim in (512, 1024)},
}
_SM90 = {
    ("fp32", 64): _c(32, 32, None, 8, 2),
    ("fp32", 128): _c(64, 64, 64, 8, 2),
    ("fp32", 256): _c(32, 32, None, 8, 2),
    ("fp32", 512): _c(64, 64, 128, 8, 2),
    ("fp32", 1024): _c(64, 64, 128, 8, 2),
    **{(half, dim): _c(64, 64, None, 8, 2) for half in ("bf16", "fp16") for dim in (64, 128, 256)},
    **{(half, dim): _c(64, 64, 128, 8, 2) for half in ("bf16", "fp16") for dim in (512, 1024)},
}
_SM75 = {
    ("fp32", 64): _c(32, 32, None, 8, 2),
    ("fp32", 128): _c(64, 64, 64, 4, 2),
    **{("fp32", dim): _c(32, 32, 128, 4, 2) for dim in (256, 512, 1024)},
    ("fp16", 64): _c(32, 32, None, 8, 2),
    **{("fp16", dim): _c(16, 16, 64, 2, 1) for dim in (128, 256, 512, 1024)},
}
TABLE: dict[tuple[str, str, int], KernelConfig] = {
    **{("sm_75", dtype, dim): config for (dtype, dim), config in _SM75.items()},
    **{(arch, dtype, dim): config for arch in ("sm_80", "sm_86", "sm_89") for (dtype, dim), config in _SM80.items()},
    **{("sm_90", dtype, dim): config for (dtype, dim), config in _SM90.items()},
}


def _table_arch(capability: tuple[int, int]) -> str:
    """The table row a GPU of ``capability`` uses: among the listed archs not newer than it whose shared memory does
    not exceed its own, the one with the most shared memory, then the newest (sm_75 when none qualifies)."""
    limit = shared_memory_limit(capability)
    eligible = [
        arch
        for arch in ARCHS
        if arch_to_capability(arch) <= capability and SHARED_MEMORY_LIMITS[arch_to_capability(arch)] <= limit
    ]
    if not eligible:
        return ARCHS[0]
    return max(eligible, key=lambda arch: (SHARED_MEMORY_LIMITS[arch_to_capability(arch)], arch_to_capability(arch)))


def arch_to_capability(arch: str) -> tuple[int, int]:
    """``"sm_86"`` -> (8, 6); ``ValueError`` for anything else."""
    if not (isinstance(arch, str) and arch.startswith("sm_") and arch[3:].isdigit() and len(arch) >= 5):
        raise ValueError(f"arch must look like 'sm_80', got {arch!r}")
    digits = arch[3:]
    return int(digits[:-1]), int(digits[-1])


def shared_memory_limit(capability: tuple[int, int]) -> int:
    """Opt-in shared memory per block (bytes) of a compute capability; unknown ones get the smallest listed
    limit of their major version (or of the whole table)."""
    if capability in SHARED_MEMORY_LIMITS:
        return SHARED_MEMORY_LIMITS[capability]
    same_major = [limit for (major, _), limit in SHARED_MEMORY_LIMITS.items() if major == capability[0]]
    return min(same_major or SHARED_MEMORY_LIMITS.values())


def padded_dim(dim: int) -> int:
    """The table's D: the next power of two, at least 64 (smaller D share the 64 row: its tiles fit them too)."""
    if not 1 <= dim <= MAX_DIM:
        raise ValueError(f"D must be in 1 ... {MAX_DIM}, got {dim}")
    return max(64, 1 << (dim - 1).bit_length())


def has_bfloat16(capability: tuple[int, int]) -> bool:
    """bfloat16 tensor-core products exist from sm_80 on."""
    return capability >= (8, 0)


def default_config(capability: tuple[int, int], dtype: torch.dtype, dim: int) -> KernelConfig:
    """The table's config for a GPU of ``capability``, inputs of ``dtype`` and feature dimension ``dim``."""
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {tuple(DTYPE_NAMES.values())}, got {dtype}")
    arch = _table_arch(capability)
    name = DTYPE_NAMES[dtype]
    if name == "bf16" and not has_bfloat16(arch_to_capability(arch)):
        name = "fp16"  # same element size; sm_75 has no bfloat16 tensor cores (Triton emulates them)
    return TABLE[(arch, name, padded_dim(dim))]


def smaller_configs(config: KernelConfig, dim: int) -> list[KernelConfig]:
    """Configs to try, in order, when ``config`` does not launch: smaller chunks of D and tiles, one stage."""
    chunk = config.block_d or max(MIN_BLOCK, 1 << (dim - 1).bit_length())
    steps = [
        _c(min(config.block_m, 32), min(config.block_n, 32), min(chunk, 64), min(config.num_warps, 4), 1),
        _c(MIN_BLOCK, MIN_BLOCK, min(chunk, 32), 2, 1),
    ]
    result: list[KernelConfig] = []
    for step in steps:
        if step != config and step not in result:
            result.append(step)
    return result
