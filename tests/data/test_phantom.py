from __future__ import annotations

import numpy as np
import pytest

from ds3kit.data import phantom as phantom_module
from ds3kit.data.phantom import (
    PHANTOM_FORMAT_VERSION,
    case_seed,
    default_cohort,
    make_phantom_case,
    write_phantom_cohort,
)
from ds3kit.data.session import list_cases, load_brats_case
from ds3kit.errors import InputError

from .conftest import SMALL_SHAPE

MEDIUM_SHAPE = (61, 59, 31)


@pytest.fixture(scope="module")
def medium_cases() -> list[dict[str, np.ndarray]]:
    return [make_phantom_case(MEDIUM_SHAPE, seed=seed) for seed in (11, 12, 13)]


def test_types_shapes_labels(small_case):
    assert set(small_case) == {"t1", "t1ce", "t2", "flair", "seg"}
    for name in ("t1", "t1ce", "t2", "flair"):
        assert small_case[name].dtype == np.float32 and small_case[name].shape == SMALL_SHAPE
        assert small_case[name].min() >= 0.0 and np.isfinite(small_case[name]).all()
    assert small_case["seg"].dtype == np.uint8
    assert set(np.unique(small_case["seg"])) <= {0, 1, 2, 4}
    brain = small_case["t1"] > 0
    assert not small_case["seg"][~brain].any()  # tumour lies inside the brain
    for name in ("t1ce", "t2", "flair"):
        np.testing.assert_array_equal(small_case[name] > 0, brain)  # skull-stripped: one shared zero background


def test_deterministic_per_seed_and_different_across_seeds():
    a, b, c = (make_phantom_case(SMALL_SHAPE, seed=s) for s in (1, 1, 2))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["t1"], c["t1"]) and not np.array_equal(a["seg"], c["seg"])


def _mean(case, modality, region):
    return float(case[modality][region].mean())


def test_contrasts_follow_the_tissue_table(medium_cases):
    enhancing = [case for case in medium_cases if (case["seg"] == 4).sum() > 5]
    assert len(enhancing) >= 2  # most gliomas here enhance; some (low-grade-like) do not
    for case in enhancing:
        seg = case["seg"]
        rim, core, oedema = seg == 4, seg == 1, seg == 2
        assert oedema.sum() > 5
        healthy = (case["t1"] > 0) & (seg == 0)
        # the enhancing rim is the brightest tumour region in T1ce, far above the healthy brain ...
        assert _mean(case, "t1ce", rim) > 1.15 * _mean(case, "t1ce", healthy)
        assert _mean(case, "t1ce", rim) > 1.3 * _mean(case, "t1ce", oedema)
        # ... yet not in T1: the rim is darker there than healthy tissue (enhancement is gadolinium only)
        assert _mean(case, "t1", rim) < _mean(case, "t1", healthy)
        # oedema is FLAIR- and T2-bright
        assert _mean(case, "flair", oedema) > 1.3 * _mean(case, "flair", healthy)
        assert _mean(case, "t2", oedema) > 1.3 * _mean(case, "t2", healthy)
        # and the rim differs from its neighbours in the inputs: so it is inferable without T1ce
        assert abs(_mean(case, "flair", rim) - _mean(case, "flair", oedema)) > 0.05 * _mean(case, "flair", oedema)
        if core.sum() > 20:
            assert _mean(case, "t2", core) > _mean(case, "t2", rim)
            assert _mean(case, "t1ce", core) < 0.6 * _mean(case, "t1ce", rim)


def test_bright_csf_in_t2_dark_in_flair(medium_cases):
    case = medium_cases[0]
    brain = (case["t1"] > 0) & (case["seg"] == 0)
    bright_t2 = brain & (case["t2"] > np.percentile(case["t2"][brain], 97))
    assert _mean(case, "flair", bright_t2) < _mean(case, "flair", brain)  # fluid suppressed


def test_subjects_vary(medium_cases):
    tumour_sizes = [int((case["seg"] > 0).sum()) for case in medium_cases]
    brain_sizes = [int((case["t1"] > 0).sum()) for case in medium_cases]
    assert len(set(tumour_sizes)) == 3 and len(set(brain_sizes)) == 3
    scales = [float(np.median(case["t1"][case["t1"] > 0])) for case in medium_cases]
    assert max(scales) / min(scales) > 1.1  # per-subject intensity scale


def test_case_seed_is_stable():
    assert case_seed(0, 3) == case_seed(0, 3) != case_seed(0, 4) != case_seed(1, 3)


def test_write_cohort_layout_and_reading(tmp_path):
    folders = write_phantom_cohort(tmp_path / "cohort", cases=2, shape=SMALL_SHAPE, seed=7, progress=False)
    assert [f.name for f in folders] == ["Phantom_001", "Phantom_002"]
    assert sorted(p.name for p in folders[1].iterdir() if p.is_file()) == [
        f"Phantom_002_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2")
    ]
    assert sorted(p.name for p in (folders[1] / "phantom_truth").iterdir()) == ["t1ce_clean.nii.gz", "tissue.nii.gz"]
    assert list_cases(tmp_path / "cohort") == folders
    session = load_brats_case(folders[1])
    expected = make_phantom_case(SMALL_SHAPE, seed=case_seed(7, 1))
    np.testing.assert_array_equal(session.seg, expected["seg"])
    np.testing.assert_array_equal(session.brain_mask, expected["t1"] > 0)
    np.testing.assert_allclose(session.affine[[0, 1, 2], [0, 1, 2]], [240 / 33, 240 / 37, 155 / 19], rtol=1e-6)


def test_write_cohort_needs_existing_parent(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_phantom_cohort(tmp_path / "a" / "b", cases=1, shape=SMALL_SHAPE, progress=False)
    with pytest.raises(ValueError, match="shape"):
        make_phantom_case((5, 40, 40))


def test_default_cohort_builds_once_and_reuses(tmp_path, monkeypatch):
    calls = []
    original = phantom_module.write_phantom_cohort

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(phantom_module, "write_phantom_cohort", counting)
    monkeypatch.setenv("DS3KIT_CACHE", str(tmp_path / "cache"))
    root = default_cohort(cases=2, shape=SMALL_SHAPE, seed=1)
    assert root.parent == tmp_path / "cache" and f"v{PHANTOM_FORMAT_VERSION}" in root.name and "33x37x19" in root.name
    assert len(list_cases(root)) == 2 and (root / "cohort.json").is_file()
    assert default_cohort(cases=2, shape=SMALL_SHAPE, seed=1) == root
    assert len(calls) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [root.name]  # no temporary left


def test_interrupted_default_cohort_leaves_nothing(tmp_path, monkeypatch):
    original = phantom_module.make_phantom_case
    made = []

    def failing(*args, **kwargs):
        made.append(1)
        if len(made) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(phantom_module, "make_phantom_case", failing)
    with pytest.raises(KeyboardInterrupt):
        default_cohort(tmp_path, cases=3, shape=SMALL_SHAPE)
    assert list(tmp_path.iterdir()) == []
