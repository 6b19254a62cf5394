"""ds3kit.models.fusion: the generator's inference copy computes the same function."""

import pytest
import torch

from ds3kit.models import Generator, for_inference
from ds3kit.models.fusion import GroupedEncoders, SplitDecoderLevel


def make(seed: int = 0, **kwargs) -> Generator:
    torch.manual_seed(seed)
    return Generator(**{"base_channels": 4, "num_levels": 3, "fusion_blocks": 1, **kwargs})


@pytest.mark.parametrize("norm", ["instance", "batch", "group", "none"])
def test_for_inference_groups_the_encoders_and_computes_the_same_function(norm):
    generator = make(norm=norm).double()
    if norm == "batch":  # non-trivial running statistics
        generator.train()
        generator(torch.rand(4, 3, 32, 32, dtype=torch.float64))
    generator.eval()
    fast = for_inference(generator)
    assert isinstance(fast.encoders, GroupedEncoders) and len(fast.encoders) == 3
    assert all(isinstance(level, SplitDecoderLevel) for level in fast.decoder)
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    x = torch.rand(2, 3, 37, 45, dtype=torch.float64)
    with torch.no_grad():
        expected, expected_features = generator.forward_with_features(x)
        actual, actual_features = fast.forward_with_features(x)
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
        for a, b in zip(actual_features, expected_features):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast.encode(x[:, :1]), generator.encode(x[:, :1]), rtol=1e-12, atol=1e-12)


def test_for_inference_of_an_inference_copy_is_the_same_function():
    generator = make().eval()
    fast = for_inference(generator)
    again = for_inference(fast)
    x = torch.rand(1, 3, 21, 19)
    with torch.no_grad():
        torch.testing.assert_close(again(x), fast(x))


def test_for_inference_is_a_copy_the_source_does_not_reach():
    generator = make().eval()
    fast = for_inference(generator)
    x = torch.rand(1, 3, 16, 16)
    before = fast(x)
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.add_(1.0)
    torch.testing.assert_close(fast(x), before)
    assert generator.encoders[0].levels[0][0][0].weight.requires_grad  # the source keeps training


def test_for_inference_keeps_timm_encoders_as_they_are():
    pytest.importorskip("timm")
    generator = make(encoder="timm:test_efficientnet", num_levels=3).eval()
    fast = for_inference(generator)
    assert isinstance(fast.encoders, torch.nn.ModuleList)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), generator(x))


def test_residual_inference_copy_computes_the_same_function():
    generator = make(output="residual")
    torch.manual_seed(3)
    for parameter in generator.parameters():
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    x = torch.rand(2, 3, 24, 28)
    with torch.no_grad():
        expected = generator.eval()(x)
        actual = for_inference(generator)(x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
