"""The quality study's page and figure: docs/results/quality.md and quality.png."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from _quality_stats import DICE_METRICS, METRICS, Runs, claims, difference, flag_losers, reference_label, summarise
from scipy import stats

from ds3kit.baselines import CEILING_PAIRED_LEVELS, CEILING_POPULATION_LEVELS, COPY_T1
from ds3kit.train import RunConfig
from ds3kit.utils.atomic import atomic_path, atomic_write_text

PAPER = """| paired | method | SSIM | PSNR | MSE |
|---|---|---|---|---|
| 0 % | CUT | 0.7982 | 17.63 | 0.020 |
| 5 % | DS3-Net (paired only) | 0.8691 | 21.97 | 0.008 |
| 5 % | DS3-Net | 0.8947 | 23.60 | 0.009 |
| 100 % | pix2pix | 0.9007 | 25.02 | 0.004 |
| 100 % | DS3-Net | 0.8959 | 24.26 | 0.005 |"""

# The paper's segmentation rows: Dice (%) of a segmenter run with the synthesized T1ce.
PAPER_DICE = """| paired | method | ET Dice | TC Dice |
|---|---|---|---|
| 5 % | DS3-Net (paired only) | 39.5 | 63.7 |
| 5 % | DS3-Net | 43.3 | 66.0 |
| 100 % | pix2pix | 41.7 | 65.0 |"""


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


def selection_table(selection: dict[str, list[dict[str, dict[str, Any]]]]) -> str:
    """Markdown: per arm and generator, test PSNR at the shipped (best-validation) step and at the last step, both
    before the intensity calibration, and their difference paired by seed (mean ± std over the seeds the arm
    finished)."""
    lines = [
        "| arm | model | seeds | shipped step (median) | shipped: brain / tumour PSNR | last step: brain / tumour PSNR "
        "| shipped - last: brain / tumour |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(values: list[float], sign: str = "") -> str:
        mean = float(np.mean(values))
        mean = 0.0 if round(mean, 2) == 0 else mean  # a difference that rounds to zero prints +0.00, not -0.00
        return f"{mean:{sign}.2f} ± {np.std(values):.2f}"

    for arm, runs in selection.items():
        for role in dict.fromkeys(role for run in runs for role in run):
            found = [run[role] for run in runs if role in run]
            steps = [entry["selected_step"] for entry in found if entry["selected_step"] is not None]
            metric = {
                (which, region): [entry[which][f"{region}_psnr"] for entry in found]
                for which in ("selected", "last")
                for region in ("brain", "tumour")
            }
            gain = {
                region: [a - b for a, b in zip(metric["selected", region], metric["last", region])]
                for region in ("brain", "tumour")
            }
            lines.append(
                f"| {arm} | {role} | {len(found)} | {np.median(steps):.0f} | "
                f"{cell(metric['selected', 'brain'])} / {cell(metric['selected', 'tumour'])} | "
                f"{cell(metric['last', 'brain'])} / {cell(metric['last', 'tumour'])} | "
                f"{cell(gain['brain'], '+')} / {cell(gain['tumour'], '+')} |"
            )
    return "\n".join(lines)


# The semi-supervision issue's bar: DS3-Net at 5 % beats paired-only at 5 % by this much brain PSNR.
TARGET_DB = 0.5


def room_table(results: Runs, references: Runs, seeds, target: float = TARGET_DB) -> str:
    """Markdown: per seed, where paired-only + ``target`` dB lies against what is known to be reachable.

    Beside paired-only, DS3-Net and pix2pix at 100 % (which trained on every subject's T1ce): the phantom's
    tissue-map ceilings at the paired subjects' and at the population's levels, and the target's distance to
    pix2pix and to the population-levels ceiling. A seed where the target lies above pix2pix asks the student to beat
    full supervision there. Every list is aligned by seed; seeds where an arm or a reference is missing are left out.
    """
    ds3, paired, pix = "DS3-Net 5%", "paired-only 5%", "pix2pix 100%"
    if not {ds3, paired, pix} <= set(results):
        return "(needs the DS3-Net 5%, paired-only 5% and pix2pix 100% arms)"
    columns = {
        "copy-T1": references.get(COPY_T1, []),
        paired: results[paired],
        ds3: results[ds3],
        pix: results[pix],
        "paired": references.get(reference_label(CEILING_PAIRED_LEVELS, 0.05), []),
        "population": references.get(CEILING_POPULATION_LEVELS, []),
    }
    lines = [
        f"| seed | copy-T1 | paired-only | DS3-Net | pix2pix 100 % | ceiling: paired / population levels "
        f"| target: paired-only + {target} | target - pix2pix | target - population ceiling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    above_pix = above_ceiling = counted = 0
    for i, seed in enumerate(seeds):
        value = {name: runs[i].get("brain_psnr") if i < len(runs) else None for name, runs in columns.items()}
        if any(v is None for v in value.values()):
            continue
        counted += 1
        goal = value[paired] + target
        above_pix += goal > value[pix]
        above_ceiling += goal > value["population"]
        lines.append(
            f"| {seed} | {value['copy-T1']:.2f} | {value[paired]:.2f} | {value[ds3]:.2f} | {value[pix]:.2f} | "
            f"{value['paired']:.2f} / {value['population']:.2f} | {goal:.2f} | {goal - value[pix]:+.2f} | "
            f"{goal - value['population']:+.2f} |"
        )
    if not counted:
        return "(no seed where all three arms and the phantom's ceilings were measured)"
    lines.append("")
    lines.append(
        f"At {above_pix} of {counted} seeds the target lies above pix2pix at 100 %, and at {above_ceiling} above the "
        "tissue-map ceiling at the population's levels: there the student would have to beat full supervision, or "
        "a predictor that knows the anatomy and every training subject's T1ce levels."
    )
    return "\n".join(lines)


def tissue_table(tissues: dict[str, list[dict[str, dict[str, list[float]]] | None]], seeds) -> str:
    """Markdown: each arm's brain MSE split by the phantom's tissue, pooled over its seeds' test subjects, beside the
    references (:data:`_quality_runs.TISSUE_REFERENCES`) pooled over every seed some arm gave.

    ``tissues[arm][i]`` is :func:`_quality_runs.tissue_errors_of` at ``seeds[i]`` (None: not measured). A cell is the
    tissue's MSE x 1e3 and, in brackets, its share of that row's brain squared error; the header gives each tissue's
    share of the brain's voxels. Returns an explanation instead when no arm was measured (data without phantom truth).
    """
    references: dict[str, dict[int, dict[str, list[float]]]] = {}
    rows: dict[str, list[dict[str, list[float]]]] = {}
    for arm, per_seed in tissues.items():
        measured = [(seed, result) for seed, result in zip(seeds, per_seed) if result]
        if measured:
            rows[arm] = [result["model"] for _, result in measured]
        for seed, result in measured:
            for name, totals in result.items():
                if name != "model":
                    references.setdefault(name, {}).setdefault(seed, totals)
    if not rows:
        return "(not measured: the data has no phantom truth, or no run saved its test predictions)"

    def pooled(results: list[dict[str, list[float]]]) -> dict[str, tuple[float, int]]:
        return {name: (sum(r[name][0] for r in results), sum(r[name][1] for r in results)) for name in results[0]}

    table = {
        **{
            arm + (f" ({len(measured)} of {len(seeds)} seeds)" if len(measured) < len(seeds) else ""): pooled(measured)
            for arm, measured in rows.items()
        },
        **{name: pooled(list(by_seed.values())) for name, by_seed in references.items()},
    }
    first = next(iter(table.values()))
    brain_voxels = sum(count for _, count in first.values())
    names = [name for name, (_, count) in first.items() if count > 0]
    header = (
        "| model | "
        + " | ".join(f"{name.replace('_', ' ')} ({100 * first[name][1] / brain_voxels:.1f} %)" for name in names)
        + " | brain: MSE x 1e3 / PSNR |"
    )
    lines = [header, "|---|" + "---|" * (len(names) + 1)]
    for label, totals in table.items():
        total_error = sum(error for error, _ in totals.values())
        total_count = sum(count for _, count in totals.values())
        cells = [
            f"{1e3 * totals[name][0] / totals[name][1]:.2f} ({100 * totals[name][0] / total_error:.0f} %)"
            if totals[name][1]
            else "n/a"
            for name in names
        ]
        mse = total_error / total_count
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {1e3 * mse:.3f} / {10 * np.log10(1 / mse):.2f} dB |")
    return "\n".join(lines)


def write_report(
    path: Path,
    results: Runs,
    seeds,
    base: RunConfig,
    wall: float,
    note: str,
    trained: int,
    reused: int,
    diagnostics=None,
    references: Runs | None = None,
    selection: dict[str, list[dict[str, dict[str, Any]]]] | None = None,
    floor: list[float | None] | None = None,
    versus: dict[str, tuple[str, ...]] | None = None,
    tissues: dict[str, list[dict[str, dict[str, list[float]]] | None]] | None = None,
) -> None:
    table = summarise({**results, **(references or {})})
    labels = flag_losers(table, results, floor or [])
    if trained:
        cost = f"wall time {wall / 60:.1f} min for {trained} run(s) trained by this invocation ({reused} reused)"
    else:
        cost = f"all {reused} runs reused from earlier invocations (this page was regenerated from them)"
    # The Dice columns appear when a segmenter scored the runs.
    columns = METRICS + tuple(m for m in DICE_METRICS if any(m in values for values in table.values()))
    header = "| arm | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns)
    rows = []
    for arm, values in table.items():
        cells = [
            ("n/a" if m not in values else f"{values[m][0]:.4f}" + (f" ± {values[m][1]:.4f}" if len(seeds) > 1 else ""))
            for m in columns
        ]
        measured = sum(1 for run in results.get(arm, []) if "brain_psnr" in run)
        count = f" ({measured} of {len(seeds)} seeds)" if arm in results and 0 < measured < len(seeds) else ""
        rows.append(f"| {labels[arm]}{count} | " + " | ".join(cells) + " |")
        if references and arm == list(results)[-1]:
            rows.append("| *references (no training)* |" + " |" * len(columns))
    text = f"""# Quality study

`python benchmarks/quality.py {note}` — {time.strftime("%Y-%m-%d")}, {len(seeds)} seed(s) ({", ".join(map(str, seeds))}),
{base.steps} steps per run, batch {base.batch_size}, preset `{base.preset}`, image size {base.image_size},
data: {base.data or f"phantom cohort ({base.phantom_cases} cases, {base.phantom_shape})"}; {cost}.
Held-out subjects, whole 3-D volumes, test-time flips `{base.test_flips}` (docs/training.md); each run's mean over its test subjects, then mean ± population std over seeds. Shipped models:
DS3-Net's student, the paired-only teacher, pix2pix's and CUT's generator. Below them, on the same subjects, the
references of docs/baselines.md: copy-T1 (the floor), the linear fit on the paired subjects, and the phantom's
ceilings; a trained arm that does not beat copy-T1 is marked. Dice (ET, TC, WT; docs/metrics.md) is that of a
segmenter trained per seed on the seed's training subjects (`recipes/segmenter.py`), run with each synthesis in place
of the real T1ce; `real T1ce (segmenter)` is its ceiling, copy-T1 its floor, and `no T1ce (segmenter on T1, T2,
FLAIR)` is what the same network, trained with the T1 in the T1ce's channel, finds without any T1ce: a synthesis
below it has added nothing to its inputs.

{header}
{chr(10).join(rows)}

![quality]({path.with_suffix(".png").name})

## What the numbers say

{chr(10).join(claims(results, versus))}

## Where the student's error comes from

DS3-Net 5 %'s two generators, each evaluated on the subjects it trained on (the teacher: the paired ones; the
student: up to 4 of the unpaired ones, whose T1ce it never saw) and on the test subjects; mean ± std over seeds.
A teacher far better on its paired subjects than on the test ones has overfitted, which is the room unpaired data
has to help; a student below the teacher on its own unpaired subjects is not yet reproducing its target there.

{diagnostics_table(diagnostics) if diagnostics else "(not run: no DS3-Net 5% arm in this study)"}

## What the step selection chose

Every run validates every 100 steps on its validation subjects (brain PSNR) and ships the best step's weights
(`--select best-val`). Here each generator at that step and at the run's last step (what `--select last` would have
shipped), on the test subjects, both before the intensity calibration that is fitted afterwards (so the
difference is the step's alone); the last column, paired by seed, is what the selection gained. With a few
validation subjects the choice is itself noisy: a gain near zero, or one of either sign across seeds, says so.

{selection_table(selection) if selection else "(no finished runs)"}

## The room for the semi-supervision target

Brain PSNR (dB) per seed, the test subjects of each split. The semi-supervision issue asks DS3-Net at 5 % for
paired-only at 5 % + {TARGET_DB} dB; beside that target, what full supervision reached (pix2pix at 100 %) and the phantom's
tissue-map ceilings (docs/baselines.md).

{room_table(results, references or {}, seeds)}

## Where the brain error lies, by tissue

The phantom's true tissue map (`phantom_truth/tissue`) splits each model's squared error on the test subjects;
pooled over the subjects of every seed, so the last column is the pooled brain MSE (the tables above average
PSNR per subject instead). Each cell: the tissue's MSE x 1e3 (its share of the row's brain error). Beside the arms:
copy-T1, the tissue map at the population's levels, and an oracle that paints each test subject's own mean T1ce
per tissue. The oracle looks at the test subject's T1ce: what it leaves inside a tissue is mostly the T1ce's own bias
field, texture and noise, which no input carries; at the tissues' partial-volume edges, where a hard map is wrong, a
network can do better than it.

{tissue_table(tissues, seeds) if tissues else "(not measured)"}

## The paper (BraTS2020, whole image)

{PAPER}

{PAPER_DICE}

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
    figure, axes = plt.subplots(
        1, 3 if paired else 2, figsize=(18 if paired else 12, 0.45 * len(arms) + 1.5), sharey=True
    )
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
