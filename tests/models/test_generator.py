import json

import pytest
import torch

from ds3kit.models import GENERATOR_PRESETS, Generator, build_generator


def make(seed: int = 0, **kwargs) -> Generator:
    torch.manual_seed(seed)
    return Generator(**{"base_channels": 4, "num_levels": 3, "fusion_blocks": 1, **kwargs})


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size", [(37, 45), (32, 32), (5, 7), (2, 3)])
def test_output_shape_and_range_for_any_size(size):
    generator = make()
    torch.manual_seed(1)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = generator(x)
    assert y.shape == (2, 1, *size)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_features_match_feature_channels_and_line_up_with_the_input():
    generator = make()
    prediction, features = generator.forward_with_features(torch.rand(2, 3, 37, 45))
    assert len(features) == len(generator.feature_channels) == 4  # 3 levels + fused bottleneck
    assert [f.shape[1] for f in features] == generator.feature_channels == [12, 24, 48, 48]
    # ceil(H / r), ceil(W / r): level 0 is full resolution, the last two are the bottleneck before / after fusion.
    assert [tuple(f.shape[-2:]) for f in features] == [(37, 45), (19, 23), (10, 12), (10, 12)]
    assert generator.feature_reductions == [1, 2, 4, 4]
    assert prediction.shape == (2, 1, 37, 45)


def test_forward_with_features_agrees_with_forward_and_encode():
    generator = make().eval()
    x = torch.rand(2, 3, 21, 19)
    prediction, features = generator.forward_with_features(x)
    torch.testing.assert_close(prediction, generator(x))
    for a, b in zip(features, generator.encode(x)):
        torch.testing.assert_close(a, b)


def test_single_channel_encode_broadcasts_to_every_encoder():
    generator = make()
    y = torch.rand(2, 1, 23, 29)
    single = generator.encode(y)
    expanded = generator.encode(y.expand(-1, 3, -1, -1))
    assert [f.shape[1] for f in single] == generator.feature_channels
    for a, b in zip(single, expanded):
        torch.testing.assert_close(a, b)


def test_modality_encoders_are_separate():
    generator = make()
    x = torch.rand(1, 3, 16, 16)
    base = generator.encode(x)[0]
    changed = x.clone()
    changed[:, 1] = torch.rand(16, 16)  # T2 only
    moved = generator.encode(changed)[0]
    c = generator.encoders[0].channels[0]
    torch.testing.assert_close(moved[:, :c], base[:, :c])  # T1 encoder untouched
    assert not torch.allclose(moved[:, c : 2 * c], base[:, c : 2 * c])


def test_wrong_channel_count_is_a_clear_error():
    generator = make()
    with pytest.raises(ValueError, match="3 channels"):
        generator(torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        generator(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="3 channels"):
        generator(torch.rand(1, 1, 16, 16))  # forward does not broadcast; only encode does


def test_config_round_trip_rebuilds_the_same_network():
    generator = make(norm="group", fusion_blocks=2)
    config = json.loads(json.dumps(generator.config()))
    rebuilt = Generator(**config)
    assert param_count(rebuilt) == param_count(generator)
    rebuilt.load_state_dict(generator.state_dict())
    x = torch.rand(2, 3, 17, 23)
    torch.testing.assert_close(rebuilt(x), generator(x))


def test_gradients_reach_every_parameter():
    generator = make()
    prediction, features = generator.forward_with_features(torch.rand(2, 3, 15, 13))
    (prediction.mean() + features[-1].mean()).backward()
    missing = [name for name, p in generator.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_presets_and_overrides():
    assert set(GENERATOR_PRESETS) >= {"tiny", "small", "large"}
    small = build_generator("small")
    assert 300_000 <= param_count(small) <= 1_000_000
    assert build_generator("large").config()["base_channels"] == 64
    assert build_generator("large").config()["num_levels"] == 4
    assert build_generator("small", base_channels=8).config()["base_channels"] == 8
    with pytest.raises(ValueError, match="preset"):
        build_generator("huge")


def test_fusion_blocks_zero_is_concatenation_only():
    generator = make(fusion_blocks=0)
    features = generator.encode(torch.rand(1, 3, 16, 16))
    torch.testing.assert_close(features[-1], features[-2])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="norm"):
        make(norm="layer")
    with pytest.raises(ValueError, match="encoder"):
        make(encoder="resnet18")
    with pytest.raises(ValueError, match="num_levels"):
        make(num_levels=0)


def test_timm_encoder_variant():
    pytest.importorskip("timm")
    generator = make(encoder="timm:test_efficientnet", num_levels=3)
    # stem (full resolution) + the first two timm levels (reductions 2 and 4), channels from feature_info
    assert generator.feature_reductions == [1, 2, 4, 4]
    assert generator.feature_channels == [3 * 4, 3 * 16, 3 * 24, 3 * 24]
    x = torch.rand(2, 3, 33, 30)
    prediction, features = generator.forward_with_features(x)
    assert prediction.shape == (2, 1, 33, 30)
    assert [f.shape[1] for f in features] == generator.feature_channels
    assert [tuple(f.shape[-2:]) for f in features] == [(33, 30), (17, 15), (9, 8), (9, 8)]
    prediction.mean().backward()
    assert generator.encoders[0].backbone.conv_stem.weight.grad is not None  # gradients reach the timm backbone
    rebuilt = Generator(**generator.config())
    assert param_count(rebuilt) == param_count(generator)
    with pytest.raises(ValueError, match="unknown timm model"):
        make(encoder="timm:no_such_model_xyz")


def test_residual_output_starts_as_copy_t1_and_stays_in_range():
    generator = make(output="residual")
    torch.manual_seed(2)
    x = torch.rand(2, 3, 37, 45)
    with torch.no_grad():
        y = generator(x)
    torch.testing.assert_close(y, x[:, :1])  # the correction head starts at zero, the mix at "copy T1"
    with torch.no_grad():
        generator.input_mix.bias.fill_(0.7)  # push part of the output above 1
        y = generator(x)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 and bool((y == 1.0).any())


def test_residual_output_passes_gradients_through_the_clip():
    generator = make(output="residual")
    with torch.no_grad():
        generator.input_mix.bias.fill_(2.0)  # every voxel clipped at 1
    x = torch.rand(1, 3, 16, 16)
    generator(x).sum().backward()
    # Straight-through: a clipped voxel still tells the mix which way to move.
    assert float(generator.input_mix.bias.grad.abs().sum()) > 0


def test_output_option_is_checked_and_kept_in_the_config():
    with pytest.raises(ValueError, match="output must be one of"):
        make(output="tanh")
    generator = make(output="residual")
    rebuilt = Generator(**generator.config())
    assert rebuilt.config()["output"] == "residual" and rebuilt.input_mix is not None
