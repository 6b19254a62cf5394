import json

import pytest
import torch

from ds3kit.models import PatchDiscriminator, build_discriminator


@pytest.mark.parametrize(
    ("size", "num_layers", "grid"),
    [((64, 64), 3, (6, 6)), ((96, 80), 3, (10, 8)), ((37, 45), 2, (7, 9)), ((24, 24), 3, (1, 1))],
)
def test_conditional_output_shape(size, num_layers, grid):
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(base_channels=4, num_layers=num_layers)
    scores = discriminator(torch.rand(2, 3, *size), torch.rand(2, 1, *size))
    assert scores.shape == (2, 1, *grid)


def test_scores_are_raw_not_squashed():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(base_channels=4, num_layers=2, norm="none")
    with torch.no_grad():
        discriminator.model[-1].bias.fill_(5.0)  # a sigmoid would cap this below 1
    with torch.no_grad():
        assert float(discriminator(torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32)).min()) > 1.0


def test_unconditional_use():
    discriminator = build_discriminator("tiny", in_channels=1)
    assert discriminator(torch.rand(2, 1, 40, 40)).shape[:2] == (2, 1)


def test_condition_changes_the_scores():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(base_channels=4, num_layers=2)
    y = torch.rand(1, 1, 32, 32)
    assert not torch.allclose(discriminator(torch.rand(1, 3, 32, 32), y), discriminator(torch.rand(1, 3, 32, 32), y))


def test_bad_inputs_are_clear_errors():
    discriminator = PatchDiscriminator(base_channels=4)
    with pytest.raises(ValueError, match="4 input channels"):
        discriminator(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="same|share"):
        discriminator(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 32, 64))
    with pytest.raises(ValueError, match="at least 24"):
        discriminator(torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16))


def test_config_round_trip_and_presets():
    discriminator = build_discriminator("small")
    rebuilt = PatchDiscriminator(**json.loads(json.dumps(discriminator.config())))
    rebuilt.load_state_dict(discriminator.state_dict())
    x, y = torch.rand(1, 3, 48, 48), torch.rand(1, 1, 48, 48)
    torch.testing.assert_close(rebuilt(x, y), discriminator(x, y))
    assert build_discriminator("large").config()["base_channels"] == 64
    with pytest.raises(ValueError, match="preset"):
        build_discriminator("medium")
