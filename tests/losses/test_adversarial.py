import math

import pytest
import torch

from ds3kit.losses import adversarial_loss, realness

SCORES = torch.tensor([[-2.0, -0.5], [0.25, 3.0]]).view(1, 1, 2, 2)


def test_lsgan_values():
    s = SCORES.flatten().tolist()
    assert float(adversarial_loss(SCORES, True)) == pytest.approx(sum((v - 1) ** 2 for v in s) / 4)
    assert float(adversarial_loss(SCORES, False)) == pytest.approx(sum(v**2 for v in s) / 4)


def test_bce_values():
    s = SCORES.flatten().tolist()
    real = sum(-math.log(1 / (1 + math.exp(-v))) for v in s) / 4
    fake = sum(-math.log(1 - 1 / (1 + math.exp(-v))) for v in s) / 4
    assert float(adversarial_loss(SCORES, True, mode="bce")) == pytest.approx(real, rel=1e-6)
    assert float(adversarial_loss(SCORES, False, mode="bce")) == pytest.approx(fake, rel=1e-6)


def test_hinge_values():
    s = SCORES.flatten().tolist()
    assert float(adversarial_loss(SCORES, True, mode="hinge")) == pytest.approx(sum(max(0, 1 - v) for v in s) / 4)
    assert float(adversarial_loss(SCORES, False, mode="hinge")) == pytest.approx(sum(max(0, 1 + v) for v in s) / 4)
    generator_loss = adversarial_loss(SCORES, True, mode="hinge", for_discriminator=False)
    assert float(generator_loss) == pytest.approx(-sum(s) / 4)
    with pytest.raises(ValueError, match="target_is_real=True"):
        adversarial_loss(SCORES, False, mode="hinge", for_discriminator=False)


def test_perfect_discriminator_has_zero_lsgan_loss():
    assert float(adversarial_loss(torch.ones(2, 1, 3, 5), True)) == 0.0
    assert float(adversarial_loss(torch.zeros(2, 1, 3, 5), False)) == 0.0


def test_gradient_pushes_fake_scores_up_for_the_generator():
    scores = torch.zeros(1, 1, 3, 3, requires_grad=True)
    adversarial_loss(scores, True).backward()
    assert bool((scores.grad < 0).all())  # descending the loss raises the scores towards "real"


def test_realness():
    torch.testing.assert_close(realness(SCORES), torch.tensor([[0.0, 0.0], [0.25, 1.0]]).view(1, 1, 2, 2))
    torch.testing.assert_close(realness(SCORES, "bce"), torch.sigmoid(SCORES))
    torch.testing.assert_close(realness(SCORES, "hinge"), torch.tensor([[0.0, 0.25], [0.625, 1.0]]).view(1, 1, 2, 2))


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="lsgan"):
        adversarial_loss(SCORES, True, mode="wgan")
    with pytest.raises(ValueError, match="lsgan"):
        realness(SCORES, mode="wgan")
