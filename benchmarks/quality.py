"""Quality study: does DS3-Net do what the paper says, on the phantom cohort (or real BraTS with --data)?

    python benchmarks/quality.py                       # default: fits in about 90 minutes on 2 CPU cores
    python benchmarks/quality.py --smoke               # CI: one seed, a few steps, tiny networks
    python benchmarks/quality.py --data /data/BraTS2020 --preset large --steps 20000 --device cuda

Trains, per seed: paired-only at 5 %, DS3-Net at 5 %, pix2pix at 100 %, CUT at 0 %, and DS3-Net at 5 % without
each of its parts (difficulty map, feature distillation, image distillation), DS3-Net at the paper's loss weights
(adversarial and PatchNCE at 1, off in the recipes' defaults), and two probes not in
the paper: DS3-Net whose student copies a teacher warmed up for 70 % of the steps, and DS3-Net whose student also
learns L_pid on the paired batches. Every run evaluates
its shipped model on the same held-out subjects (the split depends on the seed only). Writes
``docs/results/quality.md`` (mean ± std over seeds, whole brain and tumour region, the paper's table beside it, and
what the numbers say about each claim, and DS3-Net's teacher and student on the subjects each trained on) and
``docs/results/quality.png``.

A run whose ``metrics.json`` exists is reused, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _recipes import load_recipe  # a sibling module: the script's folder is on sys.path
from scipy import stats

from ds3kit.baselines import CEILING_NOISE_FREE, CEILING_PAIRED_LEVELS, CEILING_TISSUE, COPY_T1, LINEAR
from ds3kit.train import SMOKE_OVERRIDES, RunConfig, Trainer
from ds3kit.utils.atomic import atomic_path, atomic_write_text

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Arm:
    """One row of the study: a recipe at a paired fraction with method options."""

    name: str
    recipe: str
    paired_fraction: float
    options: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)  # RunConfig fields, e.g. the unpaired pool's data setting


ARMS = (
    Arm("paired-only 5%", "paired_only", 0.05),
    Arm("DS3-Net 5%", "ds3net", 0.05),
    Arm("pix2pix 100%", "pix2pix", 1.0),
    Arm("CUT 0%", "cut", 0.0),
    Arm("DS3-Net 5% - difficulty map", "ds3net", 0.05, {"use_difficulty": False}),
    # PatchNCE and the adversarial term are off in the recipes' defaults (docs/method.md); this arm puts them back
    # at the paper's weights, the figure-faithful method.
    Arm("DS3-Net 5% (paper's loss weights)", "ds3net", 0.05, {"lambda_adv": 1.0, "use_nce": True}),
    Arm("DS3-Net 5% - feature distillation", "ds3net", 0.05, {"use_feature_distillation": False}),
    Arm("DS3-Net 5% - image distillation", "ds3net", 0.05, {"use_image_distillation": False}),
    # Not in the paper: the student copies a teacher trained for 70 % of the steps (default 30 %), a probe of whether
    # the student's own training on unpaired data adds to what it copies or takes away from it.
    Arm("DS3-Net 5% (teacher warm-up 70%)", "ds3net", 0.05, {"teacher_warmup_fraction": 0.7}),
    # Not in the paper: the student also gets L_pid on the paired batches (`student_pixel`), the one probe whose
    # single seed came closest to the teacher: its own source of T1ce beyond what the teacher tells it.
    Arm("DS3-Net 5% (student also on paired)", "ds3net", 0.05, {"student_pixel": True}),
    # Ours, for the semi-supervision issue (docs/method.md): pseudo-targets from a moving average of the teacher, the
    # student also on the paired subjects; and the data setting where other unpaired subjects lend real T1ce to D^S.
    Arm("DS3-Net 5% (EMA teacher, student also on paired)", "ds3net", 0.05,
        {"teacher_ema": 0.99, "student_pixel": True}),
    Arm("DS3-Net 5% (unpaired T1ce of other subjects)", "ds3net", 0.05, run={"unpaired_t1ce": "other-subjects"}),
)

NOISE_FLOOR_DB = 0.1  # differences below this are not reported as better or worse, whatever the test says
METRICS = ("brain_ssim", "brain_psnr", "brain_mse", "tumour_ssim", "tumour_psnr", "tumour_mse")

PAPER = """| paired | method | SSIM | PSNR | MSE |
|---|---|---|---|---|
| 0 % | CUT | 0.7982 | 17.63 | 0.020 |
| 5 % | DS3-Net (paired only) | 0.8691 | 21.97 | 0.008 |
| 5 % | DS3-Net | 0.8947 | 23.60 | 0.009 |
| 100 % | pix2pix | 0.9007 | 25.02 | 0.004 |
| 100 % | DS3-Net | 0.8959 | 24.26 | 0.005 |"""


def run_arm(arm: Arm, seed: int, base: RunConfig, out: Path) -> dict[str, float]:
    """Train one arm at one seed (or reuse a finished run) and return its shipped model's held-out means."""
    return run_report(arm, seed, base, out)["models"]["__shipped__"]


def run_report(arm: Arm, seed: int, base: RunConfig, out: Path) -> dict[str, Any]:
    """Train one arm at one seed (or reuse a finished run); its ``metrics.json`` with the shipped model's means under
    ``report["models"]["__shipped__"]``."""
    run_dir = out / _run_name(arm, seed)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.exists():
        # Each arm starts from its recipe's own defaults (learning rate, method options), then the arm's changes.
        defaults = getattr(load_recipe(arm.recipe), "DEFAULTS", base)
        config = dataclasses.replace(
            base, **arm.run, out=str(run_dir), seed=seed, paired_fraction=arm.paired_fraction, lr=defaults.lr,
            method_options={**defaults.method_options, **arm.options},
            resume=(run_dir / "checkpoints" / "last.pt").exists(),
        )
        Trainer(config, load_recipe(arm.recipe).build, name=arm.recipe).fit()
    report = json.loads(metrics_file.read_text())
    asked = {"steps": base.steps, "paired_fraction": arm.paired_fraction, "seed": seed}
    found = {key: report.get(key) for key in asked}
    if found != asked:
        raise SystemExit(
            f"{run_dir} holds a finished run with {found}, this study asks for {asked}: "
            "pass another --out (finished runs are reused only when they match)"
        )
    report["models"]["__shipped__"] = report["models"][report["shipped"]]["mean"]
    return report


def reference_rows(report: dict[str, Any], paired_fraction: float) -> dict[str, dict[str, float]]:
    """The baselines and ceilings of one run's report, as study rows: those that depend on the paired subjects
    (``linear``, the paired-levels ceiling) are labelled with the paired fraction, the others are not."""
    rows = {}
    order = (COPY_T1, LINEAR, CEILING_PAIRED_LEVELS, CEILING_TISSUE, CEILING_NOISE_FREE)
    baselines = report.get("baselines", {})
    for name, result in sorted(baselines.items(), key=lambda item: order.index(item[0]) if item[0] in order else 99):
        depends_on_paired = name in (LINEAR, CEILING_PAIRED_LEVELS)
        label = f"{name} ({paired_fraction:.0%} paired)" if depends_on_paired else name
        rows[label] = result["mean"]
    return rows


def flag_losers(table: dict[str, dict[str, tuple[float, float]]], trained: set[str]) -> dict[str, str]:
    """Arm -> its row label: trained arms whose mean brain PSNR does not beat copy-T1's are marked."""
    floor = table.get(COPY_T1, {}).get("brain_psnr", (None,))[0]
    labels = {}
    for arm, values in table.items():
        loses = floor is not None and arm in trained and values.get("brain_psnr", (math.inf,))[0] <= floor
        labels[arm] = f"{arm} **(loses to copy-T1)**" if loses else arm
    return labels


DIAGNOSED_ARM = "DS3-Net 5%"
DIAGNOSTIC_SUBSETS = ("train_paired", "train_unpaired", "test")


def diagnose(arm: Arm, seed: int, base: RunConfig, out: Path, *, max_subjects: int = 4) -> dict[str, dict[str, float]]:
    """Where a DS3-Net run's error comes from: its teacher and student on the subjects each one trained on.

    Evaluates ``teacher.pt`` and ``student.pt`` of the run on its paired training subjects, on (up to
    ``max_subjects`` of) its unpaired training subjects and on all its test subjects (the main table's); the result
    is cached in the run directory. Returns ``{"<model>/<subset>": held-out-style mean metrics}``.
    """
    from ds3kit.data import default_cohort, load_brats_case
    from ds3kit.evaluation import evaluate_generator
    from ds3kit.inference import load_generator

    run_dir = out / _run_name(arm, seed)
    cache = run_dir / "diagnostics.json"
    if cache.exists():
        return json.loads(cache.read_text())
    split = json.loads((run_dir / "metrics.json").read_text())["split"]
    root = Path(base.data) if base.data else default_cohort(cases=base.phantom_cases, shape=base.phantom_shape)
    # Every paired and every test subject (the test row is then the main table's own); at most max_subjects of
    # the unpaired ones.
    limits = {"train_paired": None, "train_unpaired": max_subjects, "test": None}
    sessions = {name: [load_brats_case(root / case) for case in split[name][: limits[name]]] for name in DIAGNOSTIC_SUBSETS}
    device = base.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = {}
    for model in ("teacher", "student"):
        generator, _ = load_generator(run_dir / "checkpoints" / f"{model}.pt", device=device)
        for name, subset in sessions.items():
            if subset:
                result[f"{model}/{name}"] = evaluate_generator(generator, subset, device=device).mean
    atomic_write_text(cache, json.dumps(result, indent=2))
    return result


def diagnostics_table(diagnostics: list[dict[str, dict[str, float]]]) -> str:
    """Markdown: brain and tumour PSNR of teacher and student per subset, mean ± std over seeds."""
    lines = ["| model | subjects | brain_psnr | tumour_psnr | brain_ssim |", "|---|---|---|---|---|"]
    for key in diagnostics[0] if diagnostics else []:
        model, subset = key.split("/")
        cells = []
        for metric in ("brain_psnr", "tumour_psnr", "brain_ssim"):
            values = [d[key][metric] for d in diagnostics if key in d and metric in d[key]]
            digits = 4 if metric.endswith("ssim") else 2
            cells.append(f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}" if values else "n/a")
        lines.append(f"| {model} | {subset.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


Runs = dict[str, list[dict[str, float]]]  # arm -> its runs' held-out means, one per seed, in seed order


def summarise(results: Runs) -> dict[str, dict[str, tuple[float, float]]]:
    table = {}
    for arm, runs in results.items():
        table[arm] = {}
        for metric in METRICS:
            values = [run[metric] for run in runs if metric in run]
            if values:
                table[arm][metric] = (float(np.mean(values)), float(np.std(values)))
    return table


@dataclass(frozen=True)
class Difference:
    """``a - b`` in one metric, paired by seed: each seed is one subject split, shared by every arm.

    With several seeds: the mean and standard deviation of the per-seed differences and a paired t-test's p; it
    counts (``verdict`` "better" / "worse") when p < 0.05 and it exceeds the noise floor. A one-seed study has no
    spread: it counts when it exceeds the floor. A metric measured at fewer seeds than the study ran is shown with
    its count, and at one seed of several it gets no verdict.
    """

    deltas: tuple[float, ...]
    seeds: int  # how many seeds the study ran; ``deltas`` holds the ones where both arms measured the metric

    @property
    def mean(self) -> float:
        return float(np.mean(self.deltas)) if self.deltas else float("nan")

    @property
    def spread(self) -> float:
        return float(np.std(self.deltas, ddof=1)) if len(self.deltas) > 1 else float("nan")

    @property
    def p(self) -> float:
        if len(self.deltas) < 2:
            return float("nan")
        if self.spread == 0.0:  # identical differences: the t statistic is infinite (or undefined at 0)
            return 0.0 if self.mean != 0.0 else 1.0
        return float(stats.ttest_1samp(self.deltas, 0.0).pvalue)

    @property
    def verdict(self) -> str:
        if not self.deltas:
            return "not measured"
        if len(self.deltas) == 1 and self.seeds > 1:
            return "one seed only"
        significant = len(self.deltas) == 1 or self.p < 0.05
        if significant and abs(self.mean) > NOISE_FLOOR_DB:
            return "better" if self.mean > 0 else "worse"
        return "within noise"

    def __str__(self) -> str:
        if not self.deltas:
            return "not measured"
        count = f", {len(self.deltas)} of {self.seeds} seeds" if len(self.deltas) < self.seeds else ""
        if len(self.deltas) == 1:
            return f"{self.mean:+.2f} dB ({self.verdict}{count})"
        return f"{self.mean:+.2f} ± {self.spread:.2f} dB, p = {self.p:.3f} ({self.verdict}{count})"


def difference(a: list[dict[str, float]], b: list[dict[str, float]], metric: str) -> Difference:
    """Arm ``a`` minus arm ``b`` in ``metric``, seed by seed (both lists in seed order, one run per seed).

    Raises:
        ValueError: the arms hold different numbers of runs (they could not be paired by seed).
    """
    if len(a) != len(b):
        raise ValueError(f"cannot pair arms by seed: {len(a)} runs against {len(b)}")
    deltas = (x[metric] - y[metric] for x, y in zip(a, b) if metric in x and metric in y)
    return Difference(tuple(float(d) for d in deltas if math.isfinite(d)), seeds=len(a))


def claims(results: Runs) -> list[str]:
    """What the numbers say about each of the paper's claims (computed, not asserted), from the per-seed runs."""
    ds3, paired, pix = "DS3-Net 5%", "paired-only 5%", "pix2pix 100%"
    table = summarise(results)

    def mean(arm: str, metric: str) -> float:
        return table[arm].get(metric, (float("nan"), 0.0))[0]

    def psnr(a: str, b: str, region: str = "brain") -> Difference:
        return difference(results[a], results[b], f"{region}_psnr")

    lines = []
    if {ds3, paired} <= set(results):
        brain = psnr(ds3, paired)
        d_ssim = mean(ds3, "brain_ssim") - mean(paired, "brain_ssim")
        holds = d_ssim > 0 and brain.verdict == "better"
        lines.append(f"1. DS3-Net at 5 % vs paired-only at 5 % (brain): SSIM {d_ssim:+.4f}, PSNR {brain}: "
                     f"the claim {'holds' if holds else 'is not reproduced'} here.")
        lines.append(f"2. Tumour region: SSIM {mean(ds3, 'tumour_ssim') - mean(paired, 'tumour_ssim'):+.4f}, "
                     f"PSNR {psnr(ds3, paired, 'tumour')}, against {brain.mean:+.2f} dB in the brain.")
    if {ds3, paired, pix} <= set(results):
        gap = mean(pix, "brain_psnr") - mean(paired, "brain_psnr")
        closed = (mean(ds3, "brain_psnr") - mean(paired, "brain_psnr")) / gap if abs(gap) > 1e-9 else float("nan")
        lines.append(f"3. pix2pix at 100 % against DS3-Net at 5 %: brain PSNR {psnr(pix, ds3)}; paired-only to "
                     f"pix2pix spans {gap:+.2f} dB, of which DS3-Net covers {100 * closed:.0f} %.")
    for arm in results:
        if arm.startswith("DS3-Net 5% - ") and ds3 in results:
            lines.append(f"4. Removing the {arm.removeprefix('DS3-Net 5% - ')}: brain PSNR {psnr(arm, ds3)}; "
                         f"tumour PSNR {psnr(arm, ds3, 'tumour')}.")
        elif arm.startswith("DS3-Net 5% (") and {ds3, paired} <= set(results):
            lines.append(f"5. {arm}: brain PSNR {psnr(arm, ds3)} against DS3-Net 5 %; {psnr(arm, paired)} against "
                         f"paired-only.")
    if not lines:
        return []
    seeds = max(len(runs) for runs in results.values())
    if seeds > 1:
        preamble = (f"Differences are paired by seed (each seed is one subject split): mean ± std of the {seeds} "
                    f"per-seed differences, p from a paired t-test (not corrected for the number of comparisons "
                    f"on this page). One counts as better or worse when p < 0.05 and it exceeds {NOISE_FLOOR_DB} dB.")
    else:
        preamble = (f"One seed: no spread was measured; a difference counts as better or worse when it exceeds "
                    f"{NOISE_FLOOR_DB} dB.")
    return [preamble, "", *lines]


def write_report(
    path: Path, results: Runs, seeds, base: RunConfig, wall: float, note: str, trained: int, reused: int,
    diagnostics=None, references: Runs | None = None,
) -> None:
    table = summarise({**results, **(references or {})})
    labels = flag_losers(table, set(results))
    if trained:
        cost = f"wall time {wall / 60:.1f} min for {trained} run(s) trained by this invocation ({reused} reused)"
    else:
        cost = f"all {reused} runs reused from earlier invocations (this page was regenerated from them)"
    header = "| arm | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS)
    rows = []
    for arm, values in table.items():
        cells = [
            ("n/a" if m not in values else f"{values[m][0]:.4f}" + (f" ± {values[m][1]:.4f}" if len(seeds) > 1 else ""))
            for m in METRICS
        ]
        rows.append(f"| {labels[arm]} | " + " | ".join(cells) + " |")
        if references and arm == list(results)[-1]:
            rows.append("| *references (no training)* |" + " |" * len(METRICS))
    text = f"""# Quality study

`python benchmarks/quality.py {note}` — {time.strftime('%Y-%m-%d')}, {len(seeds)} seed(s) ({', '.join(map(str, seeds))}),
{base.steps} steps per run, batch {base.batch_size}, preset `{base.preset}`, image size {base.image_size},
data: {base.data or f'phantom cohort ({base.phantom_cases} cases, {base.phantom_shape})'}; {cost}.
Held-out subjects, whole 3-D volumes; each run's mean over its test subjects, then mean ± population std over seeds. Shipped models:
DS3-Net's student, the paired-only teacher, pix2pix's and CUT's generator. Below them, on the same subjects, the
references of docs/baselines.md: copy-T1 (the floor), the linear fit on the paired subjects, and the phantom's
ceilings; a trained arm that does not beat copy-T1 is marked.

{header}
{chr(10).join(rows)}

![quality]({path.with_suffix('.png').name})

## What the numbers say

{chr(10).join(claims(results))}

## Where the student's error comes from

DS3-Net 5 %'s two generators, each evaluated on the subjects it trained on (the teacher: the paired ones; the
student: up to 4 of the unpaired ones, whose T1ce it never saw) and on the test subjects; mean ± std over seeds.
A teacher far better on its paired subjects than on the test ones has overfitted, which is the room unpaired data
has to help; a student below the teacher on its own unpaired subjects is not yet reproducing its target there.

{diagnostics_table(diagnostics) if diagnostics else "(not run: no DS3-Net 5% arm in this study)"}

## The paper (BraTS2020, whole image)

{PAPER}

The phantom is not BraTS: absolute values are not comparable, the ordering and the gaps are what to compare.
"""
    atomic_write_text(path, text)


def plot(path: Path, results: Runs) -> None:
    """Brain and tumour PSNR per arm (mean ± std over seeds), and each arm's brain PSNR against DS3-Net 5 % paired
    by seed (per-seed differences as dots, their mean with a 95 % t interval) when there are several seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarise(results)
    arms = list(table)
    reference = "DS3-Net 5%"
    paired = reference in results and max(len(runs) for runs in results.values()) > 1
    figure, axes = plt.subplots(1, 3 if paired else 2, figsize=(18 if paired else 12, 0.45 * len(arms) + 1.5),
                                sharey=True)
    for axis, metric in zip(axes, ("brain_psnr", "tumour_psnr")):
        means = [table[a].get(metric, (np.nan, 0))[0] for a in arms]
        stds = [table[a].get(metric, (np.nan, 0))[1] for a in arms]
        axis.barh(arms, means, xerr=stds, color=["#4c72b0" if "DS3" in a else "#999999" for a in arms])
        axis.set_xlabel(f"{metric.replace('_', ' ')} (dB), mean ± std over seeds")
        finite = [m for m in means if np.isfinite(m)]
        if finite:
            axis.set_xlim(min(finite) - 2, max(finite) + 1)
    if paired:
        axis, limit = axes[2], 1.5  # dB: the small effects are the ones to see; larger ones are written at the edge
        for row, arm in enumerate(arms):
            if arm == reference:
                continue
            d = difference(results[arm], results[reference], "brain_psnr")
            if abs(d.mean) > limit:
                side = np.sign(d.mean) * limit
                axis.text(side * 0.98, row, f"{d.mean:+.2f} dB", va="center", ha="right" if side > 0 else "left")
                continue
            axis.scatter(d.deltas, [row] * len(d.deltas), s=12, color="#999999", zorder=2)
            if len(d.deltas) > 1:
                half = stats.t.ppf(0.975, len(d.deltas) - 1) * d.spread / np.sqrt(len(d.deltas))
                color = {"better": "#2ca02c", "worse": "#d62728"}.get(d.verdict, "#4c72b0")
                axis.errorbar(d.mean, row, xerr=half, fmt="o", color=color, capsize=3, zorder=3)
        axis.axvline(0.0, color="black", linewidth=0.8)
        axis.set_xlim(-limit, limit)
        axis.set_xlabel(f"brain PSNR minus {reference}, per seed (dB)\ndots: seeds; mean and 95 % interval")
    axes[0].invert_yaxis()
    figure.suptitle("Held-out phantom subjects")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=None, help="run directories (default: runs/quality, runs/quality-smoke)")
    parser.add_argument("--report", default=str(REPO / "docs" / "results" / "quality.md"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default=None)
    parser.add_argument("--arms", nargs="+", default=None, help="a subset of the arms, by name")
    parser.add_argument("--smoke", action="store_true", help="CI: one seed, tiny networks, a few steps")
    args = parser.parse_args(argv)

    base = RunConfig(data=args.data, steps=args.steps, batch_size=args.batch_size, image_size=args.image_size,
                     preset=args.preset, device=args.device, progress=False)
    seeds = args.seeds
    if args.smoke:
        base = dataclasses.replace(base, **{**SMOKE_OVERRIDES, "val_every": 10**9, "checkpoint_every": 10**9})
        seeds = seeds[:1]
    arms = [arm for arm in ARMS if args.arms is None or arm.name in args.arms]
    out = Path(args.out or ("runs/quality-smoke" if args.smoke else "runs/quality"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: Runs = {arm.name: [] for arm in arms}
    references: Runs = {}
    trained = reused = 0
    for seed in seeds:
        seen: set[str] = set()
        for arm in arms:
            t0 = time.perf_counter()
            cached = (out / _run_name(arm, seed) / "metrics.json").exists()
            reused += cached
            trained += not cached
            report_of_run = run_report(arm, seed, base, out)
            results[arm.name].append(report_of_run["models"]["__shipped__"])
            # One row per reference and seed: the test subjects depend on the seed only, the linear fit on the
            # paired fraction too.
            for label, means in reference_rows(report_of_run, arm.paired_fraction).items():
                if label not in seen:
                    seen.add(label)
                    references.setdefault(label, []).append(means)
            brain = results[arm.name][-1].get("brain_psnr", float("nan"))
            print(f"[{time.perf_counter() - started:7.0f} s] seed {seed} {arm.name:<36} brain PSNR {brain:6.2f} dB "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    diagnostics = []
    diagnosed = next((arm for arm in arms if arm.name == DIAGNOSED_ARM), None)
    if diagnosed is not None:
        for seed in seeds:
            diagnostics.append(diagnose(diagnosed, seed, base, out))
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    note = " ".join(argv if argv is not None else sys.argv[1:])
    write_report(report, results, seeds, base, time.perf_counter() - started, note, trained, reused, diagnostics,
                 references)
    plot(report.with_suffix(".png"), results)
    print(report.read_text())
    return 0


def _run_name(arm: Arm, seed: int) -> str:
    return f"{arm.recipe}-{_slug(arm.name)}-seed{seed}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


if __name__ == "__main__":
    raise SystemExit(main())
