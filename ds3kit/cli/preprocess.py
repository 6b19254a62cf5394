"""``ds3kit preprocess --data DIR``: build the memory-mapped cache of a BraTS-layout cohort ahead of training."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preprocess",
        help="preprocess a BraTS-layout cohort into the memory-mapped training cache",
        description="Loads every case folder under DIR once (T1 grid, per-modality normalisation, brain mask, seg in "
        "{0, 1, 2, 4}), crops it to the brain and writes float16 slice-major .npy files per case into the cache "
        "($DS3KIT_CACHE/preprocessed, default ~/.cache/ds3kit/preprocessed, or --cache-dir). Cases already "
        "cached and unchanged are skipped, so an interrupted run resumes; every unusable case is named at once.",
    )
    parser.add_argument("--data", required=True, type=Path, help="BraTS-layout root folder (one sub-folder per case)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache folder (default: $DS3KIT_CACHE/preprocessed or ~/.cache/ds3kit/preprocessed)",
    )
    parser.add_argument("--workers", type=int, default=1, help="preprocessing processes (default 1)")
    parser.add_argument(
        "--label-convention",
        choices=("auto", "brats2020", "brats2023"),
        default="auto",
        help="seg labels: brats2020 {0,1,2,4}, brats2023 {0,1,2,3} with 3 = enhancing; "
        "auto: brats2023 for -t1n/-t1c/-t2w/-t2f file names (default auto)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ds3kit.data import list_cases, preprocess_cases

    start = time.perf_counter()
    cases = list_cases(args.data)
    result = preprocess_cases(
        cases,
        cache_dir=args.cache_dir,
        label_convention=args.label_convention,
        workers=args.workers,
        progress=args.progress,
    )
    elapsed = time.perf_counter() - start
    rate = f", {len(result.built) / elapsed:.2f} cases/s" if result.built else ""
    print(
        f"{result.cache_dir}  ({len(result.built)} built, {len(result.reused)} already cached, {elapsed:.1f} s{rate})"
    )
    return 0
