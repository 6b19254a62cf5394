"""flip_passes / flip_mean: the flips' passes, each flipped back (and averaged); a given plain pass reused;
gradients as asked."""

import numpy as np
import pytest
import torch

from ds3kit.utils.flips import FLIPS, flip_mean, flip_passes


class Ramp(torch.nn.Module):
    """Not flip-equivariant (a position ramp), outside [0, 1] in places; counts its calls."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.5))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h, w = x.shape[-2:]
        ramp = torch.outer(torch.linspace(-0.3, 1.2, h), torch.linspace(0.5, 1.3, w))
        return self.scale * x[:, :1] * ramp + x[:, 1:2] ** 2


def reference_passes(x: np.ndarray, flips: str, clamp: bool) -> list[np.ndarray]:
    """float64 numpy: each pass on the flipped batch, flipped back (numpy's own flip)."""
    h, w = x.shape[-2:]
    ramp = np.outer(np.linspace(-0.3, 1.2, h), np.linspace(0.5, 1.3, w))
    passes = []
    for dims in FLIPS[flips]:
        axes = [d % 4 for d in dims]
        flipped = np.flip(x, axes) if axes else x
        out = 1.5 * flipped[:, :1] * ramp + flipped[:, 1:2] ** 2
        out = np.clip(out, 0, 1) if clamp else out
        passes.append(np.flip(out, axes) if axes else out)
    return passes


def reference(x: np.ndarray, flips: str, clamp: bool) -> np.ndarray:
    return np.mean(reference_passes(x, flips, clamp), axis=0)


@pytest.mark.parametrize("flips", list(FLIPS))
@pytest.mark.parametrize("clamp", [False, True])
def test_flip_mean_matches_a_float64_reference_on_odd_sizes(flips, clamp):
    x = torch.rand(3, 2, 7, 5, generator=torch.Generator().manual_seed(0))
    actual = flip_mean(Ramp(), x, flips, clamp=clamp)
    np.testing.assert_allclose(actual.detach().double().numpy(), reference(x.double().numpy(), flips, clamp), atol=1e-6)


@pytest.mark.parametrize("flips", list(FLIPS))
def test_flip_passes_are_each_pass_flipped_back_the_plain_one_first(flips):
    x = torch.rand(2, 2, 5, 7, generator=torch.Generator().manual_seed(3))
    passes = flip_passes(Ramp(), x, flips)
    assert passes.shape == (len(FLIPS[flips]), 2, 1, 5, 7) and passes.dtype == torch.float32
    np.testing.assert_allclose(
        passes.detach().double().numpy(), np.stack(reference_passes(x.double().numpy(), flips, False)), atol=1e-6
    )


def test_a_given_plain_pass_is_used_and_not_recomputed():
    x = torch.rand(2, 2, 6, 9, generator=torch.Generator().manual_seed(1))
    module = Ramp()
    plain = module(x)
    module.calls = 0
    marked = plain + 10.0  # a value the module cannot give: proves the given pass is the one averaged
    out = flip_mean(module, x, "all", unflipped=marked)
    assert module.calls == 3
    expected = flip_mean(module, x, "all") + 10.0 / 4
    torch.testing.assert_close(out, expected)


def test_gradients_flow_through_every_pass_unless_the_caller_disables_them():
    x = torch.rand(2, 2, 5, 5, generator=torch.Generator().manual_seed(2))
    module = Ramp()
    flip_mean(module, x, "all").sum().backward()
    # d/d scale of the mean of the flipped-back passes = mean over passes of sum(x0_flipped * ramp), flipped back.
    ramp = torch.outer(torch.linspace(-0.3, 1.2, 5), torch.linspace(0.5, 1.3, 5))
    expected = sum((x[:, :1].flip(d) * ramp).sum() for d in FLIPS["all"]) / 4
    torch.testing.assert_close(module.scale.grad, expected)
    with torch.no_grad():
        assert not flip_mean(module, x, "lr").requires_grad


def test_an_unknown_flip_set_is_named():
    with pytest.raises(ValueError, match="flips must be one of none, lr, all, got 'ud'"):
        flip_mean(Ramp(), torch.zeros(1, 2, 4, 4), "ud")
