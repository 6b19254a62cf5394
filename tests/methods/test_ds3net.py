"""DS3Net / PairedTeacher: the warm-up schedule, the student's initialisation, the noisy student, the loss switches."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor

from ds3kit.distill import DualLevelDistillation
from ds3kit.methods import DS3Net, DS3NetOptions
from ds3kit.models import build_discriminator, build_generator

TOTAL_STEPS = 10  # teacher_warmup_fraction 0.3 -> warmup_steps == 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_method(seed: int = 0, *, student_preset: dict | None = None, **options) -> DS3Net:
    torch.manual_seed(seed)
    options = {"nce_patches": 16, "teacher_warmup_fraction": 0.3, **options}
    return DS3Net(
        teacher=build_generator("tiny"),
        student=build_generator("tiny", **(student_preset or {})),
        teacher_discriminator=build_discriminator("tiny"),
        student_discriminator=build_discriminator("tiny"),
        options=DS3NetOptions(**options),
        total_steps=TOTAL_STEPS,
        lr=1e-3,
        betas=(0.5, 0.999),
    )


def brain_mask(size: int = 32) -> torch.Tensor:
    """A centred disc, so a batch has voxels outside the brain too."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    disc = coords[:, None] ** 2 + coords[None, :] ** 2 <= (size / 3) ** 2
    return disc.expand(2, 1, size, size).clone()


def batches(seed: int = 1) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(seed)
    mask = brain_mask()
    paired = {
        "inputs": torch.rand(2, 3, 32, 32, generator=generator) * mask,
        "target": torch.rand(2, 1, 32, 32, generator=generator) * mask,
        "brain_mask": mask,
    }
    # Kept away from 0 inside the brain, so an intensity perturbation visibly changes every brain voxel's range.
    unpaired = {"inputs": (0.2 + 0.6 * torch.rand(2, 3, 32, 32, generator=generator)) * mask, "brain_mask": mask}
    return paired, unpaired


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[name], b[name]) for name in a)


def run_step(method: DS3Net, step: int, seed: int = 123) -> dict[str, float]:
    paired, unpaired = batches()
    method.step = step
    torch.manual_seed(seed)
    return method.training_step(paired, unpaired)


def record_student_step_start(method: DS3Net, monkeypatch) -> dict[str, dict[str, torch.Tensor]]:
    """Snapshot the student and the teacher at the moment ``student_step`` is entered (after any copy)."""
    seen: dict[str, dict[str, torch.Tensor]] = {}
    original = method.student_step

    def wrapped(paired, unpaired):
        seen["student"] = snapshot(method.student)
        seen["teacher"] = snapshot(method.teacher.generator)
        return original(paired, unpaired)

    monkeypatch.setattr(method, "student_step", wrapped)
    return seen


#: The options under which the student's only loss term is L_id (and the teacher's only one L_pid, unweighted).
IMAGE_DISTILLATION_ONLY = dict(
    use_difficulty=False, use_nce=False, lambda_adv=0.0, lambda_student_adv=0.0, use_feature_distillation=False
)


def record_distillation_passes(method: DS3Net, monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(teacher prediction, student prediction) of every distillation pass ``method`` runs from now on."""
    passes = []
    original = method.distillation.run

    def recorded(*args, **kwargs):
        out = original(*args, **kwargs)
        passes.append((out.teacher_prediction.clone(), out.student_prediction.detach().clone()))
        return out

    monkeypatch.setattr(method.distillation, "run", recorded)
    return passes


def record_inputs(generator: torch.nn.Module, monkeypatch) -> list[torch.Tensor]:
    calls: list[torch.Tensor] = []
    original = generator.forward_with_features

    def wrapped(x):
        calls.append(x.detach().clone())
        return original(x)

    monkeypatch.setattr(generator, "forward_with_features", wrapped)
    return calls


# -- the teacher's warm-up -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [0, 2])
def test_only_the_teacher_trains_before_the_warmup_ends(step):
    method = make_method()
    assert method.warmup_steps == 3
    student, student_d, teacher = (
        snapshot(method.student),
        snapshot(method.student_discriminator),
        snapshot(method.teacher),
    )
    logs = run_step(method, step)
    assert logs and all(name.startswith("teacher/") for name in logs), sorted(logs)
    assert {"teacher/adv", "teacher/pixel", "teacher/nce", "teacher/d_real", "teacher/d_fake"} <= logs.keys()
    assert same_weights(snapshot(method.student), student)
    assert same_weights(snapshot(method.student_discriminator), student_d)
    assert method.student_nce is not None
    assert not same_weights(snapshot(method.teacher), teacher), "the teacher must have taken a step"


def test_joint_training_logs_student_terms_from_the_warmup_step_on():
    method = make_method()
    logs = run_step(method, method.warmup_steps)
    assert {
        "teacher/adv",
        "student/adv",
        "student/feature",
        "student/image",
        "student/nce",
        "student/d_real",
        "student/d_fake",
    } <= logs.keys()


# -- the student's initialisation ----------------------------------------------------------------------------------


def test_student_starts_joint_training_as_a_copy_of_the_warmed_up_teacher(monkeypatch):
    method = make_method(student_from_teacher=True)
    assert not same_weights(snapshot(method.student), snapshot(method.teacher.generator))
    seen = record_student_step_start(method, monkeypatch)
    run_step(method, method.warmup_steps)
    # The copy is of the teacher as it is after this step's teacher update, and happens before the student's update.
    assert same_weights(seen["student"], seen["teacher"])
    assert not same_weights(snapshot(method.student), seen["student"]), "the student must then take its own step"


def test_student_is_copied_only_at_the_warmup_step(monkeypatch):
    method = make_method(student_from_teacher=True)
    seen = record_student_step_start(method, monkeypatch)
    before = snapshot(method.student)
    run_step(method, method.warmup_steps + 1)
    assert same_weights(seen["student"], before)
    assert not same_weights(seen["student"], seen["teacher"])


def test_student_keeps_its_own_weights_without_student_from_teacher(monkeypatch):
    method = make_method(student_from_teacher=False)
    seen = record_student_step_start(method, monkeypatch)
    before = snapshot(method.student)
    run_step(method, method.warmup_steps)
    assert same_weights(seen["student"], before)
    assert not same_weights(seen["student"], seen["teacher"])


def test_student_from_teacher_rejects_a_student_of_another_architecture():
    with pytest.raises(ValueError, match="student_from_teacher"):
        make_method(student_from_teacher=True, student_preset={"base_channels": 8})
    make_method(student_from_teacher=False, student_preset={"base_channels": 8})  # allowed without the copy


# -- the noisy student ---------------------------------------------------------------------------------------------


def test_student_sees_perturbed_inputs_when_student_noise_is_on(monkeypatch):
    method = make_method(student_noise=True)
    assert method.student_noise is not None
    method.student_noise.p_intensity = 1.0  # perturb every sample, whatever the draw
    teacher_calls = record_inputs(method.teacher.generator, monkeypatch)
    student_calls = record_inputs(method.student, monkeypatch)
    paired, unpaired = batches()
    run_step(method, method.warmup_steps)

    assert len(student_calls) == 1
    # The teacher's last pass is the distillation's: on the clean unpaired inputs (the first is its paired step).
    assert torch.equal(teacher_calls[0], paired["inputs"])
    assert torch.equal(teacher_calls[-1], unpaired["inputs"])
    student_inputs = student_calls[0]
    assert student_inputs.shape == unpaired["inputs"].shape
    inside = unpaired["brain_mask"].expand_as(student_inputs)
    assert not torch.equal(student_inputs[inside], unpaired["inputs"][inside])
    # Intensity only: no warp, so the background stays exactly where (and what) it was.
    assert torch.equal(student_inputs[~inside], unpaired["inputs"][~inside])
    assert float(student_inputs.min()) >= 0.0 and float(student_inputs.max()) <= 1.0


def noisy_student_view(monkeypatch, **options) -> tuple[DS3Net, Tensor, Tensor]:
    """One joint step of a noisy student that perturbs every sample: the method, the clean unpaired inputs inside the
    brain, and what the student saw there."""
    method = make_method(student_noise=True, **options)
    method.student_noise.p_intensity = 1.0
    student_calls = record_inputs(method.student, monkeypatch)
    _, unpaired = batches()
    run_step(method, method.warmup_steps)
    inside = unpaired["brain_mask"].expand_as(student_calls[0])
    return method, unpaired["inputs"][inside], student_calls[0][inside]


def test_gaussian_student_noise_only_adds_noise_and_keeps_the_contrasts(monkeypatch):
    method, clean, seen = noisy_student_view(monkeypatch, student_noise_kind="gaussian")
    params = method.student_noise.last_params
    assert torch.all(params["gamma"] == 1.0) and torch.all(params["bias_strength"] == 0.0)
    assert float(params["noise_std"].max()) > 0.0
    change = seen - clean
    # Additive noise of at most 0.02 std around the clean inputs (clamped to [0, 1]): no gamma, no bias field.
    assert 0.0 < float(change.std()) < 0.025 and abs(float(change.mean())) < 0.005
    with pytest.raises(
        ValueError, match="student_noise_kind must be one of intensity, gaussian, bias-field, got 'speckle'"
    ):
        make_method(student_noise=True, student_noise_kind="speckle")


def test_bias_field_student_noise_multiplies_by_a_slow_field_alone(monkeypatch):
    method, clean, seen = noisy_student_view(monkeypatch, student_noise_kind="bias-field", student_noise_std=0.0)
    params = method.student_noise.last_params
    assert torch.all(params["gamma"] == 1.0) and torch.all(params["noise_std"] == 0.0)
    assert float(params["bias_strength"].max()) > 0.0
    ratio = seen[clean > 0.05] / clean[clean > 0.05]
    # A multiplicative field of at most exp(+-0.3), clamped to [0, 1]: every voxel scaled, none shifted.
    assert float(ratio.min()) >= math.exp(-0.3) - 1e-4 and float(ratio.max()) <= math.exp(0.3) + 1e-4
    assert float((ratio - 1).abs().max()) > 0.01


def test_student_noise_std_sets_the_noisy_students_noise(monkeypatch):
    method, clean, seen = noisy_student_view(monkeypatch, student_noise_kind="gaussian", student_noise_std=0.1)
    drawn = method.student_noise.last_params["noise_std"]
    assert float(drawn.max()) <= 0.1 and float(drawn.max()) > 0.02  # U(0, 0.1), seeded
    change = seen - clean
    assert float(change.std()) > 0.025  # more than the default 0.02 can give
    with pytest.raises(ValueError, match="student_noise_std must be >= 0, got -0.01"):
        make_method(student_noise=True, student_noise_std=-0.01)


def test_student_and_teacher_see_the_same_inputs_when_student_noise_is_off(monkeypatch):
    method = make_method(student_noise=False)
    assert method.student_noise is None
    teacher_calls = record_inputs(method.teacher.generator, monkeypatch)
    student_calls = record_inputs(method.student, monkeypatch)
    _, unpaired = batches()
    run_step(method, method.warmup_steps)
    assert len(student_calls) == 1
    assert torch.equal(student_calls[0], teacher_calls[-1])
    assert torch.equal(student_calls[0], unpaired["inputs"])


# -- the student's adversarial weight ------------------------------------------------------------------------------


def test_zero_student_adversarial_weight_drops_the_term():
    logs = run_step(make_method(lambda_student_adv=0.0), 3)
    assert "student/adv" not in logs
    assert {"teacher/adv", "student/feature", "student/image", "student/nce"} <= logs.keys()


def test_student_adversarial_weight_scales_the_logged_term():
    one = run_step(make_method(lambda_student_adv=1.0), 3)
    two = run_step(make_method(lambda_student_adv=2.0), 3)
    assert one["student/adv"] > 0
    assert two["student/adv"] / one["student/adv"] == pytest.approx(2.0, abs=1e-5)
    # Everything computed before the student's update is the same in both runs.
    for name in ("teacher/adv", "teacher/pixel", "student/feature", "student/image", "student/nce"):
        assert two[name] == pytest.approx(one[name], rel=1e-6), name


def test_student_adversarial_weight_is_independent_of_the_teachers():
    logs = run_step(make_method(lambda_adv=3.0, lambda_student_adv=1.0), 3)
    reference = run_step(make_method(lambda_adv=1.0, lambda_student_adv=1.0), 3)
    assert logs["teacher/adv"] / reference["teacher/adv"] == pytest.approx(3.0, abs=1e-5)
    assert "student/adv" in logs


# -- ablation switches ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, absent, present",
    [
        ({"use_feature_distillation": False}, {"student/feature"}, {"student/image", "student/adv"}),
        ({"use_image_distillation": False}, {"student/image"}, {"student/feature", "student/adv"}),
        ({"use_nce": False}, {"teacher/nce", "student/nce"}, {"student/feature", "student/image"}),
        ({"student_nce": False}, {"student/nce"}, {"teacher/nce", "student/feature", "student/image"}),
    ],
)
def test_ablation_switches_remove_their_loss_terms(options, absent, present):
    method = make_method(**options)
    logs = run_step(method, method.warmup_steps)
    assert not absent & logs.keys(), sorted(logs)
    assert present <= logs.keys(), sorted(logs)
    if "student_nce" in options or "use_nce" in options:
        assert method.student_nce is None


# -- DualLevelDistillation's student_inputs ------------------------------------------------------------------------


def distillation_pair() -> DualLevelDistillation:
    torch.manual_seed(0)
    return DualLevelDistillation(build_generator("tiny"), build_generator("tiny"))


def test_distillation_rejects_student_inputs_of_another_shape():
    distillation = distillation_pair()
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="student_inputs"):
        distillation(x, student_inputs=torch.rand(2, 3, 16, 32))


def test_distillation_with_student_inputs_equal_to_the_unpaired_inputs_matches_the_default():
    distillation = distillation_pair()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    default = distillation(x)
    explicit = distillation(x, student_inputs=x.clone())
    for name in ("feature_loss", "image_loss", "total", "teacher_prediction", "student_prediction"):
        torch.testing.assert_close(getattr(explicit, name), getattr(default, name), rtol=0, atol=0, msg=name)


def test_distillation_feeds_student_inputs_to_the_student_only():
    distillation = distillation_pair()
    generator = torch.Generator().manual_seed(5)
    x, noisy = torch.rand(2, 3, 32, 32, generator=generator), torch.rand(2, 3, 32, 32, generator=generator)
    out = distillation(x, student_inputs=noisy)
    with torch.no_grad():
        torch.testing.assert_close(out.teacher_prediction, distillation.teacher(x))
        torch.testing.assert_close(out.student_prediction.detach(), distillation.student(noisy))
        assert not torch.allclose(out.student_prediction.detach(), distillation.student(x))


def test_a_student_without_any_loss_term_is_refused():
    options = DS3NetOptions(
        use_feature_distillation=False, use_image_distillation=False, use_nce=False, lambda_student_adv=0.0
    )
    with pytest.raises(ValueError, match="the student has no loss term"):
        DS3Net(
            build_generator("tiny"),
            build_generator("tiny"),
            build_discriminator("tiny"),
            build_discriminator("tiny"),
            options,
            total_steps=10,
            lr=1e-3,
            betas=(0.5, 0.999),
        )


def test_student_pixel_adds_l_pid_on_the_paired_batch_and_nothing_without_it(monkeypatch):
    assert "student/pixel" not in run_step(make_method(), make_method().warmup_steps)
    method = make_method(student_pixel=True)
    seen = record_inputs(method.student, monkeypatch)
    logs = run_step(method, method.warmup_steps)
    assert logs["student/pixel"] > 0
    paired, _ = batches()
    assert any(x.shape == paired["inputs"].shape and torch.equal(x, paired["inputs"]) for x in seen)
    # Alone it is a complete student objective.
    make_method(
        student_pixel=True,
        use_feature_distillation=False,
        use_image_distillation=False,
        use_nce=False,
        lambda_student_adv=0.0,
    )


def test_the_student_is_selectable_only_after_the_teachers_warm_up():
    from ds3kit.methods import PairedTeacher

    method = make_method()
    warmup = method.warmup_steps
    assert warmup == round(0.3 * TOTAL_STEPS) > 0
    assert [method.has_trained("student", step) for step in (1, warmup, warmup + 1)] == [False, False, True]
    assert method.has_trained("teacher", 1)
    teacher = PairedTeacher(
        build_generator("tiny"),
        build_discriminator("tiny"),
        DS3NetOptions(),
        total_steps=5,
        lr=1e-3,
        betas=(0.5, 0.999),
    )
    assert teacher.has_trained("teacher", 1) and not teacher.has_trained("teacher", 0)


# -- the moving-average teacher ------------------------------------------------------------------------------------


def test_teacher_average_is_an_exponential_moving_average_of_the_teachers_weights():
    decay = 0.8
    method = make_method(teacher_ema=decay)
    expected = None
    for step in range(method.warmup_steps):  # teacher-only steps: the average follows every teacher update
        run_step(method, step)
        current = {name: p.detach().double() for name, p in method.teacher.generator.named_parameters()}
        if expected is None:
            expected = current  # the first step starts the average at the teacher
        else:
            expected = {name: decay * expected[name] + (1 - decay) * current[name] for name in current}
    averaged = dict(method.teacher_average.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name].double(), value, rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in method.teacher_average.parameters())
    assert "teacher_ema" in method.generators()
    optimised = {id(p) for opt in method.optimizers.values() for group in opt.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in method.teacher_average.parameters()}


def test_pseudo_targets_and_the_students_start_come_from_the_average_when_it_is_on(monkeypatch):
    method = make_method(teacher_ema=0.5)
    for step in range(method.warmup_steps):
        run_step(method, step)
    average = snapshot(method.teacher_average)
    assert not same_weights(average, snapshot(method.teacher.generator))
    seen = record_student_step_start(method, monkeypatch)
    run_step(method, method.warmup_steps)
    # The teacher's own paired step runs first and updates the average once more before the copy.
    assert same_weights(seen["student"], snapshot(method.teacher_average))
    assert method.distillation.teacher is method.teacher_average


def test_teacher_ema_must_be_a_decay_below_one():
    with pytest.raises(ValueError, match="teacher_ema"):
        make_method(teacher_ema=1.0)


# -- real T1ce of other subjects ------------------------------------------------------------------------------------


def make_reference_method(**options) -> DS3Net:
    torch.manual_seed(0)
    return DS3Net(
        teacher=build_generator("tiny"),
        student=build_generator("tiny"),
        teacher_discriminator=build_discriminator("tiny"),
        student_discriminator=build_discriminator("tiny", in_channels=1),
        options=DS3NetOptions(nce_patches=16, **options),
        total_steps=TOTAL_STEPS,
        lr=1e-3,
        betas=(0.5, 0.999),
    )


def test_an_unconditional_student_discriminator_judges_other_subjects_t1ce_against_the_synthesis(monkeypatch):
    method = make_reference_method()
    paired, unpaired = batches()
    reference = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    unpaired = {**unpaired, "reference_target": reference, "reference_brain_mask": unpaired["brain_mask"]}
    calls = []
    original = method.student_discriminator.forward

    def recording(x, y=None):
        calls.append((x.detach().clone(), y))
        return original(x, y)

    monkeypatch.setattr(method.student_discriminator, "forward", recording)
    method.step = method.warmup_steps
    logs = method.training_step(paired, unpaired)
    assert {"student/adv", "student/d_real", "student/d_fake"} <= logs.keys()
    assert all(y is None and x.shape[1] == 1 for x, y in calls)  # T1ce alone, never the inputs
    assert any(torch.equal(x, reference) for x, _ in calls)  # the real side is the other subjects' T1ce
    assert not any(torch.equal(x, paired["target"]) for x, _ in calls)  # never the paired subjects'


def test_reference_t1ce_and_the_student_discriminator_must_agree():
    paired, unpaired = batches()
    method = make_reference_method()
    method.step = method.warmup_steps
    with pytest.raises(ValueError, match="reference_target"):
        method.training_step(paired, unpaired)  # unconditional D^S without the other subjects' T1ce
    method = make_method()
    method.step = method.warmup_steps
    with pytest.raises(ValueError, match="reference_target"):
        method.training_step(paired, {**unpaired, "reference_target": paired["target"]})


# -- the tumour weight of L_pid --------------------------------------------------------------------------------------


def test_tumour_weighted_scales_the_map_inside_the_tumour_only():
    from ds3kit.methods.pseudo_targets import tumour_weighted

    difficulty = torch.tensor([[[[1.0, 1.5], [2.0, 1.0]]]])
    tumour = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    expected = torch.tensor([[[[1.0, 7.5], [10.0, 1.0]]]])
    assert torch.equal(tumour_weighted(difficulty, tumour, 5.0), expected)
    assert tumour_weighted(difficulty, tumour, 1.0) is difficulty
    assert tumour_weighted(difficulty, None, 5.0) is difficulty
    assert torch.equal(tumour_weighted(difficulty, tumour, 0.0), difficulty * (1 - tumour))
    with pytest.raises(ValueError, match="tumour_weight"):
        tumour_weighted(difficulty, tumour, -1.0)
    with pytest.raises(ValueError, match="tumour_weight must be >= 0"):  # refused when the method is built
        make_method(tumour_weight=-2.0)


@pytest.mark.parametrize(("weight", "loss"), [(1.0, "l1"), (4.0, "l1"), (3.0, "l2")])
def test_the_teachers_l_pid_counts_tumour_voxels_tumour_weight_times(weight, loss, monkeypatch):
    from ds3kit.methods import PairedTeacher

    torch.manual_seed(0)
    teacher = PairedTeacher(
        build_generator("tiny"),
        build_discriminator("tiny"),
        DS3NetOptions(use_difficulty=False, use_nce=False, lambda_adv=0.0, tumour_weight=weight, pixel_loss=loss),
        total_steps=10,
        lr=1e-3,
        betas=(0.5, 0.999),
    )
    paired, _ = batches()
    tumour = torch.zeros_like(paired["target"])
    tumour[..., 10:16, 12:20] = 1.0
    paired["tumour_mask"] = tumour
    predictions: list[torch.Tensor] = []
    original = teacher.generator.forward_with_features

    def recorded(x):
        out = original(x)
        predictions.append(out[0].detach().clone())
        return out

    monkeypatch.setattr(teacher.generator, "forward_with_features", recorded)
    logs = teacher.training_step(paired, None)
    # Independent of the helper: float64 weights 1 outside the tumour and `weight` inside it, mean over every pixel of
    # |e| (l1) or e * e (l2).
    error = predictions[0].double() - paired["target"].double()
    error = error.abs() if loss == "l1" else error * error
    weights = torch.where(tumour.bool(), weight, 1.0).double()
    expected = 100.0 * (weights * error).mean()
    assert logs["teacher/pixel"] == pytest.approx(expected.item(), rel=1e-5)


def test_pixel_loss_names_its_choices():
    from ds3kit.methods import PairedTeacher

    with pytest.raises(ValueError, match="pixel_loss must be one of l1, l2, got 'huber'"):
        PairedTeacher(
            build_generator("tiny"),
            build_discriminator("tiny"),
            DS3NetOptions(pixel_loss="huber"),
            total_steps=10,
            lr=1e-3,
            betas=(0.5, 0.999),
        )


@pytest.mark.parametrize("weight", [1.0, 3.0])
def test_the_students_l_id_counts_unpaired_tumour_voxels_student_tumour_weight_times(weight, monkeypatch):
    method = make_method(**IMAGE_DISTILLATION_ONLY, student_tumour_weight=weight)
    paired, unpaired = batches()
    tumour = torch.zeros_like(paired["target"])
    tumour[0, :, 8:14, 10:18] = 1.0
    unpaired["tumour_mask"] = tumour
    passes = record_distillation_passes(method, monkeypatch)
    method.step = method.warmup_steps
    logs = method.training_step(paired, unpaired)
    teacher, student = passes[0]
    # Independent of the helpers: float64, weight `weight` inside the unpaired tumour and 1 elsewhere, plain mean.
    weights = torch.where(tumour.bool(), weight, 1.0).double()
    expected = 100.0 * (weights * (student.double() - teacher.double()).abs()).mean()
    assert logs["student/image"] == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="student_tumour_weight must be >= 0"):
        make_method(student_tumour_weight=-1.0)


@pytest.mark.parametrize(("enhancing", "core"), [(1.0, 1.0), (4.0, 1.0), (1.0, 2.5), (4.0, 0.5)])
def test_the_students_l_id_counts_the_unpaired_enhancing_and_core_labels_on_top_of_the_tumour_weight(
    enhancing, core, monkeypatch
):
    method = make_method(
        **IMAGE_DISTILLATION_ONLY,
        student_tumour_weight=3.0,
        student_enhancing_weight=enhancing,
        student_core_weight=core,
    )
    paired, unpaired = batches()
    seg = random_seg(paired["target"].shape, seed=7)
    unpaired["seg"] = seg
    unpaired["tumour_mask"] = (seg > 0).float()
    passes = record_distillation_passes(method, monkeypatch)
    method.step = method.warmup_steps
    logs = method.training_step(paired, unpaired)
    teacher, student = passes[0]
    # Independent of the helpers: float64 weights per label (3 in the tumour, times enhancing in label 4 and core in
    # label 1, else 1).
    labels = seg.double()
    weights = torch.where(
        labels == 4, 3.0 * enhancing, torch.where(labels == 1, 3.0 * core, torch.where(labels > 0, 3.0, 1.0))
    )
    expected = 100.0 * (weights * (student.double() - teacher.double()).abs()).mean()
    assert logs["student/image"] == pytest.approx(expected.item(), rel=1e-5)
    if (enhancing, core) != (1.0, 1.0):
        name = "student_enhancing_weight" if enhancing != 1.0 else "student_core_weight"
        del unpaired["seg"]
        with pytest.raises(ValueError, match=f"{name} needs the unpaired batches' tumour labels"):
            method.training_step(paired, unpaired)


@pytest.mark.parametrize("name", ["student_enhancing_weight", "student_core_weight"])
def test_a_negative_label_factor_is_refused_by_name(name):
    with pytest.raises(ValueError, match=f"{name} must be >= 0"):
        make_method(**{name: -1.0})


def random_seg(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """BraTS labels (0, 1, 2, 4) in blocks, so each label covers some pixels of some images and none of others."""
    generator = torch.Generator().manual_seed(seed)
    seg = torch.zeros(shape)
    for b in range(shape[0]):
        for label in (1, 2, 4):
            if torch.rand((), generator=generator) < 0.8:
                row, col = (int(v) for v in torch.randint(0, shape[-1] - 6, (2,), generator=generator))
                seg[b, :, row : row + 5, col : col + 3 + label] = label
    return seg


def first_student_pass(method: DS3Net, monkeypatch) -> tuple[dict, dict[str, float], tuple[torch.Tensor, torch.Tensor]]:
    """Train ``method`` on labelled batches up to and including its first joint step: the unpaired batch, that
    step's logs, and its one distillation pass (teacher prediction, student prediction)."""
    paired, unpaired = batches()
    paired["seg"] = random_seg(paired["target"].shape, seed=7)
    unpaired["seg"] = random_seg(unpaired["inputs"][:, :1].shape, seed=8)
    passes = record_distillation_passes(method, monkeypatch)
    for step in range(method.warmup_steps + 1):
        method.step = step
        logs = method.training_step(paired, unpaired)
    (only,) = passes
    return unpaired, logs, only


def shift_to_paired_levels(target: torch.Tensor, seg: torch.Tensor, levels: torch.Tensor) -> None:
    """The tumour levels written out, in place: each image's voxels of each label shifted so their mean is the
    paired subjects' level there (labels absent from the image, or never seen in the paired ones, untouched)."""
    from ds3kit.methods.pseudo_targets import TUMOUR_LABELS

    for k, label in enumerate(TUMOUR_LABELS):
        for b in range(target.shape[0]):
            mask = seg[b] == label
            if mask.any() and not torch.isnan(levels[k]):
                target[b][mask] += levels[k] - target[b][mask].mean()


def test_label_sums_match_a_float64_loop():
    from ds3kit.methods.pseudo_targets import TUMOUR_LABELS, label_sums

    generator = torch.Generator().manual_seed(3)
    image = torch.rand(3, 1, 17, 19, generator=generator)
    seg = random_seg(image.shape, seed=4)
    sums, counts = label_sums(image, seg)
    for k, label in enumerate(TUMOUR_LABELS):
        values = [float(v) for v, s in zip(image.double().flatten().tolist(), seg.flatten().tolist()) if s == label]
        assert counts[k].item() == len(values)
        assert sums[k].item() == pytest.approx(sum(values), rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError, match="one shape"):
        label_sums(image, seg[:, :, :5])


def test_tumour_level_targets_move_each_labels_mean_to_its_level_and_keep_the_pattern():
    from ds3kit.methods.pseudo_targets import TUMOUR_LABELS, tumour_level_targets

    generator = torch.Generator().manual_seed(5)
    prediction = torch.rand(4, 1, 23, 21, generator=generator)
    seg = random_seg(prediction.shape, seed=6)
    levels = torch.tensor([0.25, float("nan"), 0.9], dtype=torch.float64)  # oedema never seen in a paired batch
    corrected = tumour_level_targets(prediction, seg, levels)
    # Independent of the function: image by image, label by label, in float64.
    for b in range(prediction.shape[0]):
        expected = prediction[b].double().clone()
        for k, label in enumerate(TUMOUR_LABELS):
            mask = seg[b] == label
            if mask.any() and not torch.isnan(levels[k]):
                expected[mask] += levels[k] - prediction[b].double()[mask].mean()
        torch.testing.assert_close(corrected[b].double(), expected, rtol=0, atol=1e-6)
        for k, label in enumerate(TUMOUR_LABELS):
            mask = seg[b] == label
            if mask.any() and not torch.isnan(levels[k]):
                assert corrected[b][mask].double().mean().item() == pytest.approx(levels[k].item(), abs=1e-6)
    outside = seg == 0
    assert torch.equal(corrected[outside], prediction[outside])
    assert torch.equal(corrected[seg == 2], prediction[seg == 2])  # NaN level: untouched
    with pytest.raises(ValueError, match="levels must have shape"):
        tumour_level_targets(prediction, seg, levels[:2])


def test_painted_tumour_level_targets_set_every_labelled_voxel_to_its_level():
    from ds3kit.methods.pseudo_targets import TUMOUR_LABELS, tumour_level_targets

    generator = torch.Generator().manual_seed(9)
    prediction = torch.rand(4, 1, 23, 21, generator=generator)
    seg = random_seg(prediction.shape, seed=10)
    levels = torch.tensor([0.25, float("nan"), 0.9], dtype=torch.float64)  # oedema never seen in a paired batch
    painted = tumour_level_targets(prediction, seg, levels, mode="replace")
    # Independent of the function: voxel by voxel, from the label map and the levels alone.
    expected = prediction.clone()
    for k, label in enumerate(TUMOUR_LABELS):
        if not torch.isnan(levels[k]):
            expected[seg == label] = float(levels[k])
    assert torch.equal(painted, expected)
    assert painted.dtype == prediction.dtype
    assert (seg == 4).any() and (seg == 1).any()
    assert torch.equal(painted[seg == 0], prediction[seg == 0])
    assert torch.equal(painted[seg == 2], prediction[seg == 2])  # NaN level: untouched
    # In bf16 (the training autocast) the painted voxels hold the level as bf16 rounds it.
    half = tumour_level_targets(prediction.bfloat16(), seg, levels, mode="replace")
    assert half.dtype == torch.bfloat16
    assert torch.equal(half[seg == 4], torch.full_like(half[seg == 4], 0.9))
    with pytest.raises(ValueError, match="mode must be one of shift, replace, got 'paint'"):
        tumour_level_targets(prediction, seg, levels, mode="paint")


def test_painted_tumour_levels_reach_the_students_image_distillation(monkeypatch):
    from ds3kit.methods.pseudo_targets import TUMOUR_LABELS

    method = make_method(**IMAGE_DISTILLATION_ONLY, tumour_levels=True, tumour_levels_mode="replace")
    unpaired, logs, (teacher, student) = first_student_pass(method, monkeypatch)
    levels = method.paired_levels
    assert not torch.isnan(levels).all()
    target = teacher.double().clone()
    for k, label in enumerate(TUMOUR_LABELS):
        if not torch.isnan(levels[k]):
            target[unpaired["seg"] == label] = levels[k].item()
    expected = 100.0 * (student.double() - target).abs().mean()
    assert logs["student/image"] == pytest.approx(expected.item(), rel=1e-5)


def test_tumour_levels_mode_names_its_choices():
    with pytest.raises(ValueError, match="tumour_levels_mode must be one of shift, replace, got 'paint'"):
        make_method(tumour_levels=True, tumour_levels_mode="paint")


def test_tumour_levels_distil_the_corrected_pseudo_target_at_the_paired_subjects_levels(monkeypatch):
    from ds3kit.methods.pseudo_targets import TUMOUR_LABELS

    method = make_method(**IMAGE_DISTILLATION_ONLY, tumour_levels=True)
    assert "paired_label_sums" in method.state_dict()  # resumes with the run
    paired, unpaired = batches()
    paired["seg"] = random_seg(paired["target"].shape, seed=7)
    unpaired["seg"] = random_seg(unpaired["inputs"][:, :1].shape, seed=8)
    passes = record_distillation_passes(method, monkeypatch)
    for step in range(method.warmup_steps + 1):  # the same paired batch each step: the levels are its means
        method.step = step
        logs = method.training_step(paired, unpaired)
    levels = method.paired_levels
    for k, label in enumerate(TUMOUR_LABELS):
        mask = paired["seg"] == label
        expected = paired["target"].double()[mask].mean().item() if mask.any() else float("nan")
        assert levels[k].item() == pytest.approx(expected, rel=1e-12, nan_ok=True)
    teacher, student = passes[0]
    target = teacher.double().clone()
    for k, label in enumerate(TUMOUR_LABELS):
        for b in range(target.shape[0]):
            mask = unpaired["seg"][b] == label
            if mask.any() and not torch.isnan(levels[k]):
                target[b][mask] += levels[k] - teacher[b].double()[mask].mean()
    expected = 100.0 * (student.double() - target).abs().mean()
    assert logs["student/image"] == pytest.approx(expected.item(), rel=1e-5)


def test_tumour_levels_from_subjects_are_the_whole_volumes_means_and_no_batch_moves_them():
    from ds3kit.methods.pseudo_targets import TUMOUR_LABELS

    rng = np.random.default_rng(3)
    shapes = [(7, 5, 3), (6, 9, 4)]  # odd sizes, two subjects
    sessions = [
        SimpleNamespace(target=rng.random(shape, dtype=np.float32), seg=rng.choice([0, 1, 2, 4], size=shape))
        for shape in shapes
    ]
    sessions[1].seg[sessions[1].seg == 1] = 0  # label 1 in one subject only
    no_labels = SimpleNamespace(target=rng.random((4, 4, 4), dtype=np.float32), seg=None)  # adds nothing
    method = make_method(**IMAGE_DISTILLATION_ONLY, tumour_levels=True, tumour_levels_from="subjects")
    method.observe_paired_subjects([*sessions, no_labels])
    # Independent reference: every labelled voxel of both subjects in one float64 array per label.
    values = np.concatenate([s.target.ravel().astype(np.float64) for s in sessions])
    labels = np.concatenate([s.seg.ravel() for s in sessions])
    expected = [values[labels == label].mean() for label in TUMOUR_LABELS]
    np.testing.assert_allclose(method.paired_levels.numpy(), expected, rtol=1e-12, atol=0)
    paired, unpaired = batches()
    paired["seg"] = random_seg(paired["target"].shape, seed=7)
    unpaired["seg"] = random_seg(unpaired["inputs"][:, :1].shape, seed=8)
    for step in range(method.warmup_steps + 1):
        method.step = step
        method.training_step(paired, unpaired)
    np.testing.assert_allclose(method.paired_levels.numpy(), expected, rtol=1e-12, atol=0)
    # A label no paired subject has stays NaN (its pseudo-targets are left alone).
    for session in sessions:
        session.seg[session.seg == 4] = 0
    method.observe_paired_subjects(sessions)
    assert torch.isnan(method.paired_levels[TUMOUR_LABELS.index(4)])


def test_tumour_levels_from_batches_take_nothing_from_the_subjects():
    method = make_method(tumour_levels=True, tumour_levels_from="batches")
    subject = SimpleNamespace(target=np.ones((4, 4, 4), dtype=np.float32), seg=np.full((4, 4, 4), 4))
    method.observe_paired_subjects([subject])
    assert torch.isnan(method.paired_levels).all()


def test_tumour_levels_from_names_its_choices():
    with pytest.raises(ValueError, match="tumour_levels_from must be one of subjects, batches, got 'volumes'"):
        make_method(tumour_levels=True, tumour_levels_from="volumes")


def test_tumour_levels_name_the_missing_labels():
    method = make_method(tumour_levels=True)
    paired, unpaired = batches()
    with pytest.raises(ValueError, match="paired batches' tumour labels"):
        run_step(method, 0)
    paired["seg"] = torch.zeros_like(paired["target"])
    method.step = method.warmup_steps
    with pytest.raises(ValueError, match="unpaired batches' tumour labels"):
        method.training_step(paired, unpaired)


def test_labelled_streams_name_the_streams_whose_labels_the_options_need():
    assert DS3Net.labelled_streams({}) == ()
    assert DS3Net.labelled_streams({"tumour_levels": True}) == ("paired", "unpaired")
    assert DS3Net.labelled_streams({"student_enhancing_weight": 4.0}) == ("unpaired",)
    assert DS3Net.labelled_streams({"student_enhancing_weight": 1.0}) == ()
    assert DS3Net.labelled_streams({"student_core_weight": 4.0}) == ("unpaired",)


def test_the_without_labels_hint_names_every_flag_that_needs_labels():
    assert DS3Net.without_labels_hint({}) == ""
    assert DS3Net.without_labels_hint({"tumour_levels": True}) == " (--no-tumour-levels trains without them)"
    both = DS3Net.without_labels_hint({"tumour_levels": True, "student_enhancing_weight": 4.0})
    assert both == " (--no-tumour-levels --student-enhancing-weight 1 trains without them)"
    every = DS3Net.without_labels_hint(
        {"tumour_levels": True, "student_enhancing_weight": 4.0, "student_core_weight": 2.0}
    )
    assert every == " (--no-tumour-levels --student-enhancing-weight 1 --student-core-weight 1 trains without them)"


# -- flip-averaged pseudo-targets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flips", "levels"), [("lr", False), ("all", False), ("all", True)])
def test_teacher_flips_distil_the_mean_of_the_teachers_flipped_back_passes(monkeypatch, flips, levels):
    options = dict(IMAGE_DISTILLATION_ONLY, teacher_flips=flips, tumour_levels=levels)
    method = make_method(**options)
    unpaired, logs, (unflipped, student) = first_student_pass(method, monkeypatch)
    # Independent reference: the flips in numpy on the inputs and back on each pass, the mean in float64.
    axes = {"lr": [(), (2,)], "all": [(), (2,), (3,), (2, 3)]}[flips]
    x = unpaired["inputs"].numpy()
    teacher = method.teacher.generator
    with torch.no_grad():
        outputs = [teacher(torch.from_numpy(np.flip(x, a).copy())).double().numpy() for a in axes]
    target = torch.from_numpy(np.mean([np.flip(out, a) for out, a in zip(outputs, axes)], axis=0))
    np.testing.assert_allclose(outputs[0], unflipped.double().numpy(), rtol=0, atol=1e-6)  # the same teacher
    assert not torch.allclose(target, unflipped.double(), atol=1e-4)  # the flips change the target
    if levels:
        shift_to_paired_levels(target, unpaired["seg"], method.paired_levels)
    expected = 100.0 * (student.double() - target).abs().mean()
    assert logs["student/image"] == pytest.approx(expected.item(), rel=1e-5)


def test_teacher_flips_names_its_choices():
    with pytest.raises(ValueError, match="teacher_flips must be one of none, lr, all, got 'ud'"):
        make_method(teacher_flips="ud")


# -- confidence-weighted pseudo-targets: the teacher's agreement across flips ---------------------------------------


def agreement_reference(passes: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, float]:
    """float64 numpy, image by image: the spread, its brain mean, 1 / (1 + s / s_bar) rescaled to brain mean 1."""
    spread = np.abs(passes - passes.mean(0)).mean(0)
    weights, typicals = np.ones_like(spread), []
    for b in range(spread.shape[0]):
        inside = np.ones(spread[b].shape, bool) if mask is None else mask[b] > 0
        typical = spread[b][inside].mean() if inside.any() else 0.0
        typicals.append(typical)
        if typical > 0:
            raw = 1.0 / (1.0 + spread[b] / typical)
            weights[b][inside] = raw[inside] / raw[inside].mean()
    return weights, float(np.mean(typicals))


@pytest.mark.parametrize("masked", [False, True])
def test_agreement_weights_match_a_float64_reference_on_odd_sizes(masked):
    from ds3kit.methods.pseudo_targets import agreement_weights

    generator = torch.Generator().manual_seed(5)
    passes = torch.rand(3, 4, 1, 9, 7, generator=generator)
    mask = (torch.rand(4, 1, 9, 7, generator=generator) > 0.4).float() if masked else None
    if masked:
        mask[1] = 0  # an image with no brain voxel: weights 1
    passes[:, 2] = passes[0, 2]  # an image whose passes all agree: weights 1
    weights, spread = agreement_weights(passes, mask)
    expected, typical = agreement_reference(passes.double().numpy(), None if mask is None else mask.numpy())
    np.testing.assert_allclose(weights.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert spread.item() == pytest.approx(typical, rel=1e-5)
    assert torch.equal(weights[2], torch.ones_like(weights[2]))
    inside = torch.ones_like(weights[0]) if mask is None else mask[0]
    assert (weights[0] * inside).sum() / inside.sum() == pytest.approx(1.0, rel=1e-5)  # the slice keeps its total
    if masked:
        assert torch.equal(weights[1], torch.ones_like(weights[1]))
        assert torch.equal(weights[0][mask[0] == 0], torch.ones_like(weights[0][mask[0] == 0]))
    # The more a voxel's passes disagree, the less it weighs.
    disagreement = (passes - passes.mean(0)).abs().mean(0)[3].flatten()
    order = disagreement.argsort()
    region = torch.ones_like(order, dtype=torch.bool) if mask is None else mask[3].flatten()[order] > 0
    assert torch.all(weights[3].flatten()[order][region].diff() <= 1e-6)


def test_agreement_weights_name_bad_shapes():
    from ds3kit.methods.pseudo_targets import agreement_weights

    with pytest.raises(ValueError, match=r"passes must be \(K >= 2, B, 1, H, W\)"):
        agreement_weights(torch.zeros(1, 2, 1, 4, 4))
    with pytest.raises(ValueError, match="brain_mask must have one pass's shape"):
        agreement_weights(torch.zeros(2, 2, 1, 4, 4), torch.ones(2, 1, 4, 5))


@pytest.mark.parametrize(("agreement", "flips"), [("lr", "none"), ("all", "none"), ("all", "lr")])
def test_teacher_agreement_weights_the_students_image_loss_by_its_teachers_flip_spread(monkeypatch, agreement, flips):
    from ds3kit.methods import ds3net as module

    calls = []
    original = module.flip_passes
    monkeypatch.setattr(
        module, "flip_passes", lambda *args, **kwargs: calls.append(args[2]) or original(*args, **kwargs)
    )
    method = make_method(**IMAGE_DISTILLATION_ONLY, teacher_agreement=agreement, teacher_flips=flips)
    unpaired, logs, (unflipped, student) = first_student_pass(method, monkeypatch)
    assert calls == [agreement]  # one set of passes per step: an lr-flipped target reuses all's first two
    # Independent reference: the teacher's passes on numpy-flipped inputs, flipped back, the weights in float64.
    axes = {"none": [()], "lr": [(), (2,)], "all": [(), (2,), (3,), (2, 3)]}
    x = unpaired["inputs"].numpy()
    with torch.no_grad():

        def passes(name):
            outs = [
                method.teacher.generator(torch.from_numpy(np.flip(x, a).copy())).double().numpy() for a in axes[name]
            ]
            return np.stack([np.flip(out, a) for out, a in zip(outs, axes[name])])

        weights, typical = agreement_reference(passes(agreement), unpaired["brain_mask"].numpy())
        target = passes(flips).mean(0)
    assert not np.allclose(weights, 1.0, atol=1e-3)  # the flips disagree somewhere: the weights do something
    expected = 100.0 * (weights * np.abs(student.double().numpy() - target)).mean()
    assert logs["student/image"] == pytest.approx(expected, rel=1e-5)
    assert logs["student/teacher_spread"] == pytest.approx(typical, rel=1e-5)


def test_teacher_agreement_is_off_by_default_and_names_its_choices():
    method = make_method(**IMAGE_DISTILLATION_ONLY)
    assert method.options.teacher_agreement == "none"
    with pytest.raises(ValueError, match="teacher_agreement must be one of none, lr, all, got 'ud'"):
        make_method(teacher_agreement="ud")


# -- consistency training: the student's own warp -------------------------------------------------------------------

QUARTER_TURN = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])


def quarter_turn(array: np.ndarray) -> np.ndarray:
    """What QUARTER_TURN does to a square (B, C, N, N) array, written with numpy: out[i, j] = in[j, N - 1 - i]."""
    return np.rot90(array, 1, axes=(2, 3)).copy()


@pytest.mark.parametrize("levels", [False, True])
def test_student_warp_distils_the_teachers_answer_carried_into_the_students_view(monkeypatch, levels):
    """A forced quarter turn moves pixel centres onto pixel centres, so the reference is numpy's rot90: the student
    sees the turned inputs; L_id compares it with the turned (tumour-levelled, in the unturned frame) teacher
    prediction, the rim counted as the turned labels say; L_fd with the turned teacher features."""
    from ds3kit.methods import ds3net as module

    monkeypatch.setattr(
        module, "random_affine", lambda batch, size, warps, device=None: QUARTER_TURN.repeat(batch, 1, 1)
    )
    options = dict(IMAGE_DISTILLATION_ONLY, use_feature_distillation=True, lambda_feature=3.0, student_warp=True)
    options.update(tumour_levels=levels, student_enhancing_weight=4.0)
    method = make_method(**options)
    paired, unpaired = batches()
    paired["seg"] = random_seg(paired["target"].shape, seed=7)
    unpaired["seg"] = random_seg(unpaired["inputs"][:, :1].shape, seed=8)
    student_calls = record_inputs(method.student, monkeypatch)
    passes = record_distillation_passes(method, monkeypatch)
    student_features = []
    losses = method.distillation.losses

    def recorded_losses(pass_, *args, **kwargs):
        student_features.extend(feature.detach().clone() for feature in pass_.student_features)
        return losses(pass_, *args, **kwargs)

    monkeypatch.setattr(method.distillation, "losses", recorded_losses)
    for step in range(method.warmup_steps + 1):
        method.step = step
        logs = method.training_step(paired, unpaired)
    ((teacher_prediction, student_prediction),) = passes
    x = unpaired["inputs"].numpy()
    np.testing.assert_array_equal(student_calls[-1].numpy(), quarter_turn(x))

    teacher = method.teacher.generator
    with torch.no_grad():
        reference, features = teacher.forward_with_features(torch.from_numpy(x.copy()))
    target = reference.double()
    if levels:
        shift_to_paired_levels(target, unpaired["seg"], method.paired_levels)
    target = quarter_turn(target.numpy())
    weights = np.where(quarter_turn(unpaired["seg"].numpy()) == 4, 4.0, 1.0)
    expected = 100.0 * np.mean(weights * np.abs(student_prediction.double().numpy() - target))
    assert logs["student/image"] == pytest.approx(expected, rel=1e-5)
    assert not np.allclose(target, teacher_prediction.double().numpy(), atol=1e-3)  # the turn changed the target
    assert len(student_features) == len(features) > 1  # every level, coarser than the images
    feature_terms = [
        np.mean((mine.double().numpy() - quarter_turn(theirs.double().numpy())) ** 2)
        for mine, theirs in zip(student_features, features)
    ]
    assert logs["student/feature"] == pytest.approx(3.0 * np.mean(feature_terms), rel=1e-4)


def test_student_warp_is_off_by_default_and_draws_nothing(monkeypatch):
    from ds3kit.methods import ds3net as module

    def forbidden(*args, **kwargs):
        raise AssertionError("random_affine must not be called without student_warp")

    monkeypatch.setattr(module, "random_affine", forbidden)
    method = make_method()
    assert method.options.student_warp is False
    run_step(method, method.warmup_steps)


# -- calibrated pseudo-targets ---------------------------------------------------------------------------------------

# A monotone map, far from the identity: dark voxels darker, bright ones brighter (64 knots, as the buffers hold).
CALIBRATION_SOURCE = np.linspace(0.0, 1.0, 64)
CALIBRATION_TARGET = np.clip(0.5 + 1.6 * (CALIBRATION_SOURCE - 0.5), 0.0, 1.0)


def piecewise_reference(x: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The calibration written out in float64 with numpy: interpolation inside the knots, slope 1 beyond, [0, 1]."""
    inside = np.interp(x, source, target)
    below = x + (target[0] - source[0])
    above = x + (target[-1] - source[-1])
    return np.clip(np.where(x < source[0], below, np.where(x > source[-1], above, inside)), 0.0, 1.0)


@pytest.mark.parametrize("levels", [False, True])
def test_calibrated_targets_distil_the_teachers_prediction_through_its_calibration_inside_the_brain(
    monkeypatch, levels
):
    method = make_method(**IMAGE_DISTILLATION_ONLY, calibrated_targets=True, tumour_levels=levels)
    method.teacher.generator.calibration.set_knots(CALIBRATION_SOURCE, CALIBRATION_TARGET)
    assert method.calibrated_during_training() == {"pseudo-targets": (method.teacher.generator, "none")}
    unpaired, logs, (teacher_prediction, student_prediction) = first_student_pass(method, monkeypatch)
    raw = teacher_prediction.double().numpy()
    brain = unpaired["brain_mask"].expand_as(teacher_prediction).numpy() > 0
    target = np.where(brain, piecewise_reference(raw, CALIBRATION_SOURCE, CALIBRATION_TARGET), raw)
    assert np.abs(target - raw)[brain].max() > 0.05 and (target == raw)[~brain].all()
    target = torch.from_numpy(target)
    if levels:
        shift_to_paired_levels(target, unpaired["seg"], method.paired_levels)
    expected = 100.0 * (student_prediction.double() - target).abs().mean()
    assert logs["student/image"] == pytest.approx(expected.item(), rel=1e-5)


def test_an_unfitted_calibration_leaves_the_pseudo_target_as_the_teachers_prediction(monkeypatch):
    losses = []
    for calibrated in (False, True):
        method = make_method(**IMAGE_DISTILLATION_ONLY, calibrated_targets=calibrated)
        for step in range(method.warmup_steps + 1):
            logs = run_step(method, step)
        losses.append(logs["student/image"])
    assert losses[0] == losses[1]
    assert make_method().calibrated_during_training() == {}  # off by default: the trainer fits nothing


def test_calibrated_target_maps_in_float32_and_returns_the_predictions_dtype():
    from ds3kit.methods.pseudo_targets import calibrated_target
    from ds3kit.models import IntensityCalibration

    calibration = IntensityCalibration()
    calibration.set_knots(CALIBRATION_SOURCE, CALIBRATION_TARGET)
    prediction = torch.linspace(0.0, 1.0, 2 * 1 * 8 * 8).reshape(2, 1, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1.0
    for dtype in (torch.float32, torch.bfloat16):
        out = calibrated_target(prediction.to(dtype), mask, calibration)
        assert out.dtype == dtype
        expected = piecewise_reference(prediction.to(dtype).double().numpy(), CALIBRATION_SOURCE, CALIBRATION_TARGET)
        expected = np.where(mask.numpy() > 0, expected, prediction.to(dtype).double().numpy())
        tolerance = 1e-6 if dtype == torch.float32 else 2**-8  # one bf16 rounding of the result
        np.testing.assert_allclose(out.double().numpy(), expected, rtol=0, atol=tolerance)


def test_calibrated_targets_need_the_unpaired_brain_masks():
    method = make_method(calibrated_targets=True)
    paired, unpaired = batches()
    del unpaired["brain_mask"]
    method.step = method.warmup_steps
    with pytest.raises(ValueError, match="calibrated_targets needs the unpaired batches' brain masks"):
        method.training_step(paired, unpaired)


def test_the_teacher_average_keeps_its_own_calibration_while_it_follows_the_teachers_other_buffers():
    method = make_method(teacher_ema=0.5, calibrated_targets=True)
    assert method.calibrated_during_training() == {"pseudo-targets": (method.teacher_average, "none")}
    method.teacher_average.calibration.set_knots(CALIBRATION_SOURCE, CALIBRATION_TARGET)
    for step in range(method.warmup_steps + 2):
        run_step(method, step)
    calibration = method.teacher_average.calibration
    assert torch.equal(calibration.target, torch.as_tensor(CALIBRATION_TARGET, dtype=calibration.target.dtype))
    assert not method.teacher.generator.calibration.fitted


# -- co-training: the teacher learns back from the student ----------------------------------------------------------


def test_teacher_mutual_adds_the_teachers_l1_to_the_students_prediction_once_the_student_has_joined():
    method = make_method(teacher_mutual=7.0)
    paired, unpaired = batches()
    for step in range(method.warmup_steps + 1):
        method.step = step
        assert "teacher/mutual" not in method.training_step(paired, unpaired)  # none before the student's first step
    method.step = method.warmup_steps + 1
    with torch.no_grad():  # the weights the term sees: both networks as they are before this step
        teacher = method.teacher.generator(unpaired["inputs"]).double()
        student = method.student(unpaired["inputs"]).double()
    before = snapshot(method.teacher.generator)
    logs = method.training_step(paired, unpaired)
    assert logs["teacher/mutual"] == pytest.approx(7.0 * (teacher - student).abs().mean().item(), rel=1e-5)
    assert not same_weights(before, snapshot(method.teacher.generator))


def test_teacher_mutual_is_a_non_negative_weight():
    with pytest.raises(ValueError, match="teacher_mutual must be >= 0"):
        make_method(teacher_mutual=-1.0)
