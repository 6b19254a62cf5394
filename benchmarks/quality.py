"""Quality study: does DS3-Net do what the paper says, on the phantom cohort (or real BraTS with --data)?

    python benchmarks/quality.py                       # the default arms, 5 seeds, 1200 steps: hours on 2 CPU cores
    python benchmarks/quality.py --arms "paired-only 5%" "DS3-Net 5%" --seeds 0 1 2 3 4
    python benchmarks/quality.py --smoke               # CI: one seed, a few steps, tiny networks
    python benchmarks/quality.py --phantom-cases 160 --out runs/quality-160   # 5 % paired = 6 subjects, not 1
    python benchmarks/quality.py --data /data/BraTS2020 --preset large --steps 20000 --device cuda

Each arm is a recipe at a paired fraction with method options, started from the recipe's own defaults
(``_quality_runs.ARMS``: paired-only, DS3-Net and its mechanisms and ablations at 5 %, pix2pix at 100 %, CUT at 0 %;
``DEFAULT_ARMS`` are those run without ``--arms``). Every run validates every 100 steps and ships its best-validation
weights, as the recipes do, and scores its shipped model on the seed's held-out subjects (the split depends on the
seed only). ``paired-only 5%`` is not trained on its own: it is read as the teacher of a DS3-Net run of the seed, which
is the paired-only model draw for draw (common random numbers, docs/training.md). Per seed a segmenter is trained on
the seed's training subjects (``recipes/segmenter.py``) and run on each arm's saved test predictions: ET / TC / WT
Dice (``--no-dice`` skips it). Writes ``docs/results/quality.md`` (mean ± std over seeds, whole brain, tumour and
Dice, copy-T1, linear and the ceilings beside them, the paper's tables, paired t-tests of each claim, DS3-Net's teacher and student on the subjects each trained on, and what
the step selection chose: every generator at its shipped step and at its last step on the test subjects, and on
phantom data each arm's brain error split by the true tissue map) and
``docs/results/quality.png``.

A run whose ``metrics.json`` exists is reused, so an interrupted study resumes where it stopped; ``--out`` may be
shared by several invocations running different ``--arms`` / ``--seeds`` in parallel. A finished run scored with
other test-time flips than the recipes' (``RunConfig.test_flips``), or before the intensity calibration existed, is
calibrated and scored again from its checkpoint, with no step trained, ``--finished-only`` included.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

# The study's parts are sibling modules (benchmarks/ is the script's folder, and on pytest's pythonpath); the names
# the tests and users reach for are re-exported here.
from _quality_report import PAPER, diagnostics_table, plot, room_table, tissue_table, write_report
from _quality_runs import (
    ARMS,
    DEFAULT_ARMS,
    DIAGNOSED_ARM,
    DIAGNOSTIC_SUBSETS,
    OWN_LEVELS,
    REAL_T1CE,
    WITHOUT_T1CE,
    Arm,
    diagnose,
    last_step_scores,
    reference_rows,
    run_arm,
    run_dice,
    run_dir,
    run_report,
    segmenter_for,
    tissue_errors_of,
)
from _quality_stats import METRICS, NOISE_FLOOR_DB, Difference, Runs, claims, difference, flag_losers, summarise

from ds3kit.baselines import COPY_T1
from ds3kit.train import SMOKE_OVERRIDES, RunConfig

__all__ = [
    "ARMS",
    "DIAGNOSED_ARM",
    "DIAGNOSTIC_SUBSETS",
    "METRICS",
    "NOISE_FLOOR_DB",
    "OWN_LEVELS",
    "PAPER",
    "Arm",
    "Difference",
    "Runs",
    "claims",
    "diagnose",
    "diagnostics_table",
    "difference",
    "flag_losers",
    "main",
    "plot",
    "reference_rows",
    "room_table",
    "run_arm",
    "run_dir",
    "run_report",
    "summarise",
    "tissue_errors_of",
    "tissue_table",
    "write_report",
]

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None)
    parser.add_argument(
        "--phantom-cases",
        type=int,
        default=RunConfig.phantom_cases,
        help="subjects of the built-in phantom cohort when --data is not given (5 %% of 40 is one paired subject)",
    )
    parser.add_argument("--out", default=None, help="run directories (default: runs/quality, runs/quality-smoke)")
    parser.add_argument("--report", default=str(REPO / "docs" / "results" / "quality.md"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default=None)
    parser.add_argument("--arms", nargs="+", default=None, help="a subset of the arms, by name")
    parser.add_argument("--smoke", action="store_true", help="CI: one seed, tiny networks, a few steps")
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="train nothing: report the runs of --out that finished (an arm missing a seed shows its count)",
    )
    parser.add_argument(
        "--no-dice", dest="dice", action="store_false", help="skip the segmenter per seed and the ET/TC/WT Dice columns"
    )
    parser.add_argument(
        "--segmenter-steps",
        type=int,
        default=None,
        help="steps of each seed's segmenter (default: recipes/segmenter.py's)",
    )
    args = parser.parse_args(argv)

    base = RunConfig(
        data=args.data,
        phantom_cases=args.phantom_cases,
        steps=args.steps,
        batch_size=args.batch_size,
        image_size=args.image_size,
        preset=args.preset,
        device=args.device,
        progress=False,
    )
    seeds = args.seeds
    if args.smoke:
        base = dataclasses.replace(base, **{**SMOKE_OVERRIDES, "val_every": 10**9, "checkpoint_every": 10**9})
        seeds = seeds[:1]
    unknown = set(args.arms or ()) - {arm.name for arm in ARMS}
    if unknown:
        parser.error(f"unknown arm(s) {sorted(unknown)}; the arms are {[arm.name for arm in ARMS]}")
    arms = [arm for arm in ARMS if arm.name in (args.arms or DEFAULT_ARMS)]
    out = Path(args.out or ("runs/quality-smoke" if args.smoke else "runs/quality"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: Runs = {arm.name: [] for arm in arms}
    references_by_seed: dict[str, dict[int, dict[str, float]]] = {}  # label -> seed -> its means
    trained = reused = 0
    counted: set[Path] = set()  # run directories counted as trained or reused (an arm may be read from another's)
    floor: dict[int, float] = {}  # copy-T1's brain PSNR per seed: what each arm must beat at that seed
    unscored: set[int] = set()  # seeds without Dice: --finished-only found their segmenters missing
    for seed in seeds:
        for arm in arms:
            t0 = time.perf_counter()
            folder = run_dir(arm, seed, out)
            cached = (folder / "metrics.json").exists()
            if args.finished_only and not cached:
                results[arm.name].append({})  # keeps the arms' lists aligned by seed; shown as "k of n seeds"
                continue
            if folder not in counted:
                counted.add(folder)
                reused += cached
                trained += not cached
            report_of_run = run_report(arm, seed, base, out)
            shipped = dict(report_of_run["models"]["__shipped__"])
            rows = reference_rows(report_of_run, arm.paired_fraction)
            segmenters = (
                {
                    without: segmenter_for(
                        seed,
                        base,
                        out,
                        steps=args.segmenter_steps,
                        smoke=args.smoke,
                        without_t1ce=without,
                        train=not args.finished_only,
                    )
                    for without in (False, True)
                }
                if args.dice
                else {}
            )
            if segmenters and None not in segmenters.values():
                dice = run_dice(arm, seed, base, out, segmenters[False], without_t1ce=segmenters[True])
                shipped.update(dice["__shipped__"])
                rows[COPY_T1] = {**rows.get(COPY_T1, {}), **dice[COPY_T1]}
                rows[REAL_T1CE] = dice[REAL_T1CE]
                rows[WITHOUT_T1CE] = dice[WITHOUT_T1CE]
            elif segmenters and seed not in unscored:
                unscored.add(seed)
                print(
                    f"seed {seed}: no Dice, its segmenters are not all in {out} and --finished-only trains nothing "
                    "(run without --finished-only to train them)",
                    file=sys.stderr,
                )
            results[arm.name].append(shipped)
            floor[seed] = rows.get(COPY_T1, {}).get("brain_psnr")  # copy-T1 depends on the seed's test subjects only
            # One row per reference and seed: the test subjects depend on the seed only, the linear fit on the
            # paired fraction too.
            for label, means in rows.items():
                references_by_seed.setdefault(label, {}).setdefault(seed, means)
            brain = results[arm.name][-1].get("brain_psnr", float("nan"))
            print(
                f"[{time.perf_counter() - started:7.0f} s] seed {seed} {arm.name:<36} brain PSNR {brain:6.2f} dB "
                f"({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    # Aligned by seed like the arms' lists (a seed no arm finished, or a reference only some arms give, is empty).
    references: Runs = {
        label: [by_seed.get(seed, {}) for seed in seeds] for label, by_seed in references_by_seed.items()
    }
    diagnostics = []
    diagnosed = next((arm for arm in arms if arm.name == DIAGNOSED_ARM), None)
    if diagnosed is not None:
        for seed in seeds:
            if not args.finished_only or (run_dir(diagnosed, seed, out) / "metrics.json").exists():
                diagnostics.append(diagnose(diagnosed, seed, base, out))
    selection = {
        arm.name: [
            last_step_scores(arm, seed, base, out)
            for seed in seeds
            if (run_dir(arm, seed, out) / "checkpoints" / "last.pt").exists()
            and (run_dir(arm, seed, out) / "metrics.json").exists()
        ]
        for arm in arms
    }
    tissues = {
        arm.name: [
            tissue_errors_of(arm, seed, base, out) if (run_dir(arm, seed, out) / "metrics.json").exists() else None
            for seed in seeds
        ]
        for arm in arms
    }
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    note = " ".join(argv if argv is not None else sys.argv[1:])
    write_report(
        report,
        results,
        seeds,
        base,
        time.perf_counter() - started,
        note,
        trained,
        reused,
        diagnostics,
        references,
        selection,
        [floor.get(seed) for seed in seeds],
        {arm.name: arm.versus for arm in arms if arm.versus},
        tissues,
    )
    plot(report.with_suffix(".png"), results)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
