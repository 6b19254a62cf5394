"""The intensity calibration: its map against numpy in float64, its isotonic fit against the minimax formula, the
binned fit against a loop over voxels, and loading generators saved before it existed."""

import numpy as np
import pytest
import torch

from ds3kit.models import CalibrationFit, Generator, IntensityCalibration
from ds3kit.models.calibration import KNOTS, isotonic


def numpy_map(x, source, target):
    """The documented map, written out: linear between knots, slope 1 beyond them, clamped to [0, 1]."""
    y = np.empty_like(x)
    for i, value in enumerate(x):
        if value < source[0]:
            y[i] = value + target[0] - source[0]
        elif value > source[-1]:
            y[i] = value + target[-1] - source[-1]
        else:
            k = max(1, int(np.searchsorted(source, value)))
            w = (value - source[k - 1]) / (source[k] - source[k - 1])
            y[i] = target[k - 1] + w * (target[k] - target[k - 1])
    return np.clip(y, 0.0, 1.0)


def random_knots(rng, knots=KNOTS):
    source = np.sort(rng.uniform(0.05, 0.95, knots))
    target = np.sort(rng.uniform(-0.05, 1.05, knots))
    return source, target


def test_a_new_calibration_is_the_identity():
    calibration = IntensityCalibration()
    x = torch.rand(1000, dtype=torch.float64)
    assert not calibration.fitted
    torch.testing.assert_close(calibration.double()(x), x, rtol=0, atol=1e-12)
    volume = np.random.default_rng(0).random((5, 6, 7), dtype=np.float32)
    np.testing.assert_array_equal(calibration.apply(volume), volume)


def test_the_map_matches_numpy_in_float64_inside_between_and_beyond_the_knots():
    rng = np.random.default_rng(1)
    source, target = random_knots(rng)
    calibration = IntensityCalibration().double()
    calibration.set_knots(source, target)
    x = np.concatenate([rng.random(2000), source, [0.0, 1.0, source[0] / 2, (1 + source[-1]) / 2]])
    actual = calibration(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(actual, numpy_map(x, source, target), rtol=0, atol=1e-12)
    assert calibration.fitted and (np.diff(actual[np.argsort(x)]) >= -1e-15).all()  # monotone


def test_apply_maps_the_mask_and_leaves_the_rest():
    rng = np.random.default_rng(2)
    calibration = IntensityCalibration()
    calibration.set_knots(*random_knots(rng))
    volume = rng.random((6, 5, 4), dtype=np.float32)
    mask = rng.random((6, 5, 4)) > 0.5
    out = calibration.apply(volume, mask)
    np.testing.assert_array_equal(out[~mask], volume[~mask])
    np.testing.assert_allclose(
        out[mask],
        numpy_map(
            volume[mask].astype(np.float64), calibration.source.double().numpy(), calibration.target.double().numpy()
        ),
        atol=1e-6,
    )


def test_bad_knots_are_refused():
    calibration = IntensityCalibration(knots=4)
    with pytest.raises(ValueError, match="must be \\(4,\\)"):
        calibration.set_knots(np.linspace(0, 1, 5), np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="strictly increasing"):
        calibration.set_knots([0.1, 0.1, 0.5, 0.9], [0.0, 0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="non-decreasing"):
        calibration.set_knots([0.1, 0.2, 0.5, 0.9], [0.0, 0.3, 0.2, 0.4])
    with pytest.raises(ValueError, match=">= 2"):
        IntensityCalibration(knots=1)


def minimax_isotonic(values, weights):
    """Weighted isotonic regression by its closed form: y_i = max_{j <= i} min_{k >= i} mean(values[j..k])."""
    n = len(values)
    out = np.empty(n)
    for i in range(n):
        out[i] = max(
            min(np.dot(weights[j : k + 1], values[j : k + 1]) / weights[j : k + 1].sum() for k in range(i, n))
            for j in range(i + 1)
        )
    return out


@pytest.mark.parametrize("seed", range(5))
def test_isotonic_regression_matches_the_minimax_formula(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 25))
    values = np.sort(rng.normal(size=n)) + rng.normal(scale=0.8, size=n)  # a trend with violations
    weights = rng.uniform(0.1, 10.0, n)
    np.testing.assert_allclose(isotonic(values, weights), minimax_isotonic(values, weights), rtol=0, atol=1e-12)


def test_the_binned_fit_matches_a_loop_over_the_voxels():
    rng = np.random.default_rng(3)
    knots = 8
    fit = CalibrationFit(knots)
    subjects = []
    for _ in range(3):  # streamed subject by subject
        prediction = rng.random((10, 9, 8)) ** 2
        target = np.clip(prediction + rng.normal(scale=0.05, size=prediction.shape), 0, 1)
        mask = rng.random(prediction.shape) > 0.3
        fit.add(prediction.astype(np.float32), target.astype(np.float32), mask)
        subjects.append((prediction.astype(np.float32), target.astype(np.float32), mask))
    # The same sums, one voxel at a time.
    sums = {k: [0, 0.0, 0.0] for k in range(knots)}
    for prediction, target, mask in subjects:
        for p, t in zip(prediction[mask].astype(np.float64), target[mask].astype(np.float64)):
            k = min(int(p * knots), knots - 1)
            sums[k][0] += 1
            sums[k][1] += p
            sums[k][2] += t
    assert fit.voxels == sum(s[0] for s in sums.values())
    min_voxels = 120
    kept = [k for k in range(knots) if sums[k][0] >= min_voxels]
    assert 2 <= len(kept) < knots  # some bins fall under the threshold: both paths are exercised
    means_p = np.array([sums[k][1] / sums[k][0] for k in kept])
    means_t = minimax_isotonic(np.array([sums[k][2] / sums[k][0] for k in kept]), np.array([sums[k][0] for k in kept]))
    source, target = fit.knots(min_voxels)
    np.testing.assert_allclose(source[kept], means_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(target[kept], means_t, rtol=0, atol=1e-12)
    dropped = [k for k in range(knots) if k not in kept]
    centres = (np.array(dropped) + 0.5) / knots
    np.testing.assert_allclose(source[dropped], centres)
    np.testing.assert_allclose(target[dropped], numpy_map(centres, means_p, means_t), atol=1e-12)
    assert (np.diff(source) > 0).all() and (np.diff(target) >= 0).all()


def test_a_fit_recovers_a_monotone_distortion_and_lowers_the_error():
    rng = np.random.default_rng(4)
    fit = CalibrationFit()
    prediction = rng.random((40, 40, 20)).astype(np.float32)
    truth = lambda p: 0.5 + 0.45 * np.tanh(4 * (p - 0.5))  # noqa: E731  (sharper than the prediction)
    target = (truth(prediction) + rng.normal(scale=0.02, size=prediction.shape)).astype(np.float32)
    mask = np.ones(prediction.shape, dtype=bool)
    fit.add(prediction, target, mask)
    calibration = IntensityCalibration()
    calibration.set_knots(*fit.knots())
    grid = np.linspace(0.02, 0.98, 97)
    np.testing.assert_allclose(calibration.apply(grid.astype(np.float32)), truth(grid), atol=0.01)
    before = np.mean((prediction - target) ** 2)
    after = np.mean((calibration.apply(prediction) - target) ** 2)
    assert after < 0.25 * before


def test_too_few_voxels_leave_the_identity():
    fit = CalibrationFit()
    fit.add(np.full((3, 3, 3), 0.5, np.float32), np.full((3, 3, 3), 0.7, np.float32), np.ones((3, 3, 3), bool))
    assert fit.knots() is None
    with pytest.raises(ValueError, match="one shape"):
        fit.add(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), np.ones((2, 2, 2), bool))


def test_a_generator_saved_before_calibration_existed_loads_with_the_identity():
    torch.manual_seed(0)
    generator = Generator(base_channels=4, fusion_blocks=1)
    generator.calibration.set_knots(*random_knots(np.random.default_rng(5)))
    old = {k: v for k, v in Generator(base_channels=4, fusion_blocks=1).state_dict().items() if "calibration" not in k}
    generator.load_state_dict(old)  # strict
    assert not generator.calibration.fitted
    # Half a calibration is a broken state dict, not an old one.
    half = {**old, "calibration.source": torch.linspace(0, 1, KNOTS)}
    with pytest.raises(RuntimeError, match="calibration.target"):
        generator.load_state_dict(half)


def test_knots_that_round_to_one_float32_value_map_to_finite_values():
    # searchsorted finds the first of two equal knots, so no zero-width segment is ever interpolated.
    source = np.linspace(0.1, 0.9, KNOTS)
    source[10] = source[9] + 1e-12  # apart in float64, one value in float32
    target = np.linspace(0.0, 1.0, KNOTS)
    calibration = IntensityCalibration()
    calibration.set_knots(source, target)
    x = torch.tensor([float(calibration.source[9]), 0.5], dtype=torch.float32)
    y = calibration(x)
    assert torch.isfinite(y).all() and float(y[0]) == pytest.approx(target[9], abs=1e-6)
