"""benchmarks/quality.py: its claims from per-seed runs, its summaries and tables, and a smoke study end to end.

``quality.py`` is a script, not a package: it is imported by path, as ``test_search.py`` imports ``search.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
QUALITY = REPO / "benchmarks" / "quality.py"

DS3, PAIRED, PIX = "DS3-Net 5%", "paired-only 5%", "pix2pix 100%"
PROBE = "DS3-Net 5% (teacher warm-up 70%)"


import quality  # noqa: E402  (benchmarks/ is on pytest's pythonpath)

from ds3kit.segment import load_segmenter  # noqa: E402


def _runs(*brain_psnr: float, tumour: tuple[float, ...] | None = None, ssim: float = 0.8) -> list[dict[str, float]]:
    """One arm's runs, one held-out mean per seed (in seed order): every metric quality.py reads."""
    tumour = tuple(value - 2.0 for value in brain_psnr) if tumour is None else tumour
    return [
        {
            "brain_psnr": b,
            "brain_ssim": ssim,
            "brain_mse": 0.01,
            "tumour_psnr": t,
            "tumour_ssim": ssim - 0.1,
            "tumour_mse": 0.02,
        }
        for b, t in zip(brain_psnr, tumour)
    ]


def _line(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, (prefix, lines)
    return found[0]


# --- differences and claims --------------------------------------------------------------------------------------


def test_difference_is_paired_by_seed_with_a_t_test() -> None:
    from scipy import stats

    a, b = _runs(21.0, 18.2, 25.3), _runs(20.0, 17.0, 24.0)  # large spread over seeds, steady gain of ~1.2 dB
    difference = quality.difference(a, b, "brain_psnr")
    assert difference.deltas == pytest.approx((1.0, 1.2, 1.3))
    assert difference.mean == pytest.approx(3.5 / 3)
    assert difference.spread == pytest.approx(stats.tstd([1.0, 1.2, 1.3]))  # sample std of the differences
    assert difference.p == pytest.approx(stats.ttest_rel([21.0, 18.2, 25.3], [20.0, 17.0, 24.0]).pvalue)
    assert difference.p < 0.05 and difference.verdict == "better"
    assert str(difference) == f"+1.17 ± 0.15 dB, p = {difference.p:.3f} (better)"
    assert quality.difference(b, a, "brain_psnr").verdict == "worse"
    # The same means without the pairing would be lost in the 3 dB spread over seeds; shuffled seeds lose it too.
    assert quality.difference(a, [b[2], b[0], b[1]], "brain_psnr").verdict == "within noise"


def test_difference_floor_identical_deltas_one_seed_and_missing_metric() -> None:
    tiny = quality.difference(_runs(20.05, 21.05, 22.05), _runs(20.0, 21.0, 22.0), "brain_psnr")
    assert tiny.p < 0.05 and tiny.verdict == "within noise"  # significant, but below the 0.1 dB floor
    steady = quality.difference(_runs(21.0, 22.0), _runs(20.0, 21.0), "brain_psnr")
    assert steady.spread == 0.0 and steady.p == 0.0 and steady.verdict == "better"
    same = quality.difference(_runs(20.0, 21.0), _runs(20.0, 21.0), "brain_psnr")
    assert same.p == 1.0 and same.verdict == "within noise"
    one = quality.difference(_runs(20.3), _runs(20.0), "brain_psnr")
    assert one.verdict == "better" and str(one) == "+0.30 dB (better)"  # one seed: the floor alone decides
    assert quality.difference(_runs(20.05), _runs(20.0), "brain_psnr").verdict == "within noise"
    missing = quality.difference([{"brain_psnr": 1.0}], [{"brain_psnr": 0.0}], "tumour_psnr")
    assert missing.verdict == "not measured" and str(missing) == "not measured"
    nan = quality.difference([{"brain_psnr": float("nan")}], [{"brain_psnr": 0.0}], "brain_psnr")
    assert nan.verdict == "not measured"


def test_difference_counts_the_seeds_that_measured_the_metric() -> None:
    # Seed 1's split has no tumour in its test subjects: two of three seeds, tested on those two.
    a = [{"tumour_psnr": 16.0}, {}, {"tumour_psnr": 18.1}]
    b = [{"tumour_psnr": 15.0}, {"tumour_psnr": 3.0}, {"tumour_psnr": 17.0}]
    partial = quality.difference(a, b, "tumour_psnr")
    assert partial.deltas == pytest.approx((1.0, 1.1)) and partial.seeds == 3
    assert str(partial).endswith("(better, 2 of 3 seeds)")
    # Measured at one seed of three: no test was possible, so no verdict (the floor alone is for one-seed studies).
    single = quality.difference([{"x": 21.0}, {}, {}], [{"x": 20.0}, {"x": 0.0}, {"x": 0.0}], "x")
    assert single.verdict == "one seed only" and str(single) == "+1.00 dB (one seed only, 1 of 3 seeds)"
    with pytest.raises(ValueError, match="cannot pair arms by seed: 3 runs against 2"):
        quality.difference(_runs(1.0, 2.0, 3.0), _runs(1.0, 2.0), "brain_psnr")


def test_claim_holds_when_ds3net_beats_paired_only_seed_by_seed() -> None:
    results = {PAIRED: _runs(20.0, 22.0, 18.0, ssim=0.80), DS3: _runs(21.0, 23.1, 18.9, ssim=0.82)}
    lines = quality.claims(results)
    assert "paired by seed" in lines[0] and "3 per-seed differences" in lines[0]
    first = _line(lines, "1. ")
    assert "PSNR +1.00 ± 0.10 dB" in first and "SSIM +0.0200" in first
    assert "(better)" in first and "holds" in first and "not reproduced" not in first


def test_claim_is_not_reproduced_when_the_gain_is_not_consistent_over_seeds() -> None:
    results = {PAIRED: _runs(20.0, 20.0, 20.0, ssim=0.80), DS3: _runs(21.5, 19.0, 20.7, ssim=0.82)}
    first = _line(quality.claims(results), "1. ")
    assert "PSNR +0.40 ± 1.28 dB" in first and "(within noise)" in first
    assert "is not reproduced" in first and "holds" not in first


def test_claim_is_not_reproduced_when_ssim_drops_even_if_psnr_rises() -> None:
    results = {PAIRED: _runs(20.0, 21.0, 22.0, ssim=0.82), DS3: _runs(22.0, 23.1, 24.0, ssim=0.80)}
    first = _line(quality.claims(results), "1. ")
    assert "(better)" in first and "is not reproduced" in first


def test_one_seed_says_no_spread_was_measured_and_uses_the_floor() -> None:
    lines = quality.claims({PAIRED: _runs(20.0, ssim=0.80), DS3: _runs(20.3, ssim=0.82)})
    assert lines[0].startswith("One seed") and "no spread" in lines[0] and "0.1 dB" in lines[0]
    first = _line(lines, "1. ")
    assert "PSNR +0.30 dB (better)" in first and "holds" in first
    first = _line(quality.claims({PAIRED: _runs(20.0, ssim=0.80), DS3: _runs(20.05, ssim=0.82)}), "1. ")
    assert "(within noise)" in first and "is not reproduced" in first


def test_tumour_line_and_pix2pix_gap() -> None:
    results = {
        PAIRED: _runs(20.0, 20.0, tumour=(15.0, 15.0)),
        DS3: _runs(21.0, 21.0, tumour=(15.05, 15.05)),
        PIX: _runs(24.0, 24.0),
    }
    lines = quality.claims(results)
    second = _line(lines, "2. ")
    assert "PSNR +0.05 ± 0.00 dB" in second and "(within noise)" in second and "+1.00 dB in the brain" in second
    third = _line(lines, "3. ")
    # pix2pix is 3 dB above DS3-Net; paired-only -> pix2pix spans 4 dB, of which DS3-Net covers 1 dB = 25 %.
    assert "+3.00 ± 0.00 dB" in third and "+4.00 dB" in third and "25 %" in third


def test_ablation_lines_have_the_sign_of_the_change_from_removing_the_part() -> None:
    results = {
        PAIRED: _runs(20.0),
        DS3: _runs(22.0, tumour=(18.0,)),
        # The difficulty map helps: without it, 1 dB worse in the brain and 2 dB worse in the tumour.
        "DS3-Net 5% - difficulty map": _runs(21.0, tumour=(16.0,)),
        # The patchwise loss hurts: without it, better.
        "DS3-Net 5% - patchwise loss": _runs(22.5, tumour=(18.8,)),
        # Feature distillation does nothing measurable.
        "DS3-Net 5% - feature distillation": _runs(22.05, tumour=(17.95,)),
    }
    lines = quality.claims(results)
    assert len([line for line in lines if line.startswith("4. ")]) == 3, lines
    difficulty = _line(lines, "4. Removing the difficulty map:")
    assert "brain PSNR -1.00 dB (worse)" in difficulty and "tumour PSNR -2.00 dB (worse)" in difficulty
    patchwise = _line(lines, "4. Removing the patchwise loss:")
    assert "brain PSNR +0.50 dB (better)" in patchwise and "tumour PSNR +0.80 dB (better)" in patchwise
    feature = _line(lines, "4. Removing the feature distillation:")
    assert "brain PSNR +0.05 dB (within noise)" in feature and "tumour PSNR -0.05 dB (within noise)" in feature
    # Ablations need DS3-Net itself to compare with.
    assert quality.claims({"DS3-Net 5% - difficulty map": _runs(21.0)}) == []


def test_probe_arm_line_compares_with_ds3net_and_paired_only() -> None:
    results = {PAIRED: _runs(20.0, 21.0, 19.0), DS3: _runs(21.0, 22.0, 20.0), PROBE: _runs(20.5, 21.6, 19.4)}
    lines = quality.claims(results)
    fifth = _line(lines, "5. ")
    assert fifth.startswith(f"5. {PROBE}: ")
    assert "-0.50 ± 0.10 dB" in fifth and "(worse) against DS3-Net 5 %" in fifth
    assert "+0.50 ± 0.10 dB" in fifth and "(better) against paired-only" in fifth
    assert not any(line.startswith("4. ") for line in lines)  # the probe is not an ablation
    # Without paired-only there is nothing to put it beside.
    assert not any(line.startswith("5. ") for line in quality.claims({DS3: _runs(21.0), PROBE: _runs(20.5)}))


def test_claims_without_the_compared_arms_say_nothing() -> None:
    assert quality.claims({PIX: _runs(24.0, 25.0)}) == []
    assert quality.claims({PIX: _runs(24.0)}) == []


# --- summarise and diagnostics_table --------------------------------------------------------------------------------


def test_summarise_gives_mean_and_population_std_and_skips_missing_metrics() -> None:
    runs = {
        "a": [{"brain_psnr": 20.0, "brain_ssim": 0.8}, {"brain_psnr": 22.0}, {"brain_psnr": 24.0, "brain_ssim": 0.9}],
        "b": [{"tumour_mse": 0.5}],
        "c": [],
    }
    table = quality.summarise(runs)
    assert list(table) == ["a", "b", "c"]
    mean, std = table["a"]["brain_psnr"]
    assert mean == pytest.approx(22.0) and std == pytest.approx((8 / 3) ** 0.5)  # population, not sample (2.0)
    mean, std = table["a"]["brain_ssim"]
    assert mean == pytest.approx(0.85) and std == pytest.approx(0.05)  # over the two runs that have it
    assert set(table["a"]) == {"brain_psnr", "brain_ssim"}
    assert table["b"] == {"tumour_mse": (0.5, 0.0)}
    assert table["c"] == {}
    assert all(type(v) is float for values in table["a"].values() for v in values)


def test_diagnostics_table_rows_in_order_with_mean_std_and_na() -> None:
    diagnostics = [
        {
            "teacher/train_paired": {"brain_psnr": 30.0, "tumour_psnr": 25.0, "brain_ssim": 0.9},
            "teacher/test": {"brain_psnr": 20.0, "tumour_psnr": 15.0, "brain_ssim": 0.7},
            "student/train_unpaired": {"brain_psnr": 21.0, "brain_ssim": 0.71},
        },
        {
            "teacher/train_paired": {"brain_psnr": 32.0, "tumour_psnr": 27.0, "brain_ssim": 0.92},
            "teacher/test": {"brain_psnr": 22.0, "tumour_psnr": 17.0, "brain_ssim": 0.76},
            "student/train_unpaired": {"brain_psnr": 23.0, "brain_ssim": 0.73},
        },
    ]
    lines = quality.diagnostics_table(diagnostics).splitlines()
    assert lines[0] == "| model | subjects | brain_psnr | tumour_psnr | brain_ssim |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2:] == [
        "| teacher | train paired | 31.00 ± 1.00 | 26.00 ± 1.00 | 0.9100 ± 0.0100 |",
        "| teacher | test | 21.00 ± 1.00 | 16.00 ± 1.00 | 0.7300 ± 0.0300 |",
        "| student | train unpaired | 22.00 ± 1.00 | n/a | 0.7200 ± 0.0100 |",
    ]
    assert quality.diagnostics_table([]).splitlines()[2:] == []


# --- end to end ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    from ds3kit.data import write_phantom_cohort

    root = tmp_path_factory.mktemp("cohort")
    write_phantom_cohort(root, cases=10, shape=(48, 48, 16), seed=0, progress=False)
    return root


def _table_rows(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("| ") and "|---" not in line]


def test_reference_rows_label_what_depends_on_the_paired_subjects() -> None:
    report = {
        "baselines": {
            "copy-T1": {"mean": {"brain_psnr": 17.0}},
            "linear": {"mean": {"brain_psnr": 17.5}},
            "ceiling: tissue map, paired levels": {"mean": {"brain_psnr": 19.0}},
        }
    }
    rows = quality.reference_rows(report, 0.05)
    assert rows == {
        "copy-T1": {"brain_psnr": 17.0},
        "linear (5% paired)": {"brain_psnr": 17.5},
        "ceiling: tissue map, paired levels (5% paired)": {"brain_psnr": 19.0},
    }
    # Per seed, copy-T1 scores 17.0 then 19.0. "a" beats it at both seeds by 0.1 dB; "b" was run at seed 0 only and
    # beats copy-T1 there, though its mean (17.5) is below copy-T1's mean over both seeds (18.0); "c" loses at both.
    results = {
        "a": [{"brain_psnr": 17.1}, {"brain_psnr": 19.1}],
        "b": [{"brain_psnr": 17.5}, {}],
        "c": [{"brain_psnr": 16.0}, {"brain_psnr": 18.9}],
    }
    table = {**{arm: {} for arm in results}, "copy-T1": {"brain_psnr": (18.0, 1.0)}}
    assert quality.flag_losers(table, results, [17.0, 19.0]) == {
        "a": "a",
        "b": "b",
        "c": "c **(loses to copy-T1)**",
        "copy-T1": "copy-T1",
    }
    assert quality.flag_losers(table, results, [None, None])["c"] == "c"  # no floor known: nothing to flag


@pytest.mark.slow
def test_smoke_study_end_to_end_then_everything_is_reused(small_cohort: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "out", tmp_path / "q.md"
    argv = [
        "--smoke",
        "--device",
        "cpu",
        "--data",
        str(small_cohort),
        "--arms",
        PAIRED,
        DS3,
        "--out",
        str(out),
        "--report",
        str(report),
    ]
    assert quality.main(argv) == 0

    text = report.read_text()
    # paired-only is read from DS3-Net's teacher: one run for the two arms.
    assert "1 run(s) trained by this invocation (0 reused)" in text
    assert "1 seed(s) (0)" in text
    rows = _table_rows(text)
    first_table = _table_rows(text.split("![quality]", 1)[0])
    arm_rows = [row for row in first_table if row.startswith((f"| {PAIRED} ", f"| {DS3} "))]
    # An arm is marked exactly when its brain PSNR does not beat copy-T1's (one seed: the table's own figures).
    psnr_column = 1 + list(quality.METRICS).index("brain_psnr")

    def brain_psnr(row: str) -> float:
        return float(row.strip("|").split("|")[psnr_column])

    # paired-only's row is the DS3-Net run's teacher, as that run scored it.
    (ds3_run,) = [path for path in out.iterdir() if path.name.startswith("ds3net-")]
    teacher = json.loads((ds3_run / "metrics.json").read_text())["models"]["teacher"]["mean"]
    assert brain_psnr(arm_rows[0]) == pytest.approx(teacher["brain_psnr"], abs=0.006)
    copy_row = next(row for row in first_table if row.startswith("| copy-T1 "))
    for label, row in zip((PAIRED, DS3), arm_rows):
        loses = brain_psnr(row) <= brain_psnr(copy_row)
        assert row.split(" | ")[0] == (f"| {label} **(loses to copy-T1)**" if loses else f"| {label}")
    references = [row.split(" | ")[0] for row in first_table if not row.startswith((f"| {PAIRED} ", f"| {DS3} "))]
    assert references[1:] == [
        "| *references (no training)*",
        "| copy-T1",
        "| linear (5% paired)",
        "| ceiling: tissue map, paired levels (5% paired)",
        "| ceiling: tissue map, population levels",
        "| ceiling: tissue map",
        "| ceiling: noise-free T1ce",
        "| real T1ce (segmenter)",
        "| no T1ce (segmenter on T1, T2, FLAIR)",
    ]
    columns = [*quality.METRICS, "dice_et", "dice_tc", "dice_wt"]  # the seed's segmenter adds Dice
    assert _table_rows(text)[0] == "| arm | " + " | ".join(columns) + " |"
    for row in arm_rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        assert len(cells) == len(columns) and "n/a" not in cells and "±" not in cells  # one seed: no std
        assert all(float(cell) == float(cell) for cell in cells)  # numbers, not NaN
        assert all(0.0 <= float(cell) <= 1.0 for cell in cells[-3:])
    real = next(row for row in first_table if row.startswith("| real T1ce (segmenter)"))
    assert real.count("n/a") == len(quality.METRICS)  # Dice only: no image metric for the real T1ce itself
    without = next(row for row in first_table if row.startswith("| no T1ce (segmenter on T1, T2, FLAIR)"))
    assert without.count("n/a") == len(quality.METRICS)
    assert "\n6. Dice of the segmenter on the synthesis" in text
    assert "One seed: no spread" in text and "\n1. DS3-Net at 5 %" in text

    section = text.split("## Where the student's error comes from", 1)[1].split("\n## ", 1)[0]
    diag_rows = _table_rows(section)[1:]  # past the header row
    assert [tuple(cell.strip() for cell in row.strip("|").split("|")[:2]) for row in diag_rows] == [
        (model, subset) for model in ("teacher", "student") for subset in ("train paired", "train unpaired", "test")
    ]
    assert not any("n/a" in row for row in diag_rows)

    section = text.split("## What the step selection chose", 1)[1].split("\n## ", 1)[0]
    selection_rows = [[cell.strip() for cell in row.strip("|").split("|")] for row in _table_rows(section)[1:]]
    assert [row[:3] for row in selection_rows] == [
        [PAIRED, "teacher", "1"],
        [DS3, "student", "1"],
        [DS3, "teacher", "1"],
    ]
    at_last_step = [row for row in selection_rows if row[3] == "8"]
    assert at_last_step, selection_rows  # the smoke runs ship their last step: the check below must have rows
    # Rebuilt from last.pt by the recipe, the network must score what shipped, to the table's precision (the recipe
    # scored the float16 cache, this the float32 volumes: 1e-4 dB apart).
    for row in at_last_step:
        assert row[4] == row[5] and row[6] == "+0.00 ± 0.00 / +0.00 ± 0.00", row

    # The tissue split: the arms, then the floor, the population-levels ceiling and the own-levels oracle.
    section = text.split("## Where the brain error lies, by tissue", 1)[1].split("\n## ", 1)[0]
    tissue_rows = _table_rows(section)[1:]
    assert [row.split(" | ")[0] for row in tissue_rows] == [
        f"| {PAIRED}",
        f"| {DS3}",
        "| copy-T1",
        "| ceiling: tissue map, population levels",
        f"| {quality.OWN_LEVELS}",
    ]
    # The student's pooled brain MSE, recomputed from its saved predictions and the cohort's volumes.
    import nibabel as nib

    from ds3kit.data import load_brats_case

    (ds3_dir,) = [path for path in out.iterdir() if path.name.startswith("ds3net-")]
    error = voxels = 0.0
    for case in json.loads((ds3_dir / "metrics.json").read_text())["split"]["test"]:
        session = load_brats_case(small_cohort / case)
        prediction = np.asarray(nib.load(ds3_dir / "predictions" / "student" / f"{case}_t1ce.nii.gz").dataobj)
        difference = prediction[session.brain_mask].astype(np.float64) - session.target[session.brain_mask]
        error, voxels = error + float(np.sum(difference**2)), voxels + difference.size
    assert tissue_rows[1].rsplit(" | ", 1)[1].startswith(f"{1e3 * error / voxels:.3f} / ")
    assert all("n/a" not in row.split(" | ", 1)[1] for row in tissue_rows)

    png = report.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    arm = {arm.name: arm for arm in quality.ARMS}
    run_dirs = sorted(path for path in out.iterdir() if path.is_dir() and not path.name.startswith("segmenter-"))
    assert run_dirs == [quality.run_dir(arm[DS3], 0, out)] == [quality.run_dir(arm[PAIRED], 0, out)]
    assert all((path / "metrics.json").is_file() for path in run_dirs)
    assert all((path / "dice.json").is_file() and (path / "last_step.json").is_file() for path in run_dirs)
    assert all((path / "tissue_errors.json").is_file() for path in run_dirs)
    assert (run_dirs[0] / "dice-teacher.json").is_file()  # paired-only's Dice: the teacher's predictions
    assert (out / "segmenter-seed0" / "checkpoints" / "segmenter.pt").is_file()
    _, metadata = load_segmenter(out / "segmenter-without-t1ce-seed0" / "checkpoints" / "segmenter.pt")
    assert metadata["t1ce_channel"] == "t1"
    ds3_dirs = [path for path in run_dirs if path.name.startswith("ds3net-")]
    assert len(ds3_dirs) == 1
    cached = json.loads((ds3_dirs[0] / "diagnostics.json").read_text())
    diagnostics = cached["result"]
    assert cached["test_flips"] == "all"  # scored as the run's test scores were
    assert set(diagnostics) == {f"{m}/{s}" for m in ("teacher", "student") for s in quality.DIAGNOSTIC_SUBSETS}

    # A second identical call trains nothing and gives the same tables (diagnostics from their cache).
    mtimes = {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}
    assert quality.main(argv) == 0
    again = report.read_text()
    assert "all 1 runs reused from earlier invocations" in again
    assert _table_rows(again) == rows
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()} == mtimes
    assert "![quality](q.png)" in again  # the picture link follows --report's name

    # Finished runs of other settings are never passed off as this study's.
    with pytest.raises(SystemExit, match="pass another --out"):
        quality.main([arg for arg in argv if arg != "--smoke"])  # the full-size settings, same --out
    # Nor a run of the current defaults as one of the earlier defaults' arms (a default changed under a run).
    earlier = "DS3-Net 5% (no tumour oversampling)"
    quality.run_dir(arm[DS3], 0, out).rename(quality.run_dir(arm[earlier], 0, out))
    with pytest.raises(SystemExit, match=r"tumour_repeats 2 \(asked 0\)"):
        quality.main([*argv[: argv.index("--arms") + 1], earlier, *argv[argv.index("--out") :]])


def test_claims_without_tumour_metrics_do_not_crash() -> None:
    results = {
        PAIRED: [{"brain_psnr": 20.0, "brain_ssim": 0.80}],
        DS3: [{"brain_psnr": 21.0, "brain_ssim": 0.82}],
        "DS3-Net 5% - difficulty map": [{"brain_psnr": 20.5, "brain_ssim": 0.81}],
    }
    lines = quality.claims(results)
    assert "holds" in _line(lines, "1.")
    assert "not measured" in _line(lines, "2.")
    assert "not measured" in _line(lines, "4.")


def test_plot_adds_the_paired_panel_only_with_several_seeds(tmp_path: Path) -> None:
    def width(path: Path) -> int:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        return int.from_bytes(data[16:20], "big")  # IHDR width

    several = {PAIRED: _runs(20.0, 21.0, 19.5), DS3: _runs(20.2, 21.1, 19.9), "CUT 0%": _runs(12.0, 13.0, 12.5)}
    quality.plot(tmp_path / "three.png", several)  # CUT's -7.9 dB is written at the panel's edge, not plotted
    quality.plot(tmp_path / "one.png", {arm: runs[:1] for arm, runs in several.items()})
    quality.plot(tmp_path / "no-reference.png", {PAIRED: several[PAIRED]})
    assert width(tmp_path / "three.png") == 1800  # three panels of 6 inches at 100 dpi
    assert width(tmp_path / "one.png") == width(tmp_path / "no-reference.png") == 1200


def test_finished_only_reports_what_finished_and_trains_nothing(small_cohort: Path, tmp_path: Path, capsys) -> None:
    out, report = tmp_path / "out", tmp_path / "q.md"
    common = ["--smoke", "--device", "cpu", "--data", str(small_cohort), "--out", str(out), "--no-dice"]
    pix2pix = "pix2pix 100%"
    assert quality.main([*common, "--arms", pix2pix, "--report", str(report)]) == 0
    before = sorted(path.name for path in out.iterdir())
    assert quality.main([*common, "--arms", pix2pix, DS3, PAIRED, "--finished-only", "--report", str(report)]) == 0
    assert sorted(path.name for path in out.iterdir()) == before  # DS3-Net (and paired-only with it) not trained
    # Keyed by the arm's name, with or without the page's mark of an arm that loses to copy-T1.
    rows = {row.split(" | ")[0].replace(" **(loses to copy-T1)**", ""): row for row in _table_rows(report.read_text())}
    assert "n/a" not in rows[f"| {pix2pix}"]
    for unfinished in (DS3, PAIRED):  # no seed finished: every cell n/a
        assert rows[f"| {unfinished}"].count("n/a") == len(quality.METRICS)
    # Nor a segmenter: with Dice asked for and none in --out, the seed gets no Dice columns and the study says why.
    with_dice = [arg for arg in common if arg != "--no-dice"]
    assert quality.main([*with_dice, "--arms", pix2pix, "--finished-only", "--report", str(report)]) == 0
    assert sorted(path.name for path in out.iterdir()) == before
    assert "no Dice, its segmenters are not all in" in capsys.readouterr().err
    assert "dice_et" not in report.read_text()
    # A run scored with other test-time flips (one from before RunConfig.test_flips) is scored again from its
    # checkpoint: nothing trained, its metrics.json now says the recipes' flips.
    (run,) = [path for path in out.iterdir() if path.name.startswith("pix2pix")]
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("test_flips")
    (run / "metrics.json").write_text(json.dumps(metrics))
    steps = (run / "metrics.jsonl").read_text()
    assert quality.main([*common, "--arms", pix2pix, "--finished-only", "--report", str(report)]) == 0
    assert json.loads((run / "metrics.json").read_text())["test_flips"] == "all"
    assert (run / "metrics.jsonl").read_text() == steps  # no step trained, no validation logged
    # So is a run scored before the intensity calibration existed: its shipped weights are calibrated and rescored.
    metrics = json.loads((run / "metrics.json").read_text())
    calibration = metrics.pop("calibration")
    metrics.pop("uncalibrated")
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert quality.main([*common, "--arms", pix2pix, "--finished-only", "--report", str(report)]) == 0
    rescored = json.loads((run / "metrics.json").read_text())
    assert rescored["calibration"] == calibration and rescored["calibration"]["generator"]["fitted"]
    assert rescored["models"] == metrics["models"]  # the same weights, calibrated the same way
    assert (run / "metrics.jsonl").read_text() == steps


def test_the_pix2pix_gap_is_paired_by_seed_over_the_seeds_all_three_ran() -> None:
    # Seed 2 (paired-only 15, DS3-Net 15.5) has no pix2pix run: it must not enter the gap's paired-only mean.
    results = {PAIRED: _runs(20.0, 21.0, 15.0), DS3: _runs(20.5, 21.5, 15.5), PIX: [*_runs(21.0, 22.0), {}]}
    third = _line(quality.claims(results), "3. ")
    assert "spans +1.00 dB, of which DS3-Net covers 50 % (seeds where all three ran: 2)" in third


def test_segmenter_reference_rows_are_read_only_for_the_same_subjects(tmp_path: Path) -> None:
    from _quality_runs import COPY_T1, REAL_T1CE, _segmenter_reference_rows

    checkpoint = tmp_path / "segmenter-seed0" / "checkpoints" / "segmenter.pt"
    checkpoint.parent.mkdir(parents=True)
    assert _segmenter_reference_rows(checkpoint, ["a", "b"]) is None  # no segmenter report
    rows = {
        name: {"mean": {"dice_et": value}, "subjects": {"a": {}, "b": {}}}
        for name, value in (("real_t1ce", 0.9), ("copy_t1", 0.1))
    }
    (checkpoint.parent.parent / "metrics.json").write_text(json.dumps({"rows": {"test": rows}}))
    assert _segmenter_reference_rows(checkpoint, ["b", "a"]) == {REAL_T1CE: {"dice_et": 0.9}, COPY_T1: {"dice_et": 0.1}}
    assert _segmenter_reference_rows(checkpoint, ["a"]) is None  # other subjects: computed by run_dice instead


def test_a_paired_only_variant_is_compared_with_paired_only_in_brain_and_tumour() -> None:
    variant = "paired-only 5% (no tumour oversampling)"
    results = {PAIRED: _runs(20.0, 21.0, tumour=(15.0, 16.0)), variant: _runs(19.8, 20.8, tumour=(16.0, 17.0))}
    line = _line(quality.claims(results), f"7. {variant} against paired-only 5 %:")
    assert "brain PSNR -0.20 ± 0.00 dB" in line and "tumour PSNR +1.00 ± 0.00 dB" in line, line
    assert "ET Dice" not in line  # no Dice in these runs
    # pix2pix's variants likewise, against pix2pix 100 %; without it there is no line.
    results = {PIX: _runs(22.0, 23.0), "pix2pix 100% (no tumour oversampling)": _runs(21.5, 22.7)}
    line = _line(quality.claims(results), "7. pix2pix 100% (no tumour oversampling) against pix2pix 100 %:")
    assert "brain PSNR -0.40 ± 0.14 dB" in line, line
    assert quality.claims({"pix2pix 100% (no tumour oversampling)": _runs(21.5)}) == []


def test_an_arm_on_earlier_defaults_is_compared_with_the_arms_it_names() -> None:
    earlier_ds3, earlier_paired = "DS3-Net 5% (no tumour oversampling)", "paired-only 5% (no tumour oversampling)"
    results = {
        PAIRED: _runs(30.0, 31.0),
        DS3: _runs(30.0, 31.0),
        earlier_paired: _runs(20.0, 21.0),
        earlier_ds3: _runs(20.5, 21.5),
        PROBE: _runs(21.0, 22.0),
    }
    versus = {PROBE: (earlier_ds3, earlier_paired)}
    fifth = _line(quality.claims(results, versus), f"5. {PROBE}: ")
    assert fifth.endswith(
        "brain PSNR +0.50 ± 0.00 dB, p = 0.000 (better) against DS3-Net 5 % (no tumour oversampling); "
        "+1.00 ± 0.00 dB, p = 0.000 (better) against paired-only 5 % (no tumour oversampling)."
    ), fifth
    # Without the arms it names there is nothing to put it beside, whatever the current defaults' arms say.
    del results[earlier_ds3]
    assert not any(line.startswith(f"5. {PROBE}") for line in quality.claims(results, versus))


def test_claims_come_in_the_order_of_their_numbers_whatever_the_arms_order() -> None:
    results = {
        "paired-only 5% (no tumour oversampling)": _runs(19.8, 20.8),
        PROBE: _runs(20.5, 21.6),
        PAIRED: _runs(20.0, 21.0),
        DS3: _runs(21.0, 22.0),
    }
    numbers = [line.split(".", 1)[0] for line in quality.claims(results)[2:]]
    assert numbers == ["1", "2", "5", "7"], numbers


def test_the_no_t1ce_row_is_read_for_the_same_subjects_and_computed_for_others(small_cohort: Path, tmp_path: Path):
    from _quality_runs import _without_t1ce_row
    from _recipes import load_recipe

    from ds3kit.data import list_cases, load_brats_case, split_cohort
    from ds3kit.segment import reference_t1ce, session_dice

    folder = tmp_path / "segmenter-without-t1ce-seed0"
    argv = ["--smoke", "--without-t1ce", "--data", str(small_cohort), "--out", str(folder), "--no-progress"]
    assert load_recipe("segmenter").main(argv) == 0
    checkpoint = folder / "checkpoints" / "segmenter.pt"
    test = json.loads((folder / "metrics.json").read_text())["rows"]["test"]["copy_t1"]
    scored = [small_cohort / name for name in test["subjects"]]
    assert _without_t1ce_row(checkpoint, scored, "cpu") == test["mean"]
    # Other subjects (the smoke run scored two of the test subjects): computed, and equal to the T1 copied in.
    split = split_cohort(list_cases(small_cohort), paired_fraction=0.05, seed=0)
    others = list(split.val)
    model, _ = load_segmenter(checkpoint)
    expected = [session_dice(model, s, reference_t1ce(s, "copy_t1")) for s in map(load_brats_case, others)]
    row = _without_t1ce_row(checkpoint, others, "cpu")
    assert row == pytest.approx({key: np.mean([e[key] for e in expected]) for key in expected[0]})
    with pytest.raises(ValueError, match="trained on"):
        _without_t1ce_row(
            checkpoint,
            [small_cohort / name for name in json.loads((folder / "metrics.json").read_text())["train"][:1]],
            "cpu",
        )


def test_paired_only_is_read_from_whichever_ds3net_run_with_its_teacher_finished(tmp_path: Path) -> None:
    arm = {arm.name: arm for arm in quality.ARMS}
    levels = "DS3-Net 5% (no tumour-level pseudo-targets)"
    # Nothing finished: the first source is the one to train.
    assert quality.run_dir(arm[PAIRED], 3, tmp_path) == quality.run_dir(arm[DS3], 3, tmp_path)
    finished = quality.run_dir(arm[levels], 3, tmp_path)
    finished.mkdir()
    (finished / "metrics.json").write_text("{}")
    assert quality.run_dir(arm[PAIRED], 3, tmp_path) == finished
    assert quality.run_dir(arm[PAIRED], 4, tmp_path) == quality.run_dir(arm[DS3], 4, tmp_path)  # per seed
    # Once the first source finished too, it is preferred.
    first = quality.run_dir(arm[DS3], 3, tmp_path)
    first.mkdir()
    (first / "metrics.json").write_text("{}")
    assert quality.run_dir(arm[PAIRED], 3, tmp_path) == first


def test_room_table_places_the_target_against_pix2pix_and_the_population_ceiling_per_seed() -> None:
    # Three seeds; pix2pix did not finish at the second, so that seed is left out of the table and the counts.
    results = {
        PAIRED: [{"brain_psnr": 22.6}, {"brain_psnr": 23.3}, {"brain_psnr": 23.5}],
        DS3: [{"brain_psnr": 23.1}, {"brain_psnr": 23.4}, {"brain_psnr": 23.7}],
        PIX: [{"brain_psnr": 23.3}, {}, {"brain_psnr": 23.6}],
    }
    references = {
        "copy-T1": [{"brain_psnr": 20.7}, {"brain_psnr": 21.6}, {"brain_psnr": 22.1}],
        "ceiling: tissue map, paired levels (5% paired)": [
            {"brain_psnr": 23.0},
            {"brain_psnr": 23.4},
            {"brain_psnr": 23.4},
        ],
        "ceiling: tissue map, population levels": [{"brain_psnr": 23.6}, {"brain_psnr": 24.1}, {"brain_psnr": 23.9}],
    }
    text = quality.room_table(results, references, seeds=[0, 1, 2], target=0.5)
    rows = [line for line in text.splitlines() if line.startswith(("| 0 ", "| 1 ", "| 2 "))]
    assert [row.split(" | ")[0] for row in rows] == ["| 0", "| 2"]
    # Seed 0: target 23.10, 0.20 under pix2pix, 0.50 under the ceiling; seed 2: target 24.00, 0.40 above pix2pix
    # and 0.10 above the ceiling.
    assert rows[0].endswith("| 23.10 | -0.20 | -0.50 |") and "23.00 / 23.60" in rows[0]
    assert rows[1].endswith("| 24.00 | +0.40 | +0.10 |") and "| 22.10 | 23.50 | 23.70 | 23.60 |" in rows[1]
    assert "At 1 of 2 seeds the target lies above pix2pix at 100 %, and at 1 above" in text
    assert quality.room_table({PAIRED: results[PAIRED]}, references, seeds=[0, 1, 2]).startswith("(needs")
    assert quality.room_table(results, {}, seeds=[0, 1, 2]).startswith("(no seed")


def test_tissue_table_pools_each_arm_over_its_seeds_and_the_references_over_every_seed() -> None:
    def result(model_wm: float, copy_wm: float) -> dict[str, dict[str, list[float]]]:
        return {
            "model": {"white_matter": [model_wm, 1000], "csf": [1.0, 500], "vessel": [0.0, 0]},
            "copy-T1": {"white_matter": [copy_wm, 1000], "csf": [3.0, 500], "vessel": [0.0, 0]},
        }

    # Arm A at seeds 0 and 1, arm B at seed 0 only; the references come from whichever arm measured a seed.
    tissues = {"A": [result(2.0, 5.0), result(4.0, 7.0)], "B": [result(3.0, 5.0), None]}
    text = quality.tissue_table(tissues, seeds=[0, 1])
    lines = text.splitlines()
    # Tissues with no voxel are left out; the header gives each tissue's share of the brain's voxels.
    assert lines[0] == "| model | white matter (66.7 %) | csf (33.3 %) | brain: MSE x 1e3 / PSNR |"
    rows = {line.split(" | ")[0]: line for line in lines[2:]}
    assert list(rows) == ["| A", "| B (1 of 2 seeds)", "| copy-T1"]
    # A: white matter 6 / 2000, csf 2 / 1000, brain 8 / 3000 (10 log10(375) dB); shares of A's own error.
    assert rows["| A"] == "| A | 3.00 (75 %) | 2.00 (25 %) | 2.667 / 25.74 dB |"
    assert rows["| B (1 of 2 seeds)"] == "| B (1 of 2 seeds) | 3.00 (75 %) | 2.00 (25 %) | 2.667 / 25.74 dB |"
    # copy-T1 over both seeds: white matter 12 / 2000, csf 6 / 1000, brain 18 / 3000.
    assert rows["| copy-T1"] == "| copy-T1 | 6.00 (67 %) | 6.00 (33 %) | 6.000 / 22.22 dB |"
    assert quality.tissue_table({"A": [None, None]}, seeds=[0, 1]).startswith("(not measured")
