"""``ds3kit phantom OUT``: write a synthetic glioma cohort in BraTS layout."""

from __future__ import annotations

import argparse
import time

from ds3kit.data.phantom import write_phantom_cohort


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="write a synthetic glioma cohort (T1, T1ce, T2, FLAIR, seg) in BraTS layout",
        description="Write OUT/Phantom_001/Phantom_001_{t1,t1ce,t2,flair,seg}.nii.gz ... (OUT's parent must exist).",
    )
    parser.add_argument("out", help="output folder (created if missing)")
    parser.add_argument("--cases", type=int, default=40, help="number of subjects (default 40)")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=(96, 96, 48), metavar=("X", "Y", "Z"), help="grid (default 96 96 48)"
    )
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    folders = write_phantom_cohort(
        args.out, cases=args.cases, shape=tuple(args.shape), seed=args.seed, progress=not args.no_progress
    )
    elapsed = time.perf_counter() - start
    root = folders[0].parent if folders else args.out
    print(f"{root}  ({len(folders)} cases, {elapsed:.1f} s)")
    return 0
