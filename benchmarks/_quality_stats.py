"""The quality study's statistics: per-arm summaries, paired differences by seed, and what they say of each claim."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

NOISE_FLOOR_DB = 0.1  # differences below this are not reported as better or worse, whatever the test says
METRICS = ("brain_ssim", "brain_psnr", "brain_mse", "tumour_ssim", "tumour_psnr", "tumour_mse")
DICE_METRICS = ("dice_et", "dice_tc", "dice_wt")  # a segmenter run on the synthesis (docs/metrics.md)

Runs = dict[str, list[dict[str, float]]]  # arm -> its runs' held-out means, one per seed, in seed order


def reference_label(name: str, paired_fraction: float | None = None) -> str:
    """A reference's row label: one that depends on the paired subjects (the linear fit, the paired-levels ceiling)
    carries the paired fraction, ``"linear (5% paired)"``; the others are their own name."""
    return name if paired_fraction is None else f"{name} ({paired_fraction:.0%} paired)"


def summarise(results: Runs) -> dict[str, dict[str, tuple[float, float]]]:
    table = {}
    for arm, runs in results.items():
        table[arm] = {}
        for metric in (*METRICS, *DICE_METRICS):
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

    def plain(self) -> str:
        """Mean ± std and p without a unit or verdict (the noise floor is in dB): for Dice."""
        if not self.deltas:
            return "not measured"
        if len(self.deltas) == 1:
            return f"{self.mean:+.3f} (one seed)"
        return f"{self.mean:+.3f} ± {self.spread:.3f}, p = {self.p:.3f}"

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


def flag_losers(
    table: dict[str, dict[str, tuple[float, float]]], results: Runs, floor: list[float | None]
) -> dict[str, str]:
    """Row -> its label: a trained arm (one of ``results``) whose brain PSNR does not beat copy-T1's, over the seeds
    the arm finished (``floor``: copy-T1's brain PSNR per seed, aligned with each arm's runs; None where unknown), is
    marked. Compared seed by seed, so an arm run at some seeds only meets copy-T1 on those seeds' test subjects."""
    labels = {}
    for arm in table:
        deltas = [
            run["brain_psnr"] - copy
            for run, copy in zip(results.get(arm, []), floor)
            if "brain_psnr" in run and copy is not None
        ]
        loses = bool(deltas) and float(np.mean(deltas)) <= 0
        labels[arm] = f"{arm} **(loses to copy-T1)**" if loses else arm
    return labels


def claims(results: Runs, versus: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """What the numbers say about each of the paper's claims (computed, not asserted), from the per-seed runs.

    ``versus`` names, per variant arm, the arms it is compared with (an arm run on earlier defaults is compared with
    the arms of those defaults); a DS3-Net variant defaults to DS3-Net 5 % and paired-only 5 %, a paired-only or
    pix2pix variant to its own recipe's default arm."""
    ds3, paired, pix = "DS3-Net 5%", "paired-only 5%", "pix2pix 100%"
    versus = versus or {}
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
        lines.append(
            f"1. DS3-Net at 5 % vs paired-only at 5 % (brain): SSIM {d_ssim:+.4f}, PSNR {brain}: "
            f"the claim {'holds' if holds else 'is not reproduced'} here."
        )
        lines.append(
            f"2. Tumour region: SSIM {mean(ds3, 'tumour_ssim') - mean(paired, 'tumour_ssim'):+.4f}, "
            f"PSNR {psnr(ds3, paired, 'tumour')}, against {brain.mean:+.2f} dB in the brain."
        )
    if {ds3, paired, pix} <= set(results):
        # Over the seeds where all three ran, paired by seed (means over different seed sets would mix splits).
        both = [
            i
            for i, (a, b, c) in enumerate(zip(results[pix], results[paired], results[ds3]))
            if all("brain_psnr" in run for run in (a, b, c))
        ]
        gaps = [results[pix][i]["brain_psnr"] - results[paired][i]["brain_psnr"] for i in both]
        gains = [results[ds3][i]["brain_psnr"] - results[paired][i]["brain_psnr"] for i in both]
        gap = float(np.mean(gaps)) if gaps else float("nan")
        closed = float(np.mean(gains)) / gap if gaps and abs(gap) > 1e-9 else float("nan")
        lines.append(
            f"3. pix2pix at 100 % against DS3-Net at 5 %: brain PSNR {psnr(pix, ds3)}; paired-only to "
            f"pix2pix spans {gap:+.2f} dB, of which DS3-Net covers {100 * closed:.0f} % (seeds where all three ran: {len(both)})."
        )
    if {ds3, paired} <= set(results) and "dice_et" in table.get(ds3, {}):
        et, tc = (difference(results[ds3], results[paired], f"dice_{region}") for region in ("et", "tc"))
        lines.append(
            f"6. Dice of the segmenter on the synthesis, DS3-Net 5 % minus paired-only 5 %: ET "
            f"{et.plain()}, TC {tc.plain()} (the paper: ET +3.8 points, TC +2.3)."
        )
    for arm in results:
        if arm.startswith("DS3-Net 5% - ") and ds3 in results:
            lines.append(
                f"4. Removing the {arm.removeprefix('DS3-Net 5% - ')}: brain PSNR {psnr(arm, ds3)}; "
                f"tumour PSNR {psnr(arm, ds3, 'tumour')}."
            )
        elif arm.startswith("DS3-Net 5% (") and set(bases := versus.get(arm, (ds3, paired))) <= set(results):
            against = "; ".join(f"{psnr(arm, other)} against {_spoken(other)}" for other in bases)
            lines.append(f"5. {arm}: brain PSNR {against}.")
        elif arm.startswith(("paired-only 5% (", "pix2pix 100% (")):
            # A change to the paired-only (or fully paired) training itself: a sampling or augmentation lead of the
            # synthesis issue, or the earlier defaults.
            other = versus.get(arm, (paired if arm.startswith("paired-only") else pix,))[0]
            if other not in results:
                continue
            et = (
                f"; ET Dice {difference(results[arm], results[other], 'dice_et').plain()}"
                if "dice_et" in table[arm] and "dice_et" in table[other]
                else ""
            )
            lines.append(
                f"7. {arm} against {_spoken(other)}: brain PSNR {psnr(arm, other)}; tumour PSNR "
                f"{psnr(arm, other, 'tumour')}{et}."
            )
    if not lines:
        return []
    lines.sort(key=lambda line: int(line.split(".", 1)[0]))  # by claim, each claim's lines in the arms' order
    seeds = max(len(runs) for runs in results.values())
    if seeds > 1:
        preamble = (
            f"Differences are paired by seed (each seed is one subject split): mean ± std of the {seeds} "
            f"per-seed differences, p from a paired t-test (not corrected for the number of comparisons "
            f"on this page). One counts as better or worse when p < 0.05 and it exceeds {NOISE_FLOOR_DB} dB."
        )
    else:
        preamble = (
            f"One seed: no spread was measured; a difference counts as better or worse when it exceeds "
            f"{NOISE_FLOOR_DB} dB."
        )
    return [preamble, "", *lines]


def _spoken(arm: str) -> str:
    """An arm's name as the claims write it, a space before the percent sign: "DS3-Net 5 %"."""
    return arm.replace("%", " %", 1)
