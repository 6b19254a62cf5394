"""``ds3kit kernels``: the patch_nce kernels compiled ahead of time for GPU targets (no GPU needed).

- ``check``: compile every variant the dispatcher would launch on each arch (forward, dq, dk; each dtype the
  arch has; each D) with the config it would pick there, and report registers, stack (spills) and shared memory
  against the arch's limit. Exits 1 when a variant does not fit.
- ``choose``: rebuild the per-GPU config table (``ds3kit/ops/configs.py``): the first candidate that fits.
- ``roofline``: the roofline estimate of docs/patch_nce.md (FLOPs, bytes, predicted A100 / H100 times).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

DEFAULT_DIMS = (64, 128, 256, 512, 1024)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ds3kit.ops.configs import ARCHS

    parser = subparsers.add_parser(
        "kernels",
        help="compile the patch_nce kernels for GPU targets and check them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", required=True)

    check = actions.add_parser("check", help="compile every dispatched variant per arch; fail when one does not fit")
    check.add_argument("--arch", nargs="+", default=list(ARCHS), help=f"targets (default {' '.join(ARCHS)})")
    check.add_argument(
        "--dim",
        nargs="+",
        type=int,
        default=list(DEFAULT_DIMS),
        help=f"feature dimensions D (default {' '.join(map(str, DEFAULT_DIMS))})",
    )
    check.add_argument(
        "--dtype",
        nargs="+",
        choices=("fp32", "bf16", "fp16"),
        help="input dtypes (default: fp32, bf16 where the arch has it, fp16)",
    )
    check.add_argument("--json", type=Path, help="write the entries as a JSON list here")
    check.add_argument("--cubin-dir", type=Path, help="write each variant's cubin into this folder")
    check.add_argument(
        "--config",
        nargs="+",
        metavar="FIELD=VALUE",
        help="check this KernelConfig (e.g. block_m=64 block_n=64 num_warps=4 num_stages=2) instead "
        "of the dispatcher's choice",
    )
    check.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel compiles")
    check.set_defaults(run=run_check)

    choose = actions.add_parser("choose", help="print the config table rows: the first candidate that fits")
    choose.add_argument("--arch", nargs="+", default=list(ARCHS))
    choose.add_argument("--dim", nargs="+", type=int, default=list(DEFAULT_DIMS))
    choose.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel searches")
    choose.set_defaults(run=run_choose)

    roofline = actions.add_parser("roofline", help="print the roofline table of docs/patch_nce.md (Markdown)")
    roofline.add_argument("--batch", type=int, default=8, help="groups B (default 8)")
    roofline.add_argument("--dim", type=int, default=256, help="feature dimension D (default 256, CUT's)")
    roofline.set_defaults(run=run_roofline)


def _import_compiled_kernels() -> None:
    """Import ds3kit.ops.patch_nce with compiled (not interpreted) kernels, whatever TRITON_INTERPRET says."""
    if "ds3kit.ops.patch_nce" in sys.modules:
        from ds3kit.ops import patch_nce

        if patch_nce._INTERPRETED:
            raise ValueError(
                "ds3kit.ops.patch_nce was imported under TRITON_INTERPRET=1; run `ds3kit kernels` in a fresh process"
            )
        return
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:  # triton reads the variable when the kernels are decorated
        import ds3kit.ops.patch_nce  # noqa: F401
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


def _parse_config(fields: list[str]):
    from ds3kit.ops.configs import KernelConfig

    values: dict[str, int | None] = {}
    for field in fields:
        name, sep, value = field.partition("=")
        if not sep:
            raise ValueError(f"--config takes FIELD=VALUE items, got {field!r}")
        values[name] = None if value.lower() == "none" else int(value)
    try:
        return KernelConfig(**values)
    except TypeError as error:
        raise ValueError(f"--config: {error}") from None


def _variant(task: tuple) -> dict:
    """Compile one variant (in a worker process) and describe it as one JSON entry."""
    arch, dtype, dim, kernel, config_fields = task
    _import_compiled_kernels()
    from ds3kit.ops import resources
    from ds3kit.ops.configs import KernelConfig, arch_to_capability, default_config
    from ds3kit.ops.patch_nce import DTYPE_NAMES

    if config_fields is None:
        torch_dtype = {name: dtype_ for dtype_, name in DTYPE_NAMES.items()}[dtype]
        config = default_config(arch_to_capability(arch), torch_dtype, dim)
    else:
        config = KernelConfig(**config_fields)
    entry = {
        "arch": arch,
        "dtype": dtype,
        "dim": dim,
        "kernel": kernel,
        "config": config.short(),
        "registers": None,
        "stack_bytes": None,
        "shared_bytes": None,
        "limit_bytes": resources.shared_limit(arch),
        "fits": False,
        "cubin": resources.cubin_name(arch, dtype, dim, kernel),
    }
    try:
        usage = resources.compile_variant(kernel, arch, dtype, dim, config)
    except Exception as error:  # a compilation failure is a finding to report, not a crash of the check
        entry["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        entry["cubin"] = None
        return entry
    entry.update(
        registers=usage.registers,
        stack_bytes=usage.stack_bytes,
        shared_bytes=usage.shared_bytes,
        fits=resources.fits(usage, arch, dim),
    )
    entry["_cubin_bytes"] = usage.cubin
    return entry


def _table(entries: list[dict]) -> str:
    header = ("arch", "dtype", "D", "kernel", "config", "regs", "stack B", "shared KiB", "limit KiB", "fits")
    rows = [header]
    for e in entries:
        shared = "-" if e["shared_bytes"] is None else f"{e['shared_bytes'] / 1024:.1f}"
        fits = "yes" if e["fits"] else ("ERROR" if "error" in e else "NO")
        rows.append(
            (
                e["arch"],
                e["dtype"],
                str(e["dim"]),
                e["kernel"],
                e["config"],
                str(e["registers"] or "-"),
                "-" if e["stack_bytes"] is None else str(e["stack_bytes"]),
                shared,
                f"{e['limit_bytes'] / 1024:.0f}",
                fits,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)


def run_check(args: argparse.Namespace) -> int:
    _import_compiled_kernels()
    from ds3kit.ops import resources
    from ds3kit.ops.configs import MAX_DIM

    started = time.perf_counter()
    config_fields = None
    if args.config:
        config = _parse_config(args.config)
        config_fields = {name: getattr(config, name) for name in config.__dataclass_fields__}
    for dim in args.dim:
        if not 1 <= dim <= MAX_DIM:
            raise ValueError(f"--dim takes 1 ... {MAX_DIM}, got {dim}")
    tasks = []
    for arch in args.arch:
        resources.shared_limit(arch)  # a ValueError naming the known archs, before any compile
        for dtype in resources.dtypes_for(arch):
            if args.dtype and dtype not in args.dtype:
                continue
            for dim in args.dim:
                tasks.extend((arch, dtype, dim, kernel, config_fields) for kernel in resources.KERNEL_NAMES)
    if args.jobs > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            entries = list(pool.map(_variant, tasks))
    else:
        entries = [_variant(task) for task in tasks]
    if args.cubin_dir is not None:
        args.cubin_dir.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        cubin = entry.pop("_cubin_bytes", None)
        if args.cubin_dir is not None and cubin is not None:
            (args.cubin_dir / entry["cubin"]).write_bytes(cubin)
    print(_table(entries))
    bad = [e for e in entries if not e["fits"]]
    elapsed = time.perf_counter() - started
    print(f"{len(entries) - len(bad)} of {len(entries)} variants fit ({elapsed:.0f} s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(entries, indent=1) + "\n")
    return 1 if bad else 0


def _choose_one(task: tuple) -> tuple:
    arch, dtype, dim = task
    _import_compiled_kernels()
    from ds3kit.ops.resources import choose_config

    config, _ = choose_config(arch, dtype, dim)
    return arch, dtype, dim, config


def run_choose(args: argparse.Namespace) -> int:
    _import_compiled_kernels()
    from ds3kit.ops.configs import padded_dim
    from ds3kit.ops.resources import dtypes_for

    tasks = [(arch, dtype, padded_dim(dim)) for arch in args.arch for dtype in dtypes_for(arch) for dim in args.dim]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        chosen = list(pool.map(_choose_one, tasks))
    missing = 0
    for arch, dtype, dim, config in chosen:
        if config is None:
            missing += 1
            print(f"    # ({arch!r}, {dtype!r}, {dim}): no candidate fits")
            continue
        print(
            f"    ({arch!r}, {dtype!r}, {dim}): _c({config.block_m}, {config.block_n}, {config.block_d}, "
            f"{config.num_warps}, {config.num_stages}),"
        )
    return 1 if missing else 0


def run_roofline(args: argparse.Namespace) -> int:
    from ds3kit.ops.roofline import roofline_markdown

    print(roofline_markdown(batch=args.batch, dim=args.dim))
    return 0
