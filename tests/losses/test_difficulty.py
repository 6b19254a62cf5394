import pytest
import torch

from ds3kit.losses import DifficultyL1Loss, difficulty_beta, difficulty_l1, difficulty_map, difficulty_pixel


def scores(seed: int = 0, shape=(2, 1, 5, 7)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * 1.5 + 0.5


# -- difficulty_map ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lsgan", "bce", "hinge"])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "bicubic", "area"])
def test_map_range_shape_and_detached(mode, interpolation):
    raw = scores().requires_grad_(True)
    beta = 0.7
    m = difficulty_map(raw, (37, 45), beta=beta, mode=mode, interpolation=interpolation)
    assert m.shape == (2, 1, 37, 45)
    assert not m.requires_grad and m.grad_fn is None
    assert float(m.min()) >= 1.0 and float(m.max()) <= 1.0 + beta + 1e-6


def test_map_known_values_lsgan_and_bce():
    raw = torch.tensor([[-1.0, 0.0], [0.25, 2.0]]).view(1, 1, 2, 2)
    lsgan = difficulty_map(raw, (2, 2), beta=2.0, mode="lsgan")
    # realness = clamp(s, 0, 1) = [0, 0, .25, 1] -> M = 1 + 2 (1 - r)
    torch.testing.assert_close(lsgan, torch.tensor([[3.0, 3.0], [2.5, 1.0]]).view(1, 1, 2, 2))
    bce = difficulty_map(raw, (2, 2), beta=2.0, mode="bce")
    torch.testing.assert_close(bce, 1 + 2 * (1 - torch.sigmoid(raw)))


def test_map_nearest_upsampling_repeats_the_patch_grid():
    raw = torch.tensor([[0.0, 1.0]]).view(1, 1, 1, 2)
    m = difficulty_map(raw, (3, 4), beta=1.0, interpolation="nearest")
    torch.testing.assert_close(m[0, 0], torch.tensor([[2.0, 2.0, 1.0, 1.0]] * 3))


def test_map_bilinear_is_the_upsampled_map():
    raw = scores(3)
    m = difficulty_map(raw, (20, 28), beta=1.5)
    expected = 1 + 1.5 * torch.nn.functional.interpolate(1 - raw.clamp(0, 1), size=(20, 28), mode="bilinear")
    torch.testing.assert_close(m, expected)


def test_beta_zero_gives_ones_and_accepts_torch_size():
    raw = scores(1)
    m = difficulty_map(raw, torch.Size([9, 11]), beta=0.0)
    torch.testing.assert_close(m, torch.ones(2, 1, 9, 11))


def test_map_bad_inputs():
    with pytest.raises(ValueError, match="beta"):
        difficulty_map(scores(), (8, 8), beta=-0.1)
    with pytest.raises(ValueError, match="1 channel"):
        difficulty_map(torch.zeros(1, 2, 3, 3), (8, 8), beta=1.0)
    with pytest.raises(ValueError, match=r"\(B, 1, h, w\)"):
        difficulty_map(torch.zeros(3, 3), (8, 8), beta=1.0)
    with pytest.raises(ValueError, match="size"):
        difficulty_map(scores(), (8,), beta=1.0)
    with pytest.raises(ValueError, match="interpolation"):
        difficulty_map(scores(), (8, 8), beta=1.0, interpolation="lanczos")


# -- difficulty_beta -----------------------------------------------------------------------------------------------


def test_beta_ramp():
    values = [difficulty_beta(step, beta_max=2.0, warmup_steps=10) for step in (0, 1, 5, 10, 11, 1000)]
    assert values == pytest.approx([0.0, 0.2, 1.0, 2.0, 2.0, 2.0])
    assert difficulty_beta(0, beta_max=1.5, warmup_steps=0) == 1.5
    with pytest.raises(ValueError, match="step"):
        difficulty_beta(-1, beta_max=1.0, warmup_steps=10)
    with pytest.raises(ValueError, match="beta_max"):
        difficulty_beta(1, beta_max=-1.0, warmup_steps=10)


# -- difficulty_l1 -------------------------------------------------------------------------------------------------


def tensors(seed: int = 0, shape=(2, 1, 7, 9)):
    generator = torch.Generator().manual_seed(seed)
    pred = torch.rand(shape, generator=generator, dtype=torch.float64)
    target = torch.rand(shape, generator=generator, dtype=torch.float64)
    weight = 1 + torch.rand(shape, generator=generator, dtype=torch.float64)
    mask = (torch.rand(shape, generator=generator) > 0.4).to(torch.float64)
    return pred, target, weight, mask


def test_l1_hand_computation_without_map_and_mask():
    pred, target, _, _ = tensors()
    by_hand = sum(abs(a - b) for a, b in zip(pred.flatten().tolist(), target.flatten().tolist())) / pred.numel()
    assert float(difficulty_l1(pred, target)) == pytest.approx(by_hand)


def test_l1_hand_computation_with_map_and_mask():
    pred, target, weight, mask = tensors(1)
    rows = zip(pred.flatten().tolist(), target.flatten().tolist(), weight.flatten().tolist(), mask.flatten().tolist())
    numerator = denominator = 0.0
    for p, t, w, m in rows:
        numerator += m * w * abs(p - t)
        denominator += m
    assert float(difficulty_l1(pred, target, weight, mask=mask)) == pytest.approx(numerator / denominator)
    assert float(difficulty_l1(pred, target, weight)) == pytest.approx(float((weight * (pred - target).abs()).mean()))
    assert float(difficulty_l1(pred, target, weight, reduction="sum")) == pytest.approx(
        float((weight * (pred - target).abs()).sum())
    )
    none = difficulty_l1(pred, target, weight, mask=mask, reduction="none")
    torch.testing.assert_close(none, mask * weight * (pred - target).abs())


def test_l2_hand_computation_with_map_and_mask():
    pred, target, weight, mask = tensors(3)
    rows = zip(pred.flatten().tolist(), target.flatten().tolist(), weight.flatten().tolist(), mask.flatten().tolist())
    numerator = denominator = 0.0
    for p, t, w, m in rows:
        numerator += m * w * (p - t) ** 2
        denominator += m
    assert float(difficulty_pixel(pred, target, weight, loss="l2", mask=mask)) == pytest.approx(numerator / denominator)
    none = difficulty_pixel(pred, target, weight, loss="l2", reduction="none")
    torch.testing.assert_close(none, weight * (pred - target) ** 2)


def test_pixel_l1_is_difficulty_l1_and_unknown_losses_are_named():
    pred, target, weight, mask = tensors(4)
    assert torch.equal(
        difficulty_pixel(pred, target, weight, mask=mask), difficulty_l1(pred, target, weight, mask=mask)
    )
    with pytest.raises(ValueError, match="loss must be one of"):
        difficulty_pixel(pred, target, loss="l3")


def test_l1_map_broadcasts_over_channels_and_doubling_it_doubles_the_loss():
    pred, target, _, _ = tensors(2, shape=(2, 3, 5, 6))
    weight = 1 + torch.rand(2, 1, 5, 6, dtype=torch.float64)
    once = difficulty_l1(pred, target, weight)
    twice = difficulty_l1(pred, target, 2 * weight)
    assert float(twice) == pytest.approx(2 * float(once))
    mask = torch.ones(2, 1, 5, 6, dtype=torch.float64)
    assert float(difficulty_l1(pred, target, weight, mask=mask)) == pytest.approx(float(once))


def test_l1_empty_mask_is_zero_not_nan():
    pred, target, weight, _ = tensors(3)
    pred.requires_grad_(True)
    loss = difficulty_l1(pred, target, weight, mask=torch.zeros_like(pred))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_l1_perfect_prediction_is_zero():
    pred, _, weight, mask = tensors(4)
    assert float(difficulty_l1(pred, pred.clone(), weight, mask=mask)) == 0.0


def test_l1_gradcheck():
    pred, target, weight, mask = tensors(5, shape=(1, 1, 4, 5))
    pred = (pred + 0.01).requires_grad_(True)  # keep |pred - target| away from its kink at 0
    target = target.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, t: difficulty_l1(p, t, weight, mask=mask), (pred, target))


def test_module_equals_functional():
    pred, target, weight, mask = tensors(6)
    torch.testing.assert_close(
        DifficultyL1Loss()(pred, target, weight, mask), difficulty_l1(pred, target, weight, mask=mask)
    )
    torch.testing.assert_close(
        DifficultyL1Loss("none")(pred, target, weight), difficulty_l1(pred, target, weight, reduction="none")
    )


def test_l1_bad_inputs():
    pred, target, weight, _ = tensors(7)
    with pytest.raises(ValueError, match="same shape"):
        difficulty_l1(pred, target[..., :-1])
    with pytest.raises(ValueError, match="difficulty must broadcast"):
        difficulty_l1(pred, target, weight[..., :-1])
    with pytest.raises(ValueError, match="mask must broadcast"):
        difficulty_l1(pred, target, mask=torch.ones(2, 1, 7, 9, 2))
    with pytest.raises(ValueError, match="reduction"):
        difficulty_l1(pred, target, reduction="max")
    with pytest.raises(ValueError, match="reduction"):
        DifficultyL1Loss("max")
