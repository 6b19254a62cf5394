import numpy as np
import pytest
import torch
from torch import nn

from ds3kit.inference import default_batch_size, synthesize_volume
from ds3kit.models import Generator


def volume(shape=(20, 18, 7), seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.random((3, *shape), dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    mask[3:15, 2:16, 1:5] = True  # slices 0, 5 and 6 have no brain voxel
    return inputs, mask


def reference(generator, inputs, mask):
    """Slice by slice with the plain generator, no fast path."""
    generator.eval()
    out = np.zeros(inputs.shape[1:], dtype=np.float32)
    with torch.no_grad():
        for z in range(inputs.shape[-1]):
            out[..., z] = generator(torch.from_numpy(inputs[None, ..., z]))[0, 0].numpy()
    out[~mask] = 0
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 16])
@pytest.mark.parametrize("channels_last", [True, False])
def test_synthesis_matches_the_plain_generator_slice_by_slice(batch_size, channels_last):
    torch.manual_seed(0)
    generator = Generator(base_channels=4, fusion_blocks=1)
    inputs, mask = volume()
    expected = reference(generator, inputs, mask)
    actual = synthesize_volume(generator, inputs, brain_mask=mask, batch_size=batch_size, channels_last=channels_last)
    assert actual.dtype == np.float32 and actual.shape == inputs.shape[1:]
    np.testing.assert_allclose(actual, expected, atol=2e-5)
    assert generator.encoders[0].levels[0][0][0].weight.requires_grad  # the caller's generator is untouched


class CountingModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.slices = 0

        self.batches = []

    def forward(self, x):
        self.slices += x.shape[0]
        self.batches.append(x.shape[0])
        return x[:, :1] * 0.5


def test_slices_without_brain_are_not_computed_and_stay_zero():
    inputs, mask = volume()
    module = CountingModule()
    out = synthesize_volume(module, inputs, brain_mask=mask, batch_size=2)
    assert module.slices == 4  # slices 1..4 only
    assert not out[..., [0, 5, 6]].any()
    np.testing.assert_allclose(out[mask], 0.5 * inputs[0][mask])
    module = CountingModule()
    synthesize_volume(module, inputs, batch_size=2)
    assert module.slices == 7  # no mask: every slice


def test_an_all_empty_mask_gives_zeros_without_running_the_model():
    inputs, mask = volume()
    module = CountingModule()
    out = synthesize_volume(module, inputs, brain_mask=np.zeros_like(mask))
    assert module.slices == 0 and not out.any()


class PositionModule(nn.Module):
    """Not flip-equivariant: a position ramp times T1 plus a third of T2, outside [0, 1] in places (so the clamp of
    every pass before the mean is exercised)."""

    def forward(self, x):
        h, w = x.shape[-2:]
        ramp = torch.outer(torch.linspace(0.2, 1.6, h), torch.linspace(0.5, 1.3, w))
        return x[:, :1] * ramp - 0.1 + x[:, 1:2] / 3


@pytest.mark.parametrize("flips", ["none", "lr", "all"])
def test_flip_averaging_is_the_mean_of_the_flipped_back_passes(flips):
    inputs, mask = volume()
    # Independent reference in float64 numpy: each pass on the flipped volume, clamped, flipped back; then the mean.
    axes = {"none": [()], "lr": [(), (0,)], "all": [(), (0,), (1,), (0, 1)]}[flips]
    h, w = inputs.shape[1:3]
    ramp = np.outer(np.linspace(0.2, 1.6, h), np.linspace(0.5, 1.3, w))[..., None]
    passes = []
    for flip in axes:
        x = np.flip(inputs.astype(np.float64), [a + 1 for a in flip]) if flip else inputs.astype(np.float64)
        out = np.clip(x[0] * ramp - 0.1 + x[1] / 3, 0, 1)
        passes.append(np.flip(out, flip) if flip else out)
    expected = np.mean(passes, axis=0)
    expected[~mask] = 0
    actual = synthesize_volume(PositionModule(), inputs, brain_mask=mask, batch_size=3, flips=flips)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)
    if flips == "none":  # the single pass is the plain generator's, bit for bit
        plain = synthesize_volume(PositionModule(), inputs, brain_mask=mask, batch_size=3)
        assert np.array_equal(actual, plain)


def test_bad_arguments_are_clear_errors():
    inputs, mask = volume()
    with pytest.raises(ValueError, match="brain_mask must be"):
        synthesize_volume(CountingModule(), inputs, brain_mask=mask[:-1])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        synthesize_volume(CountingModule(), inputs, batch_size=0)
    with pytest.raises(ValueError, match=r"inputs must be \(3, X, Y, Z\)"):
        synthesize_volume(CountingModule(), inputs[:2])
    with pytest.raises(ValueError, match="flips must be one of none, lr, all, got 'ud'"):
        synthesize_volume(CountingModule(), inputs, flips="ud")


def test_default_batch_holds_about_one_240_slice_on_cpu_and_sixteen_on_gpu():
    assert default_batch_size("cpu", (240, 240)) == 1
    assert default_batch_size("cpu", (256, 256)) == 1  # never 0
    assert default_batch_size("cpu", (96, 96)) == 6
    assert default_batch_size("cpu", (120, 120)) == 4
    assert default_batch_size(torch.device("cuda"), (240, 240)) == 16
    assert default_batch_size("cuda:1", (120, 120)) == 64
    with pytest.raises(ValueError, match=r"slice_shape must be \(X, Y\)"):
        default_batch_size("cpu", (240, 240, 155))


@pytest.mark.parametrize(("shape", "expected"), [((240, 240, 3), [1, 1, 1]), ((120, 120, 7), [4, 3])])
def test_synthesis_without_a_batch_size_uses_the_device_default(shape, expected):
    inputs = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
    module = CountingModule()
    synthesize_volume(module, inputs)
    assert module.batches == expected


def test_a_fitted_calibration_maps_the_finished_synthesis_inside_the_brain_and_survives_a_checkpoint(tmp_path):
    from ds3kit.checkpoint import load_generator, save_generator

    torch.manual_seed(0)
    generator = Generator(base_channels=4, fusion_blocks=1)
    inputs, mask = volume()
    raw = synthesize_volume(generator, inputs, brain_mask=mask, flips="lr")
    source = np.linspace(0.0, 1.0, generator.calibration.source.numel())
    generator.calibration.set_knots(source, np.clip(1.5 * source - 0.2, 0.0, None).cumsum() / 40 + 0.1)
    expected = raw.copy()
    expected[mask] = generator.calibration(torch.from_numpy(raw[mask])).numpy()  # after the flips, not per pass
    np.testing.assert_allclose(synthesize_volume(generator, inputs, brain_mask=mask, flips="lr"), expected, atol=1e-6)
    np.testing.assert_array_equal(
        synthesize_volume(generator, inputs, brain_mask=mask, flips="lr", calibrate=False), raw
    )
    assert (expected[~mask] == 0).all()
    save_generator(tmp_path / "g.pt", generator)
    loaded, _ = load_generator(tmp_path / "g.pt")  # weights_only=True
    torch.testing.assert_close(loaded.calibration.target, generator.calibration.target, rtol=0, atol=0)
    np.testing.assert_allclose(synthesize_volume(loaded, inputs, brain_mask=mask, flips="lr"), expected, atol=1e-6)


def test_calibrate_generator_fits_on_the_uncalibrated_synthesis_and_a_refit_does_not_stack():
    from types import SimpleNamespace

    from ds3kit.inference import calibrate_generator
    from ds3kit.models import CalibrationFit

    torch.manual_seed(0)
    generator = Generator(base_channels=4, fusion_blocks=1)
    sessions = []
    for seed in range(3):
        inputs, mask = volume(shape=(24, 22, 9), seed=seed)
        target = np.clip(inputs[0] ** 2 + 0.1, 0, 1).astype(np.float32)
        sessions.append(SimpleNamespace(case_id=f"s{seed}", inputs=inputs, brain_mask=mask, target=target))
    by_hand = CalibrationFit()
    for s in sessions:
        prediction = synthesize_volume(generator, s.inputs, brain_mask=s.brain_mask, flips="all", calibrate=False)
        by_hand.add(prediction, s.target, s.brain_mask)
    fit = calibrate_generator(generator, sessions, flips="all", min_voxels=20)
    source, target = by_hand.knots(20)
    assert fit.voxels == by_hand.voxels == sum(int(s.brain_mask.sum()) for s in sessions)
    torch.testing.assert_close(generator.calibration.source, torch.from_numpy(source).float())
    torch.testing.assert_close(generator.calibration.target, torch.from_numpy(target).float())
    calibrate_generator(generator, sessions, flips="all", min_voxels=20)  # fitted on the raw synthesis again
    torch.testing.assert_close(generator.calibration.target, torch.from_numpy(target).float())
    with pytest.raises(ValueError, match="s9: calibration needs the real T1ce"):
        calibrate_generator(generator, [SimpleNamespace(case_id="s9", target=None)])
