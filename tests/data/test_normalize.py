from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ds3kit.data.normalize import IntensityScaling, _fill_holes, brain_mask, fit_intensity_scaling, is_skull_stripped
from ds3kit.errors import InputError


def test_fit_matches_numpy_percentiles_inside_mask():
    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 100.0, size=(17, 19, 11)).astype(np.float32)
    mask = rng.random(data.shape) > 0.4
    scaling = fit_intensity_scaling(data, mask, method="percentile", lower_percentile=1.0, upper_percentile=98.0)
    low, high = np.percentile(data[mask].astype(np.float64), [1.0, 98.0])
    assert scaling.low == pytest.approx(low, rel=1e-5) and scaling.high == pytest.approx(high, rel=1e-5)
    normalised = scaling.normalize(data)
    assert normalised.dtype == np.float32 and normalised.min() == 0.0 and normalised.max() == 1.0
    assert np.mean(normalised[mask] == 1.0) == pytest.approx(0.02, abs=0.01)


def test_denormalize_inverts_normalize_inside_the_range():
    scaling = IntensityScaling(low=-20.0, high=380.0)
    values = np.linspace(-20.0, 380.0, 101, dtype=np.float32)
    np.testing.assert_allclose(scaling.denormalize(scaling.normalize(values)), values, rtol=1e-5, atol=1e-3)
    assert scaling.normalize(np.array([-100.0, 1000.0])).tolist() == [0.0, 1.0]


def test_scaling_rejects_inverted_range():
    with pytest.raises(ValueError, match="low < high"):
        IntensityScaling(low=5.0, high=5.0)


def test_fit_errors():
    data = np.ones((5, 6, 7), np.float32)
    with pytest.raises(InputError, match="empty"):
        fit_intensity_scaling(data, np.zeros(data.shape, bool))
    with pytest.raises(InputError, match="constant"):
        fit_intensity_scaling(data, np.ones(data.shape, bool))
    with pytest.raises(ValueError, match="same shape"):
        fit_intensity_scaling(data, np.ones((5, 6, 8), bool))
    with pytest.raises(ValueError, match="lower_percentile"):
        fit_intensity_scaling(data, np.ones(data.shape, bool), lower_percentile=60, upper_percentile=40)


def _ellipsoid(shape, semi_axes) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    return sum((g / a) ** 2 for g, a in zip(grids, semi_axes)) < 1.0


def test_stripped_mask_is_any_input_above_zero(small_case):
    volumes = [small_case[name] for name in ("t1", "t2", "flair")]
    assert is_skull_stripped(volumes)
    expected = ndimage.binary_fill_holes(np.any([v > 0 for v in volumes], axis=0))
    np.testing.assert_array_equal(brain_mask(volumes), expected)


@pytest.mark.parametrize("shape", [(30, 31, 17), (12, 9), (1, 7, 3), (6, 6, 6)])
def test_fill_holes_on_the_bounding_box_equals_scipy_on_the_whole_grid(shape):
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    smaller_boxes = 0
    for trial in range(60):
        mask = rng.random(shape) < rng.uniform(0.2, 0.9)
        if trial % 2:  # clear slabs on some faces: a bounding box smaller than the grid
            for axis, size in enumerate(shape):
                low, high = rng.integers(0, max(size // 3, 1) + 1, size=2)
                index = [slice(None)] * len(shape)
                index[axis] = slice(0, low)
                mask[tuple(index)] = False
                index[axis] = slice(size - high, size)
                mask[tuple(index)] = False
        axes = range(mask.ndim)
        box = [np.flatnonzero(mask.any(axis=tuple(other for other in axes if other != axis))) for axis in axes]
        smaller_boxes += any(i.size and (i[0] > 0 or i[-1] < size - 1) for i, size in zip(box, shape))
        np.testing.assert_array_equal(_fill_holes(mask), ndimage.binary_fill_holes(mask))
    assert smaller_boxes >= 10  # the slabs did shrink the box (else this tests only the whole-grid case)
    empty = np.zeros(shape, dtype=np.uint8)
    filled = _fill_holes(empty)
    assert filled.dtype == bool and not filled.any()


def test_raw_scan_mask_recovers_the_head_from_noisy_background():
    rng = np.random.default_rng(5)
    shape = (41, 45, 23)
    head = _ellipsoid(shape, (16, 19, 9))
    ventricle = _ellipsoid(shape, (3, 6, 3))  # dark inside in T1/FLAIR: must not become a hole
    volumes = []
    for tissue_level, ventricle_level in ((800.0, 100.0), (500.0, 900.0), (600.0, 60.0)):
        image = np.where(head, tissue_level, 0.0) * (1 + 0.05 * rng.standard_normal(shape))
        image[ventricle] = ventricle_level
        noise = np.abs(rng.normal(0.0, 25.0, shape) + 1j * rng.normal(0.0, 25.0, shape))  # Rayleigh background
        volumes.append((image + noise).astype(np.float32))
    assert not is_skull_stripped(volumes)
    mask = brain_mask(volumes)
    dice = 2 * np.logical_and(mask, head).sum() / (mask.sum() + head.sum())
    assert dice > 0.97
    assert mask[ventricle].all()
    labels, count = ndimage.label(mask)
    assert count == 1


def test_mask_errors():
    with pytest.raises(ValueError, match="at least one"):
        brain_mask([])
    with pytest.raises(ValueError, match="share one shape"):
        brain_mask([np.ones((4, 5, 6)), np.ones((4, 5, 7))])


def test_zscore_fit_maps_the_brain_mean_plus_minus_three_sd_to_the_unit_range():
    rng = np.random.default_rng(1)
    data = rng.gamma(3.0, 50.0, size=(13, 17, 9)).astype(np.float32)
    mask = rng.random(data.shape) > 0.3
    data[~mask] = 1e6  # outside the mask: must not count
    scaling = fit_intensity_scaling(data, mask)  # the default rule
    inside = data[mask].astype(np.float64)
    # Independent: the moments by their definitions, in float64.
    mean = inside.sum() / inside.size
    spread = np.sqrt(((inside - mean) ** 2).sum() / inside.size)
    assert scaling.low == pytest.approx(mean - 3 * spread, rel=1e-9)
    assert scaling.high == pytest.approx(mean + 3 * spread, rel=1e-9)
    normalised = scaling.normalize(data)[mask]
    assert normalised.mean() == pytest.approx(0.5, abs=0.01)  # the mean lands in the middle
    assert np.mean((normalised == 0.0) | (normalised == 1.0)) < 0.02  # a gamma's tail is barely clipped
    assert fit_intensity_scaling(data, mask, method="zscore") == scaling


def test_the_rule_is_checked_by_name():
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    with pytest.raises(ValueError, match="method must be one of"):
        fit_intensity_scaling(data, np.ones(data.shape, bool), method="minmax")
    with pytest.raises(InputError, match="constant"):
        fit_intensity_scaling(np.ones((3, 4, 5), np.float32), np.ones((3, 4, 5), bool), method="zscore")
