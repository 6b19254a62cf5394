"""SSIM, PSNR and MSE: against scikit-image and a numpy computation, masked variants, shapes, errors, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ds3kit.metrics import SSIM_BORDER, mse, psnr, region_metrics, ssim, ssim_map

skimage_metrics = pytest.importorskip("skimage.metrics")

METRICS = (ssim, psnr, mse)


def _pair(shape, seed=0, noise=0.15, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=generator, dtype=dtype)
    pred = (target + noise * torch.randn(shape, generator=generator, dtype=dtype)).clamp(0, 1)
    return pred, target


def _skimage_ssim(pred: np.ndarray, target: np.ndarray, data_range: float) -> float:
    return skimage_metrics.structural_similarity(
        pred, target, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range
    )


# ------------------------------------------------------------------------------------------------ reference agreement
@pytest.mark.parametrize("spatial", [(37, 41), (23, 29, 31)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ssim_matches_skimage_per_sample_and_channel(spatial, dtype):
    pred, target = _pair((3, 2, *spatial), seed=1, dtype=dtype)
    ours = ssim(pred, target, reduction="none")
    assert ours.shape == (3,)
    for b in range(3):
        # Ours averages the map over every channel; skimage scores one channel at a time with equal-sized maps.
        reference = np.mean(
            [_skimage_ssim(pred[b, c].double().numpy(), target[b, c].double().numpy(), 1.0) for c in range(2)]
        )
        assert abs(float(ours[b]) - reference) < 1e-3
        assert abs(float(ours[b]) - reference) < 1e-5  # in fact float32 rounding only
    assert float(ssim(pred, target)) == pytest.approx(float(ours.mean()), abs=1e-6)


@pytest.mark.parametrize("spatial", [(37, 41), (23, 29, 31)])
def test_ssim_data_range_matches_skimage(spatial):
    pred, target = _pair((1, 1, *spatial), seed=2)
    # A low-contrast image in [100, 120] on a 0..255 scale: c1, c2 matter, so the data range is really tested.
    pred, target = 100.0 + 20.0 * pred, 100.0 + 20.0 * target
    reference = _skimage_ssim(pred[0, 0].numpy(), target[0, 0].numpy(), 255.0)
    assert float(ssim(pred, target, data_range=255.0)) == pytest.approx(reference, abs=1e-6)
    # The wrong range gives a different number: data_range is really used.
    assert abs(float(ssim(pred, target, data_range=1.0)) - reference) > 1e-2


@pytest.mark.parametrize("spatial", [(37, 41), (13, 17, 19)])
def test_psnr_and_mse_match_skimage(spatial):
    pred, target = _pair((2, 1, *spatial), seed=3)
    got_psnr = psnr(pred, target, data_range=2.0, reduction="none")
    got_mse = mse(pred, target, reduction="none")
    for b in range(2):
        p, t = pred[b, 0].numpy(), target[b, 0].numpy()
        assert float(got_mse[b]) == pytest.approx(skimage_metrics.mean_squared_error(t, p), rel=1e-12)
        assert float(got_psnr[b]) == pytest.approx(
            skimage_metrics.peak_signal_noise_ratio(t, p, data_range=2.0), rel=1e-12
        )


def test_ssim_map_is_the_valid_region_of_the_full_map():
    pred, target = _pair((1, 1, 21, 25), seed=4)
    values = ssim_map(pred, target)
    assert values.shape == (1, 1, 21 - 2 * SSIM_BORDER, 25 - 2 * SSIM_BORDER)
    _, full = skimage_metrics.structural_similarity(
        pred[0, 0].numpy(),
        target[0, 0].numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )
    cropped = full[SSIM_BORDER:-SSIM_BORDER, SSIM_BORDER:-SSIM_BORDER]
    np.testing.assert_allclose(values[0, 0].numpy(), cropped, atol=1e-10)


# ------------------------------------------------------------------------------------------------ masked variants
def test_masked_mse_and_psnr_match_numpy():
    pred, target = _pair((3, 2, 19, 23, 11), seed=5)
    generator = torch.Generator().manual_seed(6)
    mask = torch.rand((3, 1, 19, 23, 11), generator=generator) > 0.6
    got_mse = mse(pred, target, mask=mask, reduction="none")
    got_psnr = psnr(pred, target, mask=mask, data_range=1.0, reduction="none")
    for b in range(3):
        inside = np.broadcast_to(mask[b].numpy(), pred[b].shape)
        expected = np.mean((pred[b].numpy()[inside] - target[b].numpy()[inside]) ** 2)
        assert float(got_mse[b]) == pytest.approx(expected, rel=1e-12)
        assert float(got_psnr[b]) == pytest.approx(10 * np.log10(1.0 / expected), rel=1e-12)


def test_masked_ssim_averages_the_map_inside_the_region_and_the_border_crop():
    pred, target = _pair((2, 1, 29, 31), seed=7)
    generator = torch.Generator().manual_seed(8)
    mask = torch.rand((2, 1, 29, 31), generator=generator) > 0.5
    got = ssim(pred, target, mask=mask, reduction="none")
    for b in range(2):
        _, full = skimage_metrics.structural_similarity(
            pred[b, 0].numpy(),
            target[b, 0].numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            full=True,
        )
        inside = mask[b, 0].numpy().copy()
        inside[:SSIM_BORDER] = inside[-SSIM_BORDER:] = False
        inside[:, :SSIM_BORDER] = inside[:, -SSIM_BORDER:] = False
        assert float(got[b]) == pytest.approx(full[inside].mean(), abs=1e-9)


def test_all_ones_mask_equals_unmasked_and_float_mask_equals_bool():
    pred, target = _pair((2, 3, 15, 17, 13), seed=9)
    ones = torch.ones((2, 1, 15, 17, 13))
    mask = torch.rand((2, 3, 15, 17, 13), generator=torch.Generator().manual_seed(1)) > 0.3
    for metric in METRICS:
        assert torch.allclose(metric(pred, target, mask=ones), metric(pred, target), rtol=1e-10)
        assert torch.equal(metric(pred, target, mask=mask.double()), metric(pred, target, mask=mask))


def test_region_outside_the_mask_does_not_count():
    pred, target = _pair((1, 1, 25, 27), seed=10)
    mask = torch.zeros((1, 1, 25, 27), dtype=torch.bool)
    mask[..., 8:18, 9:19] = True
    spoiled = pred.clone()
    spoiled[~mask] = 1.0 - spoiled[~mask]
    assert float(mse(spoiled, target, mask=mask)) == float(mse(pred, target, mask=mask))
    assert float(psnr(spoiled, target, mask=mask)) == float(psnr(pred, target, mask=mask))
    assert float(mse(spoiled, target)) != pytest.approx(float(mse(pred, target)))


def test_empty_mask_gives_nan_for_that_sample_and_the_mean_ignores_it():
    pred, target = _pair((3, 1, 17, 19), seed=11)
    mask = torch.ones((3, 1, 17, 19), dtype=torch.bool)
    mask[1] = False
    for metric in METRICS:
        per_sample = metric(pred, target, mask=mask, reduction="none")
        assert math.isnan(float(per_sample[1]))
        assert not per_sample[[0, 2]].isnan().any()
        assert float(metric(pred, target, mask=mask)) == pytest.approx(float(per_sample[[0, 2]].mean()), rel=1e-12)
        assert math.isnan(float(metric(pred, target, mask=torch.zeros_like(mask))))


def test_ssim_mask_only_in_the_border_is_empty():
    pred, target = _pair((1, 1, 17, 19), seed=12)
    mask = torch.zeros((1, 1, 17, 19), dtype=torch.bool)
    mask[..., :SSIM_BORDER, :] = True
    assert math.isnan(float(ssim(pred, target, mask=mask)))
    assert not math.isnan(float(mse(pred, target, mask=mask)))


# ------------------------------------------------------------------------------------------------ values and shapes
@pytest.mark.parametrize("shape", [(2, 3, 13, 15), (2, 1, 11, 13, 12)])
def test_perfect_prediction(shape):
    _, target = _pair(shape, seed=13, dtype=torch.float32)
    assert float(ssim(target, target.clone())) == 1.0
    assert float(mse(target, target.clone())) == 0.0
    assert float(psnr(target, target.clone())) == math.inf
    # Flat black images too (c1, c2 keep the ratio defined).
    zeros = torch.zeros(shape)
    assert float(ssim(zeros, zeros)) == 1.0


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", [(4, 2, 13, 15), (3, 1, 11, 13, 12)])
def test_shapes_and_reductions(metric, shape):
    pred, target = _pair(shape, seed=14, dtype=torch.float32)
    assert metric(pred, target).shape == ()
    per_sample = metric(pred, target, reduction="none")
    assert per_sample.shape == (shape[0],)
    assert per_sample.dtype == torch.float32
    assert torch.allclose(metric(pred, target), per_sample.mean())


def test_worse_prediction_scores_worse():
    _, target = _pair((1, 1, 31, 33), seed=15)
    slightly = (target + 0.05 * torch.randn_like(target)).clamp(0, 1)
    badly = (target + 0.3 * torch.randn_like(target)).clamp(0, 1)
    assert ssim(slightly, target) > ssim(badly, target)
    assert psnr(slightly, target) > psnr(badly, target)
    assert mse(slightly, target) < mse(badly, target)


def test_ssim_is_differentiable():
    pred, target = _pair((1, 1, 13, 14), seed=16)
    pred.requires_grad_(True)
    mask = torch.zeros((1, 1, 13, 14), dtype=torch.bool)
    mask[..., 4:10, 3:11] = True
    torch.autograd.gradcheck(lambda p: ssim(p, target, mask=mask), (pred,), eps=1e-6, atol=1e-5, fast_mode=True)
    loss = 1 - ssim(pred.float(), target.float())
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0 and torch.isfinite(pred.grad).all()


def test_psnr_and_mse_are_differentiable():
    pred, target = _pair((2, 1, 7, 9), seed=17)
    pred.requires_grad_(True)
    torch.autograd.gradcheck(lambda p: psnr(p, target), (pred,), eps=1e-6, atol=1e-5, fast_mode=True)
    torch.autograd.gradcheck(lambda p: mse(p, target), (pred,), eps=1e-6, atol=1e-5)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("metric", METRICS)
def test_errors(metric):
    x = torch.rand(1, 1, 13, 13)
    with pytest.raises(ValueError, match="pred and target must have the same shape"):
        metric(x, torch.rand(1, 1, 13, 14))
    with pytest.raises(ValueError, match=r"pred must be \(B, C, H, W\) or \(B, C, D, H, W\), got shape \(13, 13\)"):
        metric(x[0, 0], x[0, 0])
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="data_range must be > 0 and finite"):
            metric(x, x, data_range=bad)
    with pytest.raises(ValueError, match="reduction must be one of"):
        metric(x, x, reduction="sum")
    with pytest.raises(ValueError, match=r"mask must be \(B, 1 or C, \*spatial\) = \(1, 1 or 1, 13, 13\)"):
        metric(x, x, mask=torch.ones(1, 1, 12, 13, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool or hold only 0 and 1"):
        metric(x, x, mask=torch.full((1, 1, 13, 13), 0.5))
    nan = x.clone()
    nan[0, 0, 3, 3] = math.nan
    with pytest.raises(ValueError, match="pred holds 1 non-finite"):
        metric(nan, x)


def test_ssim_needs_sides_of_at_least_the_window():
    x = torch.rand(1, 1, 13, 10)
    with pytest.raises(ValueError, match="SSIM needs every spatial side >= 11, got shape"):
        ssim(x, x)


# ------------------------------------------------------------------------------------------------ region_metrics
def test_region_metrics_keys_and_values():
    pred, target = _pair((1, 1, 15, 17, 13), seed=18, dtype=torch.float32)
    brain = torch.zeros_like(target, dtype=torch.bool)
    brain[..., 2:13, 3:14, 2:11] = True
    tumour = torch.zeros_like(brain)
    tumour[..., 6:9, 7:10, 5:8] = True
    result = region_metrics(pred, target, brain_mask=brain, tumour_mask=tumour)
    assert set(result) == {
        "ssim",
        "psnr",
        "mse",
        "brain_ssim",
        "brain_psnr",
        "brain_mse",
        "tumour_ssim",
        "tumour_psnr",
        "tumour_mse",
    }
    assert all(isinstance(value, float) for value in result.values())
    assert result["brain_mse"] == pytest.approx(float(mse(pred, target, mask=brain)))
    assert result["tumour_ssim"] == pytest.approx(float(ssim(pred, target, mask=tumour)))
    assert result["psnr"] == pytest.approx(float(psnr(pred, target)))


def test_region_metrics_drops_absent_or_empty_regions_but_not_bad_masks():
    pred, target = _pair((1, 1, 13, 13, 13), seed=19, dtype=torch.float32)
    assert set(region_metrics(pred, target)) == {"ssim", "psnr", "mse"}
    empty = torch.zeros_like(target, dtype=torch.bool)
    assert set(region_metrics(pred, target, brain_mask=target > 0.5, tumour_mask=empty)) == {
        "ssim",
        "psnr",
        "mse",
        "brain_ssim",
        "brain_psnr",
        "brain_mse",
    }
    with pytest.raises(ValueError, match="mask must be \\(B, 1 or C"):
        region_metrics(pred, target, tumour_mask=torch.zeros(1, 1, 13, 13, 12, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_separable_3d_map_equals_kornia_ssim3d(dtype):
    import kornia

    pred, target = _pair((2, 2, 13, 17, 15), seed=20, dtype=dtype)
    ours = ssim_map(pred, target, data_range=2.0)
    reference = kornia.metrics.ssim3d(pred, target, 11, max_val=2.0, eps=0.0, padding="valid")
    assert ours.shape == reference.shape == (2, 2, 3, 7, 5) and ours.dtype == dtype
    torch.testing.assert_close(ours, reference, rtol=0, atol=5e-5 if dtype == torch.float32 else 1e-12)


def test_ssim_3d_is_differentiable():
    pred, target = _pair((1, 1, 12, 11, 13), seed=21)
    pred.requires_grad_(True)
    torch.autograd.gradcheck(lambda p: ssim(p, target), (pred,), eps=1e-6, atol=1e-5, fast_mode=True)
