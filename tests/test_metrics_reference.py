"""ds3kit.metrics against scikit-image (independent reference) and numpy, odd sizes, 2-D and 3-D, masks."""

import numpy as np
import pytest
import torch
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from ds3kit.metrics import mse, psnr, region_metrics, ssim


def pair(shape, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    target = rng.random(shape)
    pred = np.clip(target + noise * rng.standard_normal(shape), 0, 1)
    return pred, target


def t(array):
    return torch.from_numpy(array)[None, None]


@pytest.mark.parametrize("shape", [(37, 41), (23, 29, 31), (11, 13)])
@pytest.mark.parametrize("data_range", [1.0, 2.5])
def test_ssim_matches_scikit_image(shape, data_range):
    pred, target = pair(shape)
    pred, target = pred * data_range, target * data_range
    reference = structural_similarity(
        pred, target, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range
    )
    assert abs(float(ssim(t(pred), t(target), data_range=data_range)) - reference) < 1e-3


@pytest.mark.parametrize("shape", [(37, 41), (9, 23, 29)])
def test_psnr_and_mse_match_scikit_image(shape):
    pred, target = pair(shape, seed=3)
    assert float(mse(t(pred), t(target))) == pytest.approx(mean_squared_error(target, pred), rel=1e-10)
    assert float(psnr(t(pred), t(target))) == pytest.approx(
        peak_signal_noise_ratio(target, pred, data_range=1.0), rel=1e-10
    )


def test_masked_variants_against_numpy():
    pred, target = pair((2, 1, 31, 33), seed=5)
    mask = np.zeros_like(pred, dtype=bool)
    mask[0, :, 8:20, 5:25] = True
    mask[1, :, 3:9, 3:30] = True
    p, g, m = (torch.from_numpy(a) for a in (pred, target, mask))
    errors = [((pred[i] - target[i]) ** 2)[mask[i]].mean() for i in range(2)]
    assert float(mse(p, g, mask=m)) == pytest.approx(np.mean(errors), rel=1e-10)
    assert float(psnr(p, g, mask=m)) == pytest.approx(np.mean([10 * np.log10(1 / e) for e in errors]), rel=1e-10)
    # SSIM in a region: the full map (scikit-image's, full=True) averaged over the masked voxels inside the crop.
    expected = []
    for i in range(2):
        _, full = structural_similarity(pred[i, 0], target[i, 0], gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=1.0, full=True)
        inner = np.zeros_like(mask[i, 0])
        inner[5:-5, 5:-5] = True
        expected.append(full[mask[i, 0] & inner].mean())
    assert float(ssim(p, g, mask=m)) == pytest.approx(np.mean(expected), abs=1e-3)


def test_reduction_none_and_empty_region():
    pred, target = pair((3, 1, 16, 17), seed=1)
    p, g = torch.from_numpy(pred), torch.from_numpy(target)
    per_sample = psnr(p, g, reduction="none")
    assert per_sample.shape == (3,)
    mask = torch.zeros(3, 1, 16, 17, dtype=torch.bool)
    mask[1] = True
    values = mse(p, g, mask=mask, reduction="none")
    assert torch.isnan(values[0]) and torch.isnan(values[2]) and torch.isfinite(values[1])
    assert float(mse(p, g, mask=mask)) == pytest.approx(float(values[1]))


def test_perfect_prediction():
    x = torch.rand(2, 1, 20, 21, dtype=torch.float64)
    assert float(ssim(x, x.clone())) == pytest.approx(1.0)
    assert float(mse(x, x.clone())) == 0.0
    assert float(psnr(x, x.clone())) == float("inf")


def test_ssim_is_differentiable():
    pred = torch.rand(1, 1, 24, 25, dtype=torch.float64, requires_grad=True)
    target = torch.rand(1, 1, 24, 25, dtype=torch.float64)
    ssim(pred, target).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 15)), "same shape"),
        (lambda: mse(torch.rand(16, 16), torch.rand(16, 16)), r"\(B, C, H, W\) or \(B, C, D, H, W\)"),
        (lambda: psnr(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), data_range=0), "data_range must be > 0"),
        (lambda: ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)), "spatial side >= 11"),
        (lambda: mse(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), mask=torch.ones(1, 1, 8, 7)), "mask must be"),
        (lambda: mse(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), reduction="sum"), "reduction must be"),
    ],
)
def test_errors_say_what_was_expected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_region_metrics_keys():
    pred, target = pair((1, 1, 12, 16, 16), seed=2)
    p, g = torch.from_numpy(pred), torch.from_numpy(target)
    brain = torch.ones_like(p, dtype=torch.bool)
    empty = torch.zeros_like(brain)
    result = region_metrics(p, g, brain_mask=brain, tumour_mask=empty)
    assert set(result) == {"ssim", "psnr", "mse", "brain_ssim", "brain_psnr", "brain_mse"}
    assert result["brain_mse"] == pytest.approx(result["mse"])
