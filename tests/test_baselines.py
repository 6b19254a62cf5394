"""The reference predictors (copy-T1, linear, the phantom's ceilings) against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ds3kit.baselines import (
    CEILING_NOISE_FREE,
    CEILING_TISSUE,
    COPY_T1,
    LINEAR,
    LinearBaseline,
    ceiling_predictors,
    copy_t1,
    reference_predictors,
    tissue_errors,
    tissue_map_ceiling,
)
from ds3kit.data import load_brats_case
from ds3kit.data.phantom import TISSUE_CONTRASTS, load_phantom_truth, make_phantom_case, write_phantom_cohort
from ds3kit.evaluation import evaluate_predictor
from ds3kit.train.trainer import format_table


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    folders = write_phantom_cohort(root / "phantom", cases=3, shape=(29, 31, 13), seed=5, progress=False)
    return folders, [load_brats_case(folder) for folder in folders]


def test_copy_t1_is_the_normalised_t1_inside_the_brain(cohort):
    _, sessions = cohort
    session = sessions[0]
    prediction = copy_t1(session)
    brain = session.brain_mask
    np.testing.assert_array_equal(prediction[brain], session.inputs[0][brain])
    assert not prediction[~brain].any()
    assert prediction.dtype == np.float32 and prediction.shape == session.shape


def test_linear_matches_an_independent_least_squares_fit(cohort):
    _, sessions = cohort
    paired = sessions[:2]
    fitted = LinearBaseline.fit(paired)
    # Independent: one float64 lstsq over the concatenated brain voxels (no normal equations).
    design = np.concatenate(
        [np.column_stack([*(s.inputs[c][s.brain_mask] for c in range(3)), np.ones(s.brain_mask.sum())]) for s in paired]
    ).astype(np.float64)
    target = np.concatenate([s.target[s.brain_mask] for s in paired]).astype(np.float64)
    expected = np.linalg.lstsq(design, target, rcond=None)[0]
    np.testing.assert_allclose([*fitted.weights, fitted.intercept], expected, rtol=1e-6, atol=1e-8)

    test = sessions[2]
    manual = np.clip(np.einsum("c,cxyz->xyz", expected[:3], test.inputs.astype(np.float64)) + expected[3], 0, 1)
    manual[~test.brain_mask] = 0
    np.testing.assert_allclose(fitted(test), manual, atol=1e-5)


def test_linear_recovers_a_known_line(cohort):
    _, sessions = cohort
    session = sessions[0]
    weights = np.array([0.5, -0.2, 0.3], dtype=np.float32)
    target = np.tensordot(weights, session.inputs, axes=1) + 0.3  # unclipped: least squares must find it exactly
    target[~session.brain_mask] = 0
    planted = type(session)(**{**vars(session), "target": target.astype(np.float32)})
    fitted = LinearBaseline.fit([planted])
    np.testing.assert_allclose(fitted.weights, weights, atol=1e-4)
    assert fitted.intercept == pytest.approx(0.3, abs=1e-4)


def test_linear_refuses_no_sessions_and_unpaired_sessions(cohort):
    _, sessions = cohort
    with pytest.raises(ValueError, match="at least one paired session"):
        LinearBaseline.fit([])
    unpaired = type(sessions[0])(**{**vars(sessions[0]), "target": None})
    with pytest.raises(ValueError, match="has no T1ce"):
        LinearBaseline.fit([unpaired])


def test_reference_predictors_accept_a_lazy_iterable(cohort):
    folders, sessions = cohort
    lazy = (load_brats_case(folder) for folder in folders[:2])
    predictors = reference_predictors(lazy)
    assert list(predictors) == [COPY_T1, LINEAR]
    assert list(reference_predictors(iter(()))) == [COPY_T1]


def test_phantom_truth_is_written_and_does_not_change_the_cohort(cohort):
    folders, sessions = cohort
    truth = load_phantom_truth(folders[0])
    assert truth is not None and truth["tissue"].shape == sessions[0].shape
    plain = make_phantom_case((29, 31, 13), seed=11)
    with_truth = make_phantom_case((29, 31, 13), seed=11, with_truth=True)
    for name, volume in plain.items():
        np.testing.assert_array_equal(volume, with_truth[name])
    # The clean T1ce differs from the noisy one by the noise only.
    brain = with_truth["t1ce"] > 0
    relative = (
        np.abs(with_truth["t1ce"] - with_truth["t1ce_clean"])[brain].mean() / with_truth["t1ce_clean"][brain].mean()
    )
    assert 0.0 < relative < 0.1


def test_the_noise_free_ceiling_ranks_above_copy_t1_and_the_tissue_map(cohort):
    folders, sessions = cohort
    ceilings = ceiling_predictors(folders)
    assert ceilings is not None and set(ceilings) == {CEILING_TISSUE, CEILING_NOISE_FREE}
    copy = evaluate_predictor(copy_t1, sessions).mean["brain_psnr"]
    tissue = evaluate_predictor(ceilings[CEILING_TISSUE], sessions).mean["brain_psnr"]
    clean = evaluate_predictor(ceilings[CEILING_NOISE_FREE], sessions).mean["brain_psnr"]
    # The noise-free T1ce is above both. Copy-T1 against the tissue map is not a property of the ceiling: on grids
    # this small, where most brain voxels are partial-volume edges, a hard tissue map can fall below it.
    assert max(copy, tissue) < clean


def test_tissue_ceiling_is_one_line_of_the_nominal_contrasts(cohort):
    folders, sessions = cohort
    session = sessions[1]
    tissue = load_phantom_truth(folders[1])["tissue"]
    prediction = tissue_map_ceiling(session, tissue)
    nominal = np.array([c[1] for c in TISSUE_CONTRASTS.values()])[tissue][session.brain_mask]
    values = prediction[session.brain_mask]
    # An affine function of the nominal contrast: equal contrasts give equal predictions.
    for level in np.unique(nominal):
        assert np.ptp(values[nominal == level]) < 1e-5


def test_tissue_errors_split_the_brain_mse_by_tissue(cohort):
    folders, sessions = cohort
    session = sessions[2]
    tissue = load_phantom_truth(folders[2])["tissue"]
    brain = session.brain_mask
    prediction = copy_t1(session)
    errors = tissue_errors(prediction, session.target, tissue, brain)
    assert list(errors) == list(TISSUE_CONTRASTS)
    # Independently: a Python loop over the brain voxels, in float64.
    expected = {name: [0.0, 0] for name in TISSUE_CONTRASTS}
    names = list(TISSUE_CONTRASTS)
    for index in zip(*np.nonzero(brain)):
        entry = expected[names[tissue[index]]]
        entry[0] += (float(prediction[index]) - float(session.target[index])) ** 2
        entry[1] += 1
    for name, (total, count) in errors.items():
        assert count == expected[name][1]
        assert total == pytest.approx(expected[name][0], rel=1e-9, abs=1e-12)
    # The tissues' sums add up to the brain's MSE, which the metrics report.
    pooled = sum(total for total, _ in errors.values()) / sum(count for _, count in errors.values())
    assert pooled == pytest.approx(float(np.mean((prediction[brain] - session.target[brain].astype(np.float64)) ** 2)))
    assert sum(count for _, count in errors.values()) == int(brain.sum())
    # A perfect prediction has no error anywhere; one error of 0.5 in one white-matter voxel lands there alone.
    perfect = tissue_errors(session.target, session.target, tissue, brain)
    assert all(total == 0.0 for total, _ in perfect.values())
    voxel = tuple(np.argwhere(brain & (tissue == names.index("white_matter")))[0])
    shifted = session.target.copy()
    shifted[voxel] += 0.5
    one = tissue_errors(shifted, session.target, tissue, brain)
    assert one["white_matter"][0] == pytest.approx(0.25)
    assert sum(total for name, (total, _) in one.items() if name != "white_matter") == 0.0


def test_tissue_errors_reject_bad_input(cohort):
    folders, sessions = cohort
    session = sessions[0]
    tissue = load_phantom_truth(folders[0])["tissue"]
    with pytest.raises(ValueError, match="one shape"):
        tissue_errors(session.target[:-1], session.target, tissue, session.brain_mask)
    bad = tissue.astype(np.int64)
    bad[session.brain_mask] = len(TISSUE_CONTRASTS)
    with pytest.raises(ValueError, match="tissue codes"):
        tissue_errors(session.target, session.target, bad, session.brain_mask)


def test_ceilings_absent_without_phantom_truth(tmp_path, cohort):
    folders, _ = cohort
    assert ceiling_predictors([tmp_path]) is None


def _report(model_psnr: float) -> dict:
    def result(psnr):
        return {"mean": {"brain_psnr": psnr, "brain_ssim": 0.8}, "std": {}}

    return {
        "method": "m",
        "steps": 1,
        "paired_fraction": 0.05,
        "shipped": "student",
        "models": {"student": result(model_psnr)},
        "baselines": {COPY_T1: result(17.0), LINEAR: result(17.5), CEILING_TISSUE: result(23.0)},
    }


def test_table_flags_a_model_that_loses_to_copy_t1():
    losing = format_table(_report(16.5))
    assert "LOSES TO COPY-T1" in losing and "-0.50 dB" in losing
    winning = format_table(_report(19.0))
    assert "LOSES TO COPY-T1" not in winning and "+2.00 dB" in winning
    assert "tissue map 4.00 dB" in winning


def test_evaluate_predictor_checks_the_shape(cohort):
    _, sessions = cohort
    with pytest.raises(ValueError, match="prediction must be"):
        evaluate_predictor(lambda s: np.zeros((2, 2, 2), np.float32), sessions[:1])


def test_evaluate_predictor_scores_like_region_metrics(cohort):
    from ds3kit.metrics import psnr

    _, sessions = cohort
    session = sessions[0]
    result = evaluate_predictor(copy_t1, [session]).mean["brain_psnr"]
    expected = psnr(
        torch.from_numpy(copy_t1(session))[None, None],
        torch.from_numpy(session.target)[None, None],
        mask=torch.from_numpy(session.brain_mask)[None, None],
    )
    assert result == pytest.approx(float(expected), rel=1e-6)


def test_paired_levels_ceiling_paints_each_tissue_with_its_paired_mean(cohort):
    from ds3kit.baselines import CEILING_PAIRED_LEVELS, tissue_levels

    folders, sessions = cohort
    truths = [load_phantom_truth(folder)["tissue"] for folder in folders]
    levels = tissue_levels(zip(sessions[:2], truths[:2]))
    # Independent: a loop over tissues of the concatenated brain voxels.
    for code in range(len(levels)):
        values = np.concatenate([s.target[(t == code) & s.brain_mask] for s, t in zip(sessions[:2], truths[:2])])
        if values.size:
            assert levels[code] == pytest.approx(values.mean(), rel=1e-5)
    ceilings = ceiling_predictors(folders[2:], folders[:2])
    prediction = ceilings[CEILING_PAIRED_LEVELS](sessions[2])
    brain = sessions[2].brain_mask
    np.testing.assert_allclose(prediction[brain], levels[truths[2]][brain], rtol=1e-6)
    assert CEILING_PAIRED_LEVELS not in ceiling_predictors(folders[2:])


def test_population_levels_ceiling_paints_each_tissue_with_its_training_cohort_mean(cohort):
    from ds3kit.baselines import CEILING_PAIRED_LEVELS, CEILING_POPULATION_LEVELS

    folders, sessions = cohort
    truths = [load_phantom_truth(folder)["tissue"] for folder in folders]
    ceilings = ceiling_predictors(folders[2:], folders[:1], folders[:2])
    test, tissue = sessions[2], truths[2]
    brain = test.brain_mask
    # Independent: per tissue code, the mean normalised T1ce of the voxels of that code in both training subjects,
    # pooled voxel by voxel (not a mean of per-subject means), in float64.
    for name, members in ((CEILING_POPULATION_LEVELS, (0, 1)), (CEILING_PAIRED_LEVELS, (0,))):
        prediction = ceilings[name](test)
        checked = 0
        for code in np.unique(tissue[brain]):
            values = np.concatenate(
                [sessions[i].target[(truths[i] == code) & sessions[i].brain_mask].astype(np.float64) for i in members]
            )
            if values.size:
                np.testing.assert_allclose(prediction[(tissue == code) & brain], values.mean(), rtol=1e-5)
                checked += 1
        assert checked >= 4  # white and grey matter, CSF and the tumour's tissues at least: not a vacuous loop
        assert not prediction[~brain].any()
    assert not np.array_equal(ceilings[CEILING_POPULATION_LEVELS](test), ceilings[CEILING_PAIRED_LEVELS](test))
    assert CEILING_POPULATION_LEVELS not in ceiling_predictors(folders[2:], folders[:1])
