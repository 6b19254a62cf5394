"""The downstream metric's segmenter: a 2-D U-Net on T1, T1ce, T2, FLAIR of the training subjects.

    python recipes/segmenter.py                     # the phantom cohort, writes runs/segmenter/checkpoints/segmenter.pt

The split is the other recipes' (``split_cohort`` with the same fractions and seed), so the segmenter never sees
their test subjects; every training subject's real T1ce and labels are read, for the segmenter only. It prints the
held-out Dice (ET, TC, WT) with the real T1ce (the ceiling a synthesis can reach) and with the T1 copied in place
of the T1ce (the floor), and writes them to metrics.json. See docs/metrics.md.

    python recipes/segmenter.py --without-t1ce      # runs/segmenter-without-t1ce: T1, T2, FLAIR alone

``--without-t1ce`` trains the same network with the T1 in the T1ce's channel and scores it the same way: the Dice
that segmenting without any T1ce reaches, the bar a synthesis must clear to have added anything to its inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ds3kit.data import default_cohort, list_cases, load_brats_case, split_cohort
from ds3kit.data.normalize import NORMALIZATION
from ds3kit.errors import InputError
from ds3kit.segment import (
    REFERENCE_ROWS,
    load_region_slices,
    reference_t1ce,
    save_segmenter,
    session_dice,
    train_segmenter,
)
from ds3kit.train.config import RunConfig
from ds3kit.train.trainer import resolve_device
from ds3kit.utils.atomic import atomic_write_text

SPLIT = RunConfig()  # the other recipes' val / test fractions and phantom cohort
SMOKE = {"steps": 8, "batch_size": 4, "phantom_cases": 10, "phantom_shape": (48, 48, 16), "max_test_subjects": 2}
DICE_KEYS = ("dice_et", "dice_tc", "dice_wt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="BraTS-layout root folder (default: the phantom cohort, generated on first use)")
    parser.add_argument("--out", default=None, help="run directory (default: runs/segmenter)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: 2400)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per step (default: 8)")
    parser.add_argument(
        "--lr", type=float, default=3e-3, help="initial Adam learning rate, cosine decay (default: 3e-3)"
    )
    parser.add_argument("--image-size", type=int, default=None, help="crop / pad slices to this size (default: native)")
    parser.add_argument("--seed", type=int, default=0, help="split seed, as in the other recipes (default: 0)")
    parser.add_argument("--init-seed", type=int, default=None, help="initialisation / sampling seed (default: --seed)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: CUDA when present)")
    parser.add_argument("--max-test-subjects", type=int, default=None, help="evaluate on at most N held-out subjects")
    parser.add_argument("--overwrite", action="store_true", help="replace a segmenter already in --out")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument(
        "--without-t1ce",
        action="store_true",
        help="train on T1, T2, FLAIR alone (the T1 in the T1ce's channel): what the inputs carry without any T1ce",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny configuration for CI (8 steps, small phantom)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        report = run(args)
    except InputError as error:
        print(f"segmenter: error: {error}", file=sys.stderr)
        return 2
    print(format_dice_table(report))
    print(f"segmenter: wall time {time.perf_counter() - started:.1f} s, run directory {report['out']}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> dict:
    settings = {
        "steps": 2400,
        "batch_size": 8,
        "phantom_cases": SPLIT.phantom_cases,
        "phantom_shape": SPLIT.phantom_shape,
        "max_test_subjects": None,
        **(SMOKE if args.smoke else {}),
    }
    for name in ("steps", "batch_size", "max_test_subjects"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    name = "segmenter-without-t1ce" if args.without_t1ce else "segmenter"
    out = Path(args.out or (f"runs/{name.replace('segmenter', 'segmenter-smoke')}" if args.smoke else f"runs/{name}"))
    checkpoint = out / "checkpoints" / "segmenter.pt"
    if checkpoint.exists() and not args.overwrite:
        raise InputError(f"{out} already holds a segmenter; pass --overwrite to replace it, or choose another --out")
    device = resolve_device(args.device)

    root = (
        Path(args.data)
        if args.data
        else default_cohort(cases=settings["phantom_cases"], shape=settings["phantom_shape"])
    )
    if not root.is_dir():
        raise InputError(f"--data {root}: no such directory")
    split = split_cohort(
        list_cases(root),
        paired_fraction=SPLIT.paired_fraction,
        val_fraction=SPLIT.val_fraction,
        test_fraction=SPLIT.test_fraction,
        seed=args.seed,
    )
    slices = load_region_slices(split.train, image_size=args.image_size, without_t1ce=args.without_t1ce)
    init_seed = args.seed if args.init_seed is None else args.init_seed
    segmenter = train_segmenter(
        slices,
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        lr=args.lr,
        seed=init_seed,
        device=device,
        progress=args.progress,
    )
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_segmenter(
        checkpoint,
        segmenter,
        train_cases=slices.case_ids,
        split_seed=args.seed,
        init_seed=init_seed,
        val_fraction=SPLIT.val_fraction,
        test_fraction=SPLIT.test_fraction,
        steps=settings["steps"],
        batch_size=settings["batch_size"],
        lr=args.lr,
        image_size=args.image_size,
        intensity=f"per-modality, inside the brain: {NORMALIZATION} -> [0, 1] (ds3kit.data.normalize)",
        t1ce_channel="t1" if args.without_t1ce else "t1ce",
    )

    report = {
        "out": str(out),
        "checkpoint": str(checkpoint),
        "steps": settings["steps"],
        "split_seed": args.seed,
        "train": slices.case_ids,
        "without_t1ce": args.without_t1ce,
        "rows": {},
    }
    # Without T1ce the segmenter never learned what a T1ce shows: only the row it was trained for, the T1 copied in.
    rows = ("copy_t1",) if args.without_t1ce else REFERENCE_ROWS
    for part, cases in (("val", split.val), ("test", split.test[: settings["max_test_subjects"]])):
        sessions = [load_brats_case(case, with_target=not args.without_t1ce) for case in cases]
        for row in rows:
            subjects = {s.case_id: session_dice(segmenter, s, reference_t1ce(s, row), device=device) for s in sessions}
            report["rows"].setdefault(part, {})[row] = {
                "mean": _summary(subjects, np.mean),
                "std": _summary(subjects, np.std),
                "subjects": subjects,
            }
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def _summary(subjects: dict[str, dict[str, float]], reduce) -> dict[str, float]:
    return (
        {key: float(reduce([metrics[key] for metrics in subjects.values()])) for key in DICE_KEYS} if subjects else {}
    )


def format_dice_table(report: dict) -> str:
    kind = " (without T1ce: T1, T2, FLAIR, the T1 in the T1ce's channel)" if report.get("without_t1ce") else ""
    lines = [f"segmenter{kind}: Dice on held-out subjects, {report['steps']} steps, split seed {report['split_seed']}"]
    for part, rows in report["rows"].items():
        count = len(next(iter(rows.values()))["subjects"])
        lines.append(f"{part} ({count} subjects){'':<4}" + "".join(f"{key:>18}" for key in DICE_KEYS))
        for row, result in rows.items():
            cells = [
                f"{result['mean'][k]:.4f} ± {result['std'][k]:.4f}" if k in result["mean"] else "n/a" for k in DICE_KEYS
            ]
            lines.append(f"  {row:<19}" + "".join(f"{cell:>18}" for cell in cells))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
