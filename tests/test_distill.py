import pytest
import torch

from ds3kit.distill import DistillationOutput, DualLevelDistillation
from ds3kit.models import Generator


def generator(seed: int, base_channels: int = 4) -> Generator:
    torch.manual_seed(seed)
    generator = Generator(base_channels=base_channels, num_levels=3, fusion_blocks=1)
    # A fresh residual head outputs copy-T1 whatever the seed; a trained-looking head makes the two networks differ.
    torch.nn.init.normal_(generator.head.weight, std=0.2)
    return generator


def inputs(seed: int = 10, size=(19, 23)) -> torch.Tensor:
    return torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_losses_vanish_when_the_student_equals_the_teacher():
    teacher, student = generator(0), generator(1)
    student.load_state_dict(teacher.state_dict())
    out = DualLevelDistillation(teacher, student)(inputs())
    assert isinstance(out, DistillationOutput)
    assert float(out.feature_loss.detach()) == 0.0 and float(out.image_loss.detach()) == 0.0
    assert float(out.total.detach()) == 0.0


def test_losses_match_a_hand_computation():
    teacher, student = generator(0), generator(1)
    x = inputs()
    out = DualLevelDistillation(teacher, student, feature_weight=0.5, image_weight=3.0)(x)
    with torch.no_grad():
        t_pred, t_feats = teacher.forward_with_features(x)
        s_pred, s_feats = student.forward_with_features(x)
    feature = sum(((s - t) ** 2).mean() for s, t in zip(s_feats, t_feats)) / len(t_feats)
    image = (s_pred - t_pred).abs().mean()
    torch.testing.assert_close(out.feature_loss.detach(), feature)
    torch.testing.assert_close(out.image_loss.detach(), image)
    torch.testing.assert_close(out.total.detach(), 0.5 * feature + 3.0 * image)
    assert float(out.feature_loss.detach()) > 0 and float(out.image_loss.detach()) > 0


def test_gradients_reach_the_student_and_never_the_teacher():
    teacher, student = generator(0), generator(1)
    out = DualLevelDistillation(teacher, student)(inputs())
    assert not out.teacher_prediction.requires_grad
    assert all(not t.requires_grad for t in out.teacher_features)
    out.total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    student_grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in student_grads)
    assert sum(float(g.abs().sum()) for g in student_grads) > 0


def test_teacher_is_not_a_registered_submodule():
    teacher, student = generator(0), generator(1)
    distillation = DualLevelDistillation(teacher, student)
    assert distillation.teacher is teacher
    ids = {id(p) for p in distillation.parameters()}
    assert ids == {id(p) for p in student.parameters()}


def test_image_loss_uses_the_map_and_the_mask():
    teacher, student = generator(0), generator(1)
    distillation = DualLevelDistillation(teacher, student)
    x = inputs()
    weight = 1 + torch.rand(2, 1, *x.shape[-2:], generator=torch.Generator().manual_seed(3))
    once = distillation(x, weight).image_loss
    twice = distillation(x, 2 * weight).image_loss
    torch.testing.assert_close(twice, 2 * once)
    mask = torch.zeros(2, 1, *x.shape[-2:])
    mask[..., :5, :5] = 1
    out = distillation(x, weight, mask=mask)
    expected = (mask * weight * (out.student_prediction - out.teacher_prediction).abs()).sum() / mask.sum()
    torch.testing.assert_close(out.image_loss, expected)


def test_difficulty_callable_gets_the_student_prediction_and_is_detached():
    teacher, student = generator(0), generator(1)
    seen = {}

    def weigh(prediction: torch.Tensor) -> torch.Tensor:
        seen["prediction"] = prediction
        return prediction * 0 + 1.5 + prediction  # depends on the prediction: must be detached before use

    out = DualLevelDistillation(teacher, student)(inputs(), weigh)
    assert seen["prediction"] is out.student_prediction and seen["prediction"].requires_grad
    assert not out.difficulty.requires_grad
    expected = (
        (1.5 + out.student_prediction.detach()) * (out.student_prediction - out.teacher_prediction).abs()
    ).mean()
    torch.testing.assert_close(out.image_loss, expected)


def test_l2_image_loss_and_feature_layers_subset():
    teacher, student = generator(0), generator(1)
    x = inputs()
    out = DualLevelDistillation(teacher, student, image_loss="l2", feature_layers=[0, -1])(x)
    with torch.no_grad():
        t_pred, t_feats = teacher.forward_with_features(x)
    torch.testing.assert_close(out.image_loss, ((out.student_prediction - t_pred) ** 2).mean())
    first = ((out.student_features[0] - t_feats[0]) ** 2).mean()
    last = ((out.student_features[-1] - t_feats[-1]) ** 2).mean()
    expected = (first + last) / 2
    torch.testing.assert_close(out.feature_loss, expected)
    off = DualLevelDistillation(teacher, student, feature_layers=[])(x)
    assert float(off.feature_loss) == 0.0


def test_width_mismatch_is_a_clear_error_naming_the_layer():
    teacher, student = generator(0, base_channels=8), generator(1, base_channels=4)
    message = r"feature layer 0: student shape \(2, 12, 19, 23\).*teacher shape \(2, 24, 19, 23\)"
    with pytest.raises(ValueError, match=message):
        DualLevelDistillation(teacher, student)(inputs())


def test_adapters_bridge_different_widths_and_learn():
    teacher, student = generator(0, base_channels=8), generator(1, base_channels=4)
    distillation = DualLevelDistillation(teacher, student, adapters=True)
    assert distillation.adapters is not None and len(distillation.adapters) == 4
    adapter_ids = {id(p) for p in distillation.adapters.parameters()}
    assert adapter_ids and adapter_ids <= {id(p) for p in distillation.parameters()}
    out = distillation(inputs())
    assert [f.shape[1] for f in out.teacher_features] == teacher.feature_channels
    out.total.backward()
    assert all(p.grad is not None for p in distillation.adapters.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_bad_arguments():
    teacher, student = generator(0), generator(1)
    with pytest.raises(ValueError, match="forward_with_features"):
        DualLevelDistillation(torch.nn.Conv2d(3, 1, 1), student)
    with pytest.raises(ValueError, match="image_loss"):
        DualLevelDistillation(teacher, student, image_loss="ssim")
    with pytest.raises(ValueError, match="out of range"):
        DualLevelDistillation(teacher, student, feature_layers=[7])(inputs())
    with pytest.raises(ValueError, match="feature_channels"):
        DualLevelDistillation(teacher, _NoChannels(student), adapters=True)


class _NoChannels(torch.nn.Module):
    def __init__(self, inner: Generator) -> None:
        super().__init__()
        self.inner = inner

    def forward_with_features(self, x):
        return self.inner.forward_with_features(x)


def test_the_two_phases_give_what_forward_gives():
    teacher, student = generator(0), generator(1)
    distillation = DualLevelDistillation(teacher, student, feature_weight=0.5, image_weight=2.0)
    x = inputs()
    weight = 1.0 + torch.rand(x.shape[0], 1, *x.shape[-2:])
    whole = distillation(x, weight)
    phases = distillation.losses(distillation.run(x), weight)
    for name in ("feature_loss", "image_loss", "total"):
        torch.testing.assert_close(getattr(phases, name), getattr(whole, name))


def test_losses_take_another_image_target():
    distillation = DualLevelDistillation(generator(0), generator(1))
    forward = distillation.run(inputs())
    target = torch.rand_like(forward.teacher_prediction)
    out = distillation.losses(forward, target=target)
    expected = (forward.student_prediction.detach().double() - target.double()).abs().mean()
    torch.testing.assert_close(out.image_loss.detach().double(), expected)
    with pytest.raises(ValueError, match="target must have"):
        distillation.losses(forward, target=target[:, :, :-1])
