"""The preprocessed cache: equality with the direct path, invalidation, resume after a kill, every bad case named."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ds3kit.cli import main as cli_main
from ds3kit.data import (
    CACHE_TOLERANCE,
    CachedCase,
    CachedSessions,
    CachedSliceDataset,
    SliceDataset,
    default_cache_dir,
    load_brats_case,
    preprocess_cases,
    write_phantom_cohort,
)
from ds3kit.data.phantom import phantom_affine
from ds3kit.errors import InputError

from .conftest import SMALL_SHAPE, write_nifti

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> list[Path]:
    return write_phantom_cohort(
        tmp_path_factory.mktemp("cohort") / "c", cases=3, shape=SMALL_SHAPE, seed=2, progress=False
    )


@pytest.fixture(scope="module")
def cached(cohort, tmp_path_factory):
    return preprocess_cases(cohort, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def _copy_cohort(cohort: list[Path], folder: Path) -> list[Path]:
    import shutil

    return [Path(shutil.copytree(case, folder / case.name)) for case in cohort]


def _entries(cache_dir: Path) -> list[str]:
    return sorted(path.name for path in cache_dir.iterdir() if not path.name.startswith("."))


def test_float16_bound_is_the_stated_tolerance():
    values = np.linspace(0.0, 1.0, 1_000_001, dtype=np.float32)
    error = np.abs(values.astype(np.float16).astype(np.float32) - values).max()
    assert error <= CACHE_TOLERANCE <= 1e-3
    assert error > CACHE_TOLERANCE / 2  # the bound is tight, not loose


@pytest.mark.parametrize("image_size", [None, 24, 36, 41, 64])
@pytest.mark.parametrize("min_brain_fraction", [0.0, 0.05])
def test_cached_slices_equal_direct_slices(cohort, cached, image_size, min_brain_fraction):
    direct = SliceDataset(cohort, with_target=True, image_size=image_size, min_brain_fraction=min_brain_fraction)
    from_cache = CachedSliceDataset(
        cached.cases, with_target=True, image_size=image_size, min_brain_fraction=min_brain_fraction
    )
    assert from_cache.index == direct.index
    worst = 0.0
    for index in range(len(direct)):
        expected, item = direct[index], from_cache[index]
        assert list(item) == list(expected)
        for key in ("inputs", "target"):
            assert item[key].dtype == torch.float32 and item[key].shape == expected[key].shape
            worst = max(worst, float((item[key] - expected[key]).abs().max()))
        for key in ("brain_mask", "tumour_mask", "seg"):
            assert torch.equal(item[key], expected[key]), key
        assert (item["case_index"], item["slice_index"]) == (expected["case_index"], expected["slice_index"])
    assert 0.0 < worst <= CACHE_TOLERANCE


def test_cached_unpaired_items_have_no_target(cached):
    dataset = CachedSliceDataset([case.folder for case in cached.cases], with_target=False, image_size=40)
    item = dataset[len(dataset) // 2]
    assert "target" not in item and item["inputs"].shape == (3, 40, 40)
    assert all("target" not in case._arrays for case in dataset.cases)  # the T1ce file is never mapped


def test_cached_sessions_match_direct_sessions(cohort, cached):
    sessions = CachedSessions(cached.cases)
    assert len(sessions) == 3 and isinstance(sessions[1:], CachedSessions)
    for case_dir, session in zip(cohort, sessions):
        direct = load_brats_case(case_dir)
        assert session.case_id == direct.case_id and session.shape == direct.shape
        np.testing.assert_allclose(session.inputs, direct.inputs, rtol=0, atol=CACHE_TOLERANCE)
        np.testing.assert_allclose(session.target, direct.target, rtol=0, atol=CACHE_TOLERANCE)
        np.testing.assert_array_equal(session.brain_mask, direct.brain_mask)
        np.testing.assert_array_equal(session.seg, direct.seg)
        np.testing.assert_array_equal(session.affine, direct.affine)
        assert session.header.binaryblock == direct.header.binaryblock
        assert session.scalings == direct.scalings
    unpaired = CachedSessions(cached.cases, with_target=False)[0]
    assert unpaired.target is None and "t1ce" not in unpaired.scalings


def test_storage_is_slice_major_float16_cropped_to_the_brain(cached):
    case = cached.cases[0]
    inputs = case.array("inputs")
    assert isinstance(inputs, np.memmap) and inputs.dtype == np.float16 and inputs.flags.c_contiguous
    (x0, x1), (y0, y1), (z0, z1) = case.box
    assert inputs.shape == (z1 - z0, 3, x1 - x0, y1 - y0)
    assert (x1 - x0) * (y1 - y0) * (z1 - z0) < 0.8 * np.prod(case.shape)  # the crop drops the empty border
    assert case.array("brain_mask").dtype == bool and case.array("seg").dtype == np.uint8
    assert case.stored_slice("inputs", z0 - 1 if z0 > 0 else z1) is None
    copy = pickle.loads(pickle.dumps(case))  # a worker under spawn: the manifest travels, the arrays are re-mapped
    assert copy._arrays == {} and len(pickle.dumps(case)) < 20_000
    np.testing.assert_array_equal(copy.array("inputs")[0], inputs[0])


def test_default_cache_dir_follows_ds3kit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DS3KIT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "preprocessed"
    monkeypatch.delenv("DS3KIT_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "ds3kit" / "preprocessed"


def test_a_changed_file_rebuilds_that_case_alone(cohort, tmp_path):
    cases = _copy_cohort(cohort, tmp_path / "data")
    cache = tmp_path / "cache"
    first = preprocess_cases(cases, cache_dir=cache, progress=False)
    assert first.built == cases and first.reused == []
    before = _entries(cache)
    again = preprocess_cases(cases, cache_dir=cache, progress=False)
    assert again.built == [] and again.reused == cases and _entries(cache) == before

    # Rewrite one case's FLAIR with other intensities (a new size and mtime): only that case is rebuilt.
    flair = cases[1] / f"{cases[1].name}_flair.nii.gz"
    data = np.asarray(__import__("nibabel").load(flair).dataobj, dtype=np.float32)
    write_nifti(flair, np.sqrt(data), phantom_affine(SMALL_SHAPE))
    os.utime(flair, ns=(flair.stat().st_atime_ns, flair.stat().st_mtime_ns + 10**9))
    changed = preprocess_cases(cases, cache_dir=cache, progress=False)
    assert changed.built == [cases[1]] and changed.reused == [cases[0], cases[2]]
    after = _entries(cache)
    assert len(after) == 3 and len(set(after) - set(before)) == 1  # the superseded entry is gone
    direct = load_brats_case(cases[1])
    np.testing.assert_allclose(changed[cases[1]].session().inputs, direct.inputs, rtol=0, atol=CACHE_TOLERANCE)


def test_a_changed_option_or_format_rebuilds(cohort, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    case = _copy_cohort(cohort[:1], tmp_path / "data")
    seg = case[0] / f"{case[0].name}_seg.nii.gz"
    labels = np.asarray(__import__("nibabel").load(seg).dataobj)
    write_nifti(seg, np.where(labels == 4, 1, labels).astype(np.uint8), phantom_affine(SMALL_SHAPE))  # valid in both
    auto = preprocess_cases(case, cache_dir=cache, progress=False)
    explicit = preprocess_cases(case, cache_dir=cache, label_convention="brats2020", progress=False)
    assert explicit.reused == case  # "auto" resolved to the same convention: the same entry
    other = preprocess_cases(case, cache_dir=cache, label_convention="brats2023", progress=False)
    assert other.built == case and other.cases[0].label_convention == "brats2023"
    assert len(_entries(cache)) == 2 and auto.cases[0].folder.is_dir()  # both option sets stay usable
    monkeypatch.setattr("ds3kit.data.cache.CACHE_FORMAT_VERSION", 99)
    newer = preprocess_cases(case, cache_dir=cache, progress=False)
    assert newer.built == case


def test_every_bad_case_is_named_at_once_and_good_cases_stay_cached(cohort, tmp_path):
    cases = _copy_cohort(cohort, tmp_path / "data")
    (cases[0] / f"{cases[0].name}_flair.nii.gz").unlink()
    (cases[2] / f"{cases[2].name}_t2.nii.gz").write_bytes(b"not a nifti")
    cache = tmp_path / "cache"
    with pytest.raises(InputError) as caught:
        preprocess_cases(cases, cache_dir=cache, progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("2 of 3 case(s) cannot be used: ")
    assert f"{cases[0]}: missing modality flair" in message
    assert f"{cases[2] / (cases[2].name + '_t2.nii.gz')}: not a readable NIfTI image" in message
    assert _entries(cache) == [name for name in _entries(cache) if name.startswith("Phantom_002-")] and _entries(cache)


_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import ds3kit.data.cache as cache

    cases, folder = sys.argv[1:-1], sys.argv[-1]
    real_write, written = cache._write_npy, []

    def write_then_die(path, array):
        real_write(path, array)
        written.append(path)
        if len(written) > 2 * 4:  # two whole cases (4 arrays each), then one array of the third
            os.kill(os.getpid(), signal.SIGKILL)

    cache._write_npy = write_then_die
    cache.preprocess_cases(cases, cache_dir=folder, progress=False)
""")


def test_preprocessing_resumes_after_a_kill(cohort, tmp_path):
    cases = _copy_cohort(cohort, tmp_path / "data") + _copy_cohort(cohort[:1], tmp_path / "more")
    cache = tmp_path / "cache"
    run = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, *map(str, cases), str(cache)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    finished = _entries(cache)
    assert len(finished) == 2  # the third case died half-written: no entry for it
    partial = [path for path in cache.iterdir() if path.name.endswith(".partial")]
    assert len(partial) == 1 and (partial[0] / "inputs.npy").is_file()
    stamps = {name: (cache / name / "case.json").stat().st_mtime_ns for name in finished}

    resumed = preprocess_cases(cases, cache_dir=cache, progress=False)
    assert resumed.reused == cases[:2] and resumed.built == cases[2:]
    assert {name: (cache / name / "case.json").stat().st_mtime_ns for name in finished} == stamps  # not redone
    assert not any(path.name.endswith(".partial") for path in cache.iterdir())  # the dead run's folder is removed
    assert len(_entries(cache)) == 4


def test_preprocess_cli(cohort, tmp_path, capsys):
    root = tmp_path / "data"
    _copy_cohort(cohort, root)
    assert cli_main(["preprocess", "--data", str(root), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    assert "(3 built, 0 already cached" in capsys.readouterr().out
    assert cli_main(["preprocess", "--data", str(root), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    assert "(0 built, 3 already cached" in capsys.readouterr().out
    (root / "Phantom_002" / "Phantom_002_t1.nii.gz").unlink()
    assert cli_main(["preprocess", "--data", str(root), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 2
    assert "ds3kit preprocess: error: 1 of 3 case(s) cannot be used: " in capsys.readouterr().err


def test_preprocess_with_worker_processes(cohort, tmp_path):
    result = preprocess_cases(cohort, cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert sorted(result.built) == sorted(cohort) and [case.case_id for case in result.cases] == [
        c.name for c in cohort
    ]
    reference = preprocess_cases(cohort, cache_dir=tmp_path / "serial", progress=False)
    for ours, theirs in zip(result.cases, reference.cases):
        np.testing.assert_array_equal(ours.array("inputs"), theirs.array("inputs"))


def test_cached_case_errors(tmp_path, cached):
    with pytest.raises(InputError, match="not a ds3kit preprocessed case"):
        CachedCase(tmp_path)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        preprocess_cases([], cache_dir=tmp_path, workers=-1)
    with pytest.raises(ValueError, match="min_brain_fraction"):
        CachedSliceDataset(cached.cases, with_target=False, min_brain_fraction=1.5)
