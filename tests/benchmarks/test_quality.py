"""benchmarks/quality.py: the claims it draws from a table, its summaries and tables, and a smoke study end to end.

``quality.py`` is a script, not a package: it is imported by path, as ``test_search.py`` imports ``search.py``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUALITY = REPO / "benchmarks" / "quality.py"

DS3, PAIRED, PIX = "DS3-Net 5%", "paired-only 5%", "pix2pix 100%"
PROBE = "DS3-Net 5% (teacher warm-up 70%)"


def _load_quality():
    spec = importlib.util.spec_from_file_location("ds3kit_benchmark_quality", QUALITY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks the module up while building Arm
    spec.loader.exec_module(module)
    return module


quality = _load_quality()


def _arm(brain_psnr: float, std: float = 0.0, *, tumour_psnr: float | None = None, ssim: float = 0.8,
         tumour_std: float | None = None) -> dict[str, tuple[float, float]]:
    """One arm of a hand-made summary table: every metric quality.py reads, as (mean, std)."""
    tumour_psnr = brain_psnr - 2.0 if tumour_psnr is None else tumour_psnr
    tumour_std = std if tumour_std is None else tumour_std
    return {
        "brain_psnr": (brain_psnr, std), "brain_ssim": (ssim, 0.01), "brain_mse": (0.01, 0.001),
        "tumour_psnr": (tumour_psnr, tumour_std), "tumour_ssim": (ssim - 0.1, 0.01), "tumour_mse": (0.02, 0.001),
    }


def _line(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, (prefix, lines)
    return found[0]


# --- claims -----------------------------------------------------------------------------------------------------


def test_claim_holds_when_ds3net_beats_paired_only_by_more_than_the_larger_std() -> None:
    table = {PAIRED: _arm(20.0, 0.3, ssim=0.80), DS3: _arm(21.0, 0.5, ssim=0.82)}
    lines = quality.claims(table, seeds=3)
    assert not any("one seed" in line for line in lines)
    first = _line(lines, "1. ")
    assert "PSNR +1.00 dB" in first and "SSIM +0.0200" in first
    assert "better" in first and "holds" in first and "not reproduced" not in first
    assert "within noise" not in first


def test_claim_is_not_reproduced_within_the_spread_over_seeds() -> None:
    # +0.4 dB would clear the 0.1 dB floor, but not DS3-Net's 0.5 dB std over seeds.
    table = {PAIRED: _arm(20.0, 0.2, ssim=0.80), DS3: _arm(20.4, 0.5, ssim=0.82)}
    first = _line(quality.claims(table, seeds=3), "1. ")
    assert "PSNR +0.40 dB" in first
    assert "is not reproduced" in first and "holds" not in first
    assert "within noise (|delta| <= 0.50 dB)" in first
    # The larger of the two stds is the noise, whichever arm has it.
    table = {PAIRED: _arm(20.0, 0.6, ssim=0.80), DS3: _arm(20.4, 0.1, ssim=0.82)}
    assert "within noise (|delta| <= 0.60 dB)" in _line(quality.claims(table, seeds=3), "1. ")


def test_claim_is_not_reproduced_when_ssim_drops_even_if_psnr_rises() -> None:
    table = {PAIRED: _arm(20.0, 0.1, ssim=0.82), DS3: _arm(22.0, 0.1, ssim=0.80)}
    first = _line(quality.claims(table, seeds=3), "1. ")
    assert "better" in first and "is not reproduced" in first


def test_one_seed_says_no_spread_was_measured_and_uses_the_floor() -> None:
    # With one seed the stds (all zero here, but large ones too) are not a spread: 0.1 dB is the noise.
    table = {PAIRED: _arm(20.0, 5.0, ssim=0.80), DS3: _arm(20.3, 5.0, ssim=0.82)}
    lines = quality.claims(table, seeds=1)
    assert "one seed" in lines[0] and "no spread" in lines[0] and "0.1 dB" in lines[0]
    first = _line(lines, "1. ")
    assert "holds" in first and "better" in first  # +0.30 dB > 0.1 dB, the 5 dB "std" ignored
    table = {PAIRED: _arm(20.0, ssim=0.80), DS3: _arm(20.05, ssim=0.82)}
    first = _line(quality.claims(table, seeds=1), "1. ")
    assert "within noise (|delta| <= 0.10 dB)" in first and "is not reproduced" in first


def test_tumour_line_and_pix2pix_gap() -> None:
    table = {PAIRED: _arm(20.0, 0.1, tumour_psnr=15.0), DS3: _arm(21.0, 0.1, tumour_psnr=15.05),
             PIX: _arm(24.0, 0.1)}
    lines = quality.claims(table, seeds=3)
    second = _line(lines, "2. ")
    assert "PSNR +0.05 dB" in second and "within noise" in second and "+1.00 dB in the brain" in second
    third = _line(lines, "3. ")
    # pix2pix is 3 dB above DS3-Net; paired-only -> pix2pix spans 4 dB, of which DS3-Net covers 1 dB = 25 %.
    assert "+3.00 dB" in third and "+4.00 dB" in third and "25 %" in third


def test_ablation_lines_have_the_sign_of_the_change_from_removing_the_part() -> None:
    table = {
        PAIRED: _arm(20.0, 0.1), DS3: _arm(22.0, 0.1, tumour_psnr=18.0),
        # The difficulty map helps: without it, 1 dB worse in the brain and 2 dB worse in the tumour.
        "DS3-Net 5% - difficulty map": _arm(21.0, 0.1, tumour_psnr=16.0),
        # The patchwise loss hurts: without it, better.
        "DS3-Net 5% - patchwise loss": _arm(22.5, 0.1, tumour_psnr=18.8),
        # Feature distillation does nothing measurable.
        "DS3-Net 5% - feature distillation": _arm(22.05, 0.1, tumour_psnr=17.95),
    }
    lines = quality.claims(table, seeds=3)
    ablations = [line for line in lines if line.startswith("4. ")]
    assert len(ablations) == 3, lines
    difficulty = _line(lines, "4. Removing the difficulty map ")
    assert "brain PSNR by -1.00 dB (worse)" in difficulty and "tumour PSNR by -2.00 dB (worse)" in difficulty
    patchwise = _line(lines, "4. Removing the patchwise loss ")
    assert "brain PSNR by +0.50 dB (better)" in patchwise and "tumour PSNR by +0.80 dB (better)" in patchwise
    feature = _line(lines, "4. Removing the feature distillation ")
    assert "brain PSNR by +0.05 dB (within noise" in feature and "tumour PSNR by -0.05 dB (within noise" in feature
    # Ablations need DS3-Net itself to compare with.
    assert not any(line.startswith("4. ") for line in quality.claims(
        {"DS3-Net 5% - difficulty map": _arm(21.0)}, seeds=3))


def test_probe_arm_line_compares_with_ds3net_and_paired_only() -> None:
    table = {PAIRED: _arm(20.0, 0.1), DS3: _arm(21.0, 0.2), PROBE: _arm(20.5, 0.3)}
    lines = quality.claims(table, seeds=3)
    fifth = _line(lines, "5. ")
    assert fifth.startswith(f"5. {PROBE}: ")
    assert "-0.50 dB against DS3-Net 5 % (worse)" in fifth
    assert "+0.50 dB against paired-only (better)" in fifth
    assert not any(line.startswith("4. ") for line in lines)  # the probe is not an ablation
    # Within the probe's own spread: noise.
    table[PROBE] = _arm(20.5, 0.8)
    fifth = _line(quality.claims(table, seeds=3), "5. ")
    assert "against DS3-Net 5 % (within noise (|delta| <= 0.80 dB))" in fifth
    # Without paired-only there is nothing to put it beside.
    assert not any(line.startswith("5. ") for line in quality.claims({DS3: _arm(21.0), PROBE: _arm(20.5)}, seeds=3))


def test_claims_without_the_compared_arms_says_nothing_about_them() -> None:
    assert quality.claims({PIX: _arm(24.0)}, seeds=3) == []
    assert len(quality.claims({PIX: _arm(24.0)}, seeds=1)) == 1  # only the one-seed note


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
        {"teacher/train_paired": {"brain_psnr": 30.0, "tumour_psnr": 25.0, "brain_ssim": 0.9},
         "teacher/test": {"brain_psnr": 20.0, "tumour_psnr": 15.0, "brain_ssim": 0.7},
         "student/train_unpaired": {"brain_psnr": 21.0, "brain_ssim": 0.71}},
        {"teacher/train_paired": {"brain_psnr": 32.0, "tumour_psnr": 27.0, "brain_ssim": 0.92},
         "teacher/test": {"brain_psnr": 22.0, "tumour_psnr": 17.0, "brain_ssim": 0.76},
         "student/train_unpaired": {"brain_psnr": 23.0, "brain_ssim": 0.73}},
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


@pytest.mark.slow
def test_smoke_study_end_to_end_then_everything_is_reused(small_cohort: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "out", tmp_path / "q.md"
    argv = ["--smoke", "--device", "cpu", "--data", str(small_cohort), "--arms", PAIRED, DS3,
            "--out", str(out), "--report", str(report)]
    assert quality.main(argv) == 0

    text = report.read_text()
    assert "2 run(s) trained by this invocation (0 reused" in text
    assert "1 seed(s) (0)" in text
    rows = _table_rows(text)
    arm_rows = [row for row in rows if row.startswith((f"| {PAIRED} |", f"| {DS3} |"))]
    assert [row.split(" | ")[0] for row in arm_rows] == [f"| {PAIRED}", f"| {DS3}"]
    for row in arm_rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        assert len(cells) == len(quality.METRICS) and "n/a" not in cells and "±" not in cells  # one seed: no std
        assert all(float(cell) == float(cell) for cell in cells)  # numbers, not NaN
    assert "(one seed: no spread" in text and "\n1. DS3-Net at 5 %" in text

    section = text.split("## Where the student's error comes from", 1)[1].split("\n## ", 1)[0]
    diag_rows = _table_rows(section)[1:]  # past the header row
    assert [tuple(cell.strip() for cell in row.strip("|").split("|")[:2]) for row in diag_rows] == [
        (model, subset) for model in ("teacher", "student") for subset in ("train paired", "train unpaired", "test")
    ]
    assert not any("n/a" in row for row in diag_rows)

    png = report.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    run_dirs = sorted(path for path in out.iterdir() if path.is_dir())
    assert len(run_dirs) == 2 and all((path / "metrics.json").is_file() for path in run_dirs)
    ds3_dirs = [path for path in run_dirs if path.name.startswith("ds3net-")]
    assert len(ds3_dirs) == 1
    diagnostics = json.loads((ds3_dirs[0] / "diagnostics.json").read_text())
    assert set(diagnostics) == {f"{m}/{s}" for m in ("teacher", "student") for s in quality.DIAGNOSTIC_SUBSETS}

    # A second identical call trains nothing and gives the same tables (diagnostics from their cache).
    mtimes = {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()}
    assert quality.main(argv) == 0
    again = report.read_text()
    assert "0 run(s) trained by this invocation (2 reused" in again
    assert _table_rows(again) == rows
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file()} == mtimes
    assert "![quality](q.png)" in again  # the picture link follows --report's name

    # Finished runs of other settings are never passed off as this study's.
    with pytest.raises(SystemExit, match="pass another --out"):
        quality.main([arg for arg in argv if arg != "--smoke"])  # the full-size settings, same --out


def test_claims_without_tumour_metrics_do_not_crash() -> None:
    table = {
        "paired-only 5%": {"brain_psnr": (20.0, 0.0), "brain_ssim": (0.80, 0.0)},
        "DS3-Net 5%": {"brain_psnr": (21.0, 0.0), "brain_ssim": (0.82, 0.0)},
        "DS3-Net 5% - difficulty map": {"brain_psnr": (20.5, 0.0), "brain_ssim": (0.81, 0.0)},
    }
    lines = quality.claims(table, 1)
    assert "holds" in _line(lines, "1.")
    assert "not measured" in _line(lines, "2.")
    assert "not measured" in _line(lines, "4.")
