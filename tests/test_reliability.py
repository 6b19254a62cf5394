"""The reliability map (1 - realness of D, per voxel), its correlation with |error|, and the edge-map comparison."""

import math

import numpy as np
import pytest
import torch

from ds3kit.inference import synthesize_volume
from ds3kit.losses import difficulty_map
from ds3kit.models import PatchDiscriminator, build_discriminator, build_generator
from ds3kit.reliability import edge_map, error_correlation, reliability_volume

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (37, 29, 5)  # odd in-plane sides, neither a multiple of the discriminator's stride


def discriminator(in_channels: int, *, seed: int = 0, bias: float = 0.5) -> PatchDiscriminator:
    """A tiny D whose raw scores sit around ``bias``, so LSGAN's clamp to [0, 1] leaves most of them unclipped."""
    torch.manual_seed(seed)
    model = build_discriminator("tiny", in_channels=in_channels)
    with torch.no_grad():
        model.model[-1].bias.add_(bias)
    return model.eval()


def case(seed: int = 0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    inputs = rng.random((3, *shape), dtype=np.float32)
    brain = np.zeros(shape, bool)
    brain[3:-4, 2:-3, 1:-1] = True  # the first and last slices hold no brain
    inputs *= brain
    prediction = (rng.random(shape, dtype=np.float32) * brain).astype(np.float32)
    return inputs, prediction, brain


def bilinear(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Half-pixel-centred bilinear resize (PyTorch's align_corners=False), written out in numpy."""

    def weights(n_in: int, n_out: int):
        source = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, source - low

    x0, x1, wx = weights(grid.shape[0], size[0])
    y0, y1, wy = weights(grid.shape[1], size[1])
    rows = grid[x0] * (1 - wx)[:, None] + grid[x1] * wx[:, None]
    return rows[:, y0] * (1 - wy)[None, :] + rows[:, y1] * wy[None, :]


REALNESS = {
    "lsgan": lambda s: np.clip(s, 0.0, 1.0),
    "bce": lambda s: 1.0 / (1.0 + np.exp(-s)),
    "hinge": lambda s: np.clip((s + 1.0) / 2.0, 0.0, 1.0),
}


def by_hand(model: PatchDiscriminator, inputs, prediction, brain, z: int, mode: str) -> np.ndarray:
    """One slice in float64: D's raw scores, realness by its formula, bilinear upsampling, the brain mask."""
    double = PatchDiscriminator(**model.config()).double()
    double.load_state_dict(model.state_dict())
    double.eval()
    fake = torch.from_numpy(np.where(brain, prediction, 0.0)[None, None, ..., z]).double()
    with torch.no_grad():
        if model.in_channels == 4:
            scores = double(torch.from_numpy(inputs[None, ..., z]).double(), fake)
        else:
            scores = double(fake)
    unreliability = 1.0 - REALNESS[mode](scores[0, 0].numpy())
    return np.where(brain[..., z], bilinear(unreliability, prediction.shape[:2]), 0.0)


@pytest.mark.parametrize("in_channels", [4, 1])
@pytest.mark.parametrize("mode", ["lsgan", "bce", "hinge"])
def test_matches_a_float64_computation_by_hand(in_channels, mode):
    inputs, prediction, brain = case()
    model = discriminator(in_channels)
    result = reliability_volume(prediction, model, inputs, brain, gan_mode=mode, batch_size=2)
    assert result.shape == SHAPE and result.dtype == np.float32
    for z in (1, 2, 3):
        np.testing.assert_allclose(result[..., z], by_hand(model, inputs, prediction, brain, z, mode), atol=2e-6)
    assert not result[..., 0].any() and not result[..., -1].any(), "slices without brain are 0"
    assert not result[~brain].any() and 0.0 <= result.min() and result.max() <= 1.0
    assert 0.02 < result[brain].std(), "a D with scores around 0.5 must give a varied map"


def test_is_the_difficulty_map_without_its_scaling():
    inputs, prediction, brain = case(1)
    model = discriminator(4)
    result = reliability_volume(prediction, model, inputs, brain)
    beta = 2.5
    with torch.no_grad():
        slices = torch.from_numpy(np.moveaxis(inputs, -1, 0)[1:-1])
        fake = torch.from_numpy(np.moveaxis(prediction * brain, -1, 0)[1:-1, None])
        m = difficulty_map(model(slices, fake), SHAPE[:2], beta=beta)
    expected = np.moveaxis(((m[:, 0] - 1.0) / beta).numpy(), 0, -1) * brain[..., 1:-1]
    np.testing.assert_allclose(result[..., 1:-1], expected, atol=1e-6)


def test_conditional_reads_the_inputs_unconditional_does_not():
    inputs, prediction, brain = case(2)
    other_inputs = case(3)[0] * brain
    conditional, unconditional = discriminator(4), discriminator(1)
    assert not np.allclose(
        reliability_volume(prediction, conditional, inputs, brain),
        reliability_volume(prediction, conditional, other_inputs, brain),
    )
    np.testing.assert_array_equal(
        reliability_volume(prediction, unconditional, inputs, brain),
        reliability_volume(prediction, unconditional, other_inputs, brain),
    )


def test_batch_size_and_a_generator_in_place_of_its_prediction():
    inputs, _, brain = case(4)
    torch.manual_seed(0)
    generator = build_generator("tiny").eval()
    model = discriminator(4)
    prediction = synthesize_volume(generator, inputs, brain_mask=brain)
    one = reliability_volume(prediction, model, inputs, brain, batch_size=1)
    np.testing.assert_allclose(reliability_volume(prediction, model, inputs, brain, batch_size=7), one, atol=1e-6)
    np.testing.assert_allclose(reliability_volume(generator, model, inputs, brain), one, atol=1e-6)


def test_leaves_the_discriminator_as_it_found_it():
    inputs, prediction, brain = case()
    model = discriminator(4).train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    reliability_volume(prediction, model, inputs, brain)
    assert model.training
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_bad_arguments():
    inputs, prediction, brain = case()
    with pytest.raises(ValueError, match="4 channels .* or 1 .* got in_channels=3"):
        reliability_volume(prediction, discriminator(3), inputs, brain)
    with pytest.raises(ValueError, match="smaller than the discriminator's minimum of 24"):
        small = build_discriminator("small")
        reliability_volume(prediction[:20, :20], small, inputs[:, :20, :20], brain[:20, :20])
    with pytest.raises(ValueError, match="prediction must be"):
        reliability_volume(prediction[:-1], discriminator(4), inputs, brain)
    with pytest.raises(ValueError, match="brain_mask must be"):
        reliability_volume(prediction, discriminator(4), inputs, brain[..., :-1])
    with pytest.raises(ValueError, match="inputs must be"):
        reliability_volume(prediction, discriminator(4), inputs[:2], brain)


# ------------------------------------------------------------------------------------------------ error_correlation
def test_error_correlation_is_pearson_over_the_mask():
    rng = np.random.default_rng(5)
    prediction, target = rng.random((2, 11, 13, 7))
    mask = rng.random((11, 13, 7)) > 0.4
    error = np.abs(prediction - target)
    reliability = (0.5 * error + 0.3 * rng.random(error.shape)).astype(np.float32)
    expected = np.corrcoef(reliability[mask].astype(np.float64), error[mask])[0, 1]
    assert error_correlation(reliability, prediction, target, mask) == pytest.approx(expected, abs=1e-12)
    # Voxels outside the mask do not count, whatever they hold.
    reliability[~mask] = 1e6
    assert error_correlation(reliability, prediction, target, mask) == pytest.approx(expected, abs=1e-12)


def test_planted_and_constant_maps():
    rng = np.random.default_rng(6)
    prediction, target = rng.random((2, 9, 10, 3)).astype(np.float32)
    mask = np.ones(prediction.shape, bool)
    error = np.abs(prediction - target)
    assert error_correlation(error, prediction, target, mask) == pytest.approx(1.0, abs=1e-9)
    assert error_correlation(-error, prediction, target, mask) == pytest.approx(-1.0, abs=1e-9)
    assert error_correlation(2 * error + 0.1, prediction, target, mask) == pytest.approx(1.0, abs=1e-9)
    constant = np.full(prediction.shape, 0.3, np.float32)
    assert error_correlation(constant, prediction, target, mask) == 0.0  # numpy.corrcoef would give NaN
    assert error_correlation(error, target, target, mask) == 0.0  # a perfect prediction: constant (zero) error
    one_voxel = np.zeros(prediction.shape, bool)
    one_voxel[1, 2, 0] = True
    assert error_correlation(error, prediction, target, one_voxel) == 0.0


def test_error_correlation_errors():
    volume = np.zeros((4, 4, 4))
    with pytest.raises(ValueError, match="mask is empty"):
        error_correlation(volume, volume, volume, volume > 0)
    with pytest.raises(ValueError, match="share one shape"):
        error_correlation(volume[:3], volume, volume, volume == 0)
    broken = volume.copy()
    broken[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="finite"):
        error_correlation(broken, volume, volume, volume == 0)
    outside = np.ones((4, 4, 4), bool)
    outside[0, 0, 0] = False
    assert error_correlation(broken, volume, volume, outside) == 0.0  # the NaN lies outside the mask


# --------------------------------------------------------------------------------------------------------- edge_map
def test_edge_map_by_hand():
    rng = np.random.default_rng(7)
    shape = (9, 8, 3)
    prediction = rng.random(shape).astype(np.float32)
    brain = np.zeros(shape, bool)
    brain[1:8, 1:7] = True
    result = edge_map(prediction, brain)
    synthesis = np.where(brain, prediction.astype(np.float64), 0.0)
    expected = np.zeros(shape)
    for x in range(shape[0]):
        for y in range(shape[1]):
            # Central differences inside, one-sided at the borders.
            xl, xh = max(x - 1, 0), min(x + 1, shape[0] - 1)
            yl, yh = max(y - 1, 0), min(y + 1, shape[1] - 1)
            gx = (synthesis[xh, y] - synthesis[xl, y]) / (xh - xl)
            gy = (synthesis[x, yh] - synthesis[x, yl]) / (yh - yl)
            expected[x, y] = np.sqrt(gx**2 + gy**2)
    expected = np.where(brain, expected, 0.0)
    expected /= expected.max()
    assert result.dtype == np.float32 and result.shape == shape
    np.testing.assert_allclose(result, expected, atol=1e-6)
    assert result.max() == pytest.approx(1.0) and not result[~brain].any()


def test_edge_map_of_a_step_and_of_a_flat_volume():
    shape = (12, 10, 2)
    brain = np.ones(shape, bool)
    step = np.zeros(shape, np.float32)
    step[6:] = 0.8
    result = edge_map(step, brain)
    assert set(np.flatnonzero(result.any(axis=(1, 2)))) == {5, 6} and result.max() == 1.0
    assert not edge_map(np.full(shape, 0.4, np.float32), brain).any()
    with pytest.raises(ValueError, match="one \\(X, Y, Z\\) shape"):
        edge_map(step, brain[..., :1])
