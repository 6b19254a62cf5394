"""DS3-Net (Huang et al., MICCAI 2022) and its paired-only teacher, composed from ds3kit's parts.

Teacher G^T, trained on paired data only (so it IS the paper's "DS3-Net (paired only)")::

    M^T   = difficulty_map(D^T(x_p, G^T(x_p)))                       (detached, beta ramps up)
    L^T   = l_adv(D^T(x_p, G^T(x_p)), real)
          + l_pixel * mean(M^T |G^T(x_p) - y_p|)                        L_pid
          + l_nce * PatchNCE(E(G^T(x_p)), sg(E(x_p)), weights M^T)       L_pad

Student G^S, on unpaired data after the teacher's warm-up::

    M^S   = difficulty_map(D^S(x_u, G^S(x_u)))
    L^S   = l_adv(D^S(x_u, G^S(x_u)), real)
          + l_feature * mean_k ||f_k^S(x_u) - sg(f_k^T(x_u))||^2         L_fd
          + l_image * mean(M^S |G^S(x_u) - sg(G^T(x_u))|)                L_id
          + l_nce * PatchNCE(E^S(G^S(x_u)), sg(E^S(x_u)), weights M^S)   L_pad (option)

Discriminators: D^T real (x_p, y_p) vs fake (x_p, G^T(x_p)); D^S real (x_p, y_p) vs fake (x_u, G^S(x_u)), or,
where other unpaired subjects lend real T1ce (``--unpaired-t1ce other-subjects``), an unconditional D^S: real
y_r (never aligned with x_u) vs fake G^S(x_u).

Not in the paper (docs/method.md): ``teacher_ema`` gives the pseudo-targets sg(G^T(x_u)) from an exponential moving
average of the teacher's weights (shipped as ``teacher_ema``); ``student_pixel`` adds L_pid on the paired batches to
the student's loss; ``tumour_levels`` corrects the pseudo-targets inside the unpaired subjects' tumour labels with
the level the paired subjects' real T1ce has there (:func:`tumour_level_targets`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ds3kit.augment import MRIAugmentation
from ds3kit.distill import DualLevelDistillation
from ds3kit.losses import (
    PIXEL_LOSSES,
    PatchNCELoss,
    adversarial_loss,
    difficulty_beta,
    difficulty_map,
    difficulty_pixel,
)
from ds3kit.methods.base import Method, item
from ds3kit.methods.pseudo_targets import (
    CORE_LABEL,
    ENHANCING_LABEL,
    TUMOUR_LABELS,
    TUMOUR_LEVEL_MODES,
    agreement_weights,
    calibrated_target,
    label_sums,
    tumour_level_targets,
    tumour_weighted,
)
from ds3kit.models import PatchDiscriminator
from ds3kit.utils.flips import FLIPS, flip_passes
from ds3kit.utils.streams import STUDENT_STREAM
from ds3kit.utils.warp import WarpRange, random_affine, warp

if TYPE_CHECKING:
    from ds3kit.data.session import Session


@dataclass
class DS3NetOptions:
    """Loss weights and the reconstruction's switches (docs/method.md discusses each)."""

    lambda_adv: float = 1.0
    lambda_pixel: float = 100.0  # pix2pix's L1 weight
    lambda_nce: float = 1.0
    lambda_feature: float = 1.0
    lambda_image: float = 100.0  # the teacher's prediction is the student's pixel target
    beta_max: float = 1.0  # difficulty map M = 1 + beta * (1 - realness)
    beta_warmup_fraction: float = 0.3  # beta ramps 0 -> beta_max over this fraction of the steps
    gan_mode: str = "lsgan"
    nce_patches: int = 256
    nce_sampling: str = "uniform"  # or "difficulty": locations drawn in proportion to M
    nce_temperature: float = 0.07
    student_nce: bool = True  # the student also gets L_pad on its unpaired batches
    teacher_warmup_fraction: float = 0.3  # teacher-only steps on paired data before joint training
    student_from_teacher: bool = True  # the student starts joint training as a copy of the warmed-up teacher
    use_difficulty: bool = True  # ablation switch: False = M == 1 everywhere
    use_nce: bool = True
    use_feature_distillation: bool = True
    use_image_distillation: bool = True
    lambda_student_adv: float = 1.0  # the student's adversarial weight (lambda_adv is the teacher's)
    student_noise: bool = False  # noisy student: an intensity perturbation on the student's unpaired inputs only
    # What the noisy student's perturbation is (STUDENT_NOISE_KINDS): "intensity", the training augmentation's gamma,
    # bias field and noise; "gaussian", its additive noise alone, which leaves the inputs' contrasts as they are;
    # "bias-field", its slow multiplicative field per channel and its noise (student_noise_std 0: the field alone).
    student_noise_kind: str = "intensity"
    # The largest std of the noisy student's additive Gaussian noise (drawn per sample from U(0, this), on the inputs'
    # [0, 1] scale); 0.02 is the training augmentation's. The phantom's own input noise is 1.2-3 % of the signal.
    student_noise_std: float = 0.02
    student_pixel: bool = False  # the student also gets L_pid on the paired batches (not in the figure)
    teacher_ema: float = 0.0  # > 0: pseudo-targets from an exponential moving average of the teacher (this decay)
    tumour_weight: float = 1.0  # L_pid's weight inside the paired subjects' tumour (seg > 0); 1: no extra weight
    student_tumour_weight: float = 1.0  # L_id's weight inside the unpaired subjects' tumour (seg > 0); ours
    tumour_levels: bool = False  # pseudo-targets' tumour labels shifted to the paired subjects' T1ce level; ours
    # Where those levels are counted: "subjects", the paired subjects' whole volumes before any augmentation, or
    # "batches", a running mean over the augmented paired batches (the rule until 2026-12-06, biased by the warp).
    tumour_levels_from: str = "batches"
    # How the pseudo-target takes those levels (TUMOUR_LEVEL_MODES): "shift", each label's mean moved to its level,
    # the teacher's pattern inside kept; "replace", every voxel of the label at its level, the pattern dropped; ours.
    tumour_levels_mode: str = "shift"
    student_enhancing_weight: float = 1.0  # L_id's extra factor inside the unpaired enhancing tumour (label 4); ours
    student_core_weight: float = 1.0  # L_id's extra factor inside the unpaired necrotic / non-enhancing core (label 1)
    # The pseudo-target as the mean of the teacher's predictions on flipped copies of the unpaired batch, each flipped
    # back (ds3kit.utils.flips.FLIPS: "none", "lr" or "all"): the student distils an ensemble of its teacher; ours.
    teacher_flips: str = "none"
    # Consistency training: the student sees its unpaired batch through a random affine warp (ds3kit.utils.warp's
    # WarpRange: rotation, zoom, shift, flip) that the teacher does not; the pseudo-target, the distilled features
    # and the unpaired labels are warped alike, so the student is taught the teacher's answer for its view; ours.
    student_warp: bool = False
    # The error L_pid averages: "l1" (pix2pix, the paper) or "l2", whose minimiser is the conditional mean that MSE and
    # PSNR score; ours. L_id, to the teacher's deterministic prediction, stays L1.
    pixel_loss: str = "l1"
    # Calibrated pseudo-targets: after each validation check the trainer fits the pseudo-targets' generator's
    # intensity calibration (ds3kit.models.IntensityCalibration) on the validation subjects, and the student distils
    # the calibrated prediction inside the brain, so it learns levels fitted on held-out T1ce, not its teacher's; ours.
    calibrated_targets: bool = False
    # Co-training: once the student has joined, the teacher's loss also has this weight times the L1 between its
    # prediction on the unpaired batch and the student's (detached), so it learns back from the student that has seen
    # the unpaired subjects; 0: off (the teacher is the paired-only model); ours.
    teacher_mutual: float = 0.0
    # Confidence-weighted pseudo-targets: L_id's weight inside the brain follows the teacher's agreement with itself
    # across flipped copies of the unpaired batch (FLIPS: "none" = off, "lr", "all"), 1 / (1 + s / s_bar) with s the
    # passes' mean absolute deviation and s_bar its brain mean per slice, rescaled to mean 1 there
    # (:func:`agreement_weights`), so the student copies its teacher least where the teacher contradicts itself; ours.
    teacher_agreement: str = "none"

    def __post_init__(self) -> None:
        """Each option's own range, checked when the options are made (a recipe's command line, before any data is
        read); what depends on the networks is checked by :class:`DS3Net`."""
        for name in ("tumour_weight", "student_tumour_weight", "teacher_mutual", "student_noise_std", *_LABEL_FACTORS):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, choices in (
            ("pixel_loss", PIXEL_LOSSES),
            ("tumour_levels_from", TUMOUR_LEVEL_SOURCES),
            ("tumour_levels_mode", TUMOUR_LEVEL_MODES),
            ("teacher_flips", tuple(FLIPS)),
            ("teacher_agreement", tuple(FLIPS)),
            ("student_noise_kind", STUDENT_NOISE_KINDS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.teacher_ema < 1.0:
            raise ValueError(f"teacher_ema must be in [0, 1) (0: off), got {self.teacher_ema}")

    #: One line per option for the recipes' --help (docs/method.md has the discussion).
    HELP: ClassVar[dict[str, str]] = {
        "lambda_adv": "weight of the teacher's adversarial term",
        "lambda_pixel": "weight of L_pid, the difficulty-weighted L1 to the real T1ce (pix2pix: 100)",
        "lambda_nce": "weight of L_pad, the difficulty-weighted PatchNCE",
        "lambda_feature": "weight of L_fd, feature distillation from teacher to student",
        "lambda_image": "weight of L_id, the student's difficulty-weighted L1 to the teacher's prediction",
        "beta_max": "difficulty map M = 1 + beta (1 - realness): beta's final value",
        "beta_warmup_fraction": "fraction of the steps over which beta ramps from 0 to beta_max",
        "gan_mode": "adversarial loss: lsgan, bce or hinge",
        "nce_patches": "PatchNCE locations sampled per image and layer",
        "nce_sampling": "PatchNCE locations: uniform, or difficulty (in proportion to M)",
        "nce_temperature": "PatchNCE temperature tau",
        "student_nce": "the student also gets L_pad on its unpaired batches",
        "teacher_warmup_fraction": "fraction of the steps the teacher trains alone before the student joins",
        "student_from_teacher": "the student starts joint training as a copy of the warmed-up teacher",
        "use_difficulty": "weight the losses by the difficulty map (off: M = 1 everywhere)",
        "use_nce": "use the patchwise contrastive loss L_pad",
        "use_feature_distillation": "use L_fd",
        "use_image_distillation": "use L_id",
        "lambda_student_adv": "weight of the student's adversarial term",
        "student_noise": "noisy student: intensity augmentation on the student's unpaired inputs only",
        "student_noise_kind": "the noisy student's perturbation: intensity (gamma, bias field and noise, as the training "
        "augmentation), gaussian (its additive noise alone, the inputs' contrasts kept) or bias-field (its slow "
        "multiplicative field per channel and its noise, no gamma)",
        "student_noise_std": "the noisy student's largest additive-noise std on the inputs' [0, 1] scale (the "
        "training augmentation's: 0.02)",
        "student_pixel": "the student also learns L_pid from the paired subjects (not in the paper's figure)",
        "teacher_ema": "decay of an exponential moving average of the teacher that gives the pseudo-targets (0: off)",
        "tumour_weight": "L_pid's weight inside the paired subjects' tumour labels (seg > 0), relative to 1 elsewhere",
        "student_tumour_weight": "L_id's weight inside the unpaired subjects' tumour labels (seg > 0), relative to 1 "
        "elsewhere (needs their seg; a subject without one gets no extra weight)",
        "tumour_levels": "shift the teacher's pseudo-target inside each of the unpaired subjects' tumour labels "
        "(1, 2, 4) to the paired subjects' mean T1ce there (needs their seg; ours)",
        "tumour_levels_from": "where tumour_levels counts the paired subjects' levels: subjects (their whole volumes, "
        "before augmentation) or batches (a running mean over the augmented paired batches)",
        "tumour_levels_mode": "how tumour_levels moves each label to its level: shift (its mean, the teacher's "
        "pattern inside kept) or replace (every voxel at the level, the label map painted; ours)",
        "student_enhancing_weight": "L_id's extra factor inside the unpaired subjects' enhancing tumour (label 4), "
        "on top of student_tumour_weight (needs their seg; ours)",
        "student_core_weight": "L_id's extra factor inside the unpaired subjects' necrotic / non-enhancing core "
        "(label 1), on top of student_tumour_weight (needs their seg; ours)",
        "teacher_flips": "pseudo-targets averaged over the teacher's passes on flipped copies of the unpaired batch, "
        "each flipped back: none, lr (left-right) or all (left-right, anterior-posterior, both; four passes); ours",
        "student_warp": "consistency training: the student sees the unpaired batch through a random affine warp "
        "(rotation up to 20 degrees, zoom 0.85-1.15, shift, flip) the teacher does not, the pseudo-target, features "
        "and labels warped alike; ours",
        "pixel_loss": "the error L_pid averages: l1 (pix2pix, the paper) or l2 (squared error, whose minimiser is the "
        "conditional mean that MSE and PSNR score); ours",
        "teacher_mutual": "co-training: weight of the teacher's L1 to the student's (detached) prediction on the unpaired "
        "batch once the student has joined (0: off, the teacher stays the paired-only model); ours",
        "teacher_agreement": "confidence-weighted pseudo-targets: L_id's weight inside the brain follows the teacher's "
        "agreement across flipped copies of the unpaired batch, 1 / (1 + s / s_bar) rescaled to mean 1 per slice (s: "
        "the passes' spread, s_bar: its brain mean): none (off), lr or all; ours",
        "calibrated_targets": "the student distils its teacher's prediction through an intensity calibration refitted "
        "on the validation subjects after every validation check (inside the brain); ours",
    }


class PairedTeacher(Method):
    """A generator and a conditional PatchGAN trained on paired data with the difficulty-guided losses.

    With the DS3-Net options it is the paper's "DS3-Net (paired only)"; with ``use_difficulty=False`` and
    ``use_nce=False`` it is pix2pix (L1 + LSGAN).
    """

    uses_paired = True
    uses_unpaired = False

    def __init__(
        self,
        generator: nn.Module,
        discriminator: PatchDiscriminator,
        options: DS3NetOptions,
        *,
        total_steps: int,
        lr: float,
        betas: tuple[float, float],
        role: str = "teacher",
    ) -> None:
        super().__init__()
        self.options = options
        self.total_steps = total_steps
        self.role = role
        self.generator = generator
        self.discriminator = discriminator
        self.patch_nce = self._make_patch_nce(generator) if options.use_nce else None
        generator_params = list(generator.parameters())
        if self.patch_nce is not None:
            generator_params += list(self.patch_nce.parameters())
        self.add_optimizer(f"{role}_generator", generator_params, lr=lr, betas=betas)
        self.add_optimizer(f"{role}_discriminator", discriminator.parameters(), lr=lr, betas=betas)

    def _make_patch_nce(self, generator: nn.Module) -> PatchNCELoss:
        o = self.options
        return PatchNCELoss(
            generator.feature_channels,
            num_patches=o.nce_patches,
            temperature=o.nce_temperature,
            sampling=o.nce_sampling,
        )

    @property
    def beta(self) -> float:
        if not self.options.use_difficulty:
            return 0.0
        warmup = max(1, round(self.options.beta_warmup_fraction * self.total_steps))
        return difficulty_beta(self.step, beta_max=self.options.beta_max, warmup_steps=warmup)

    def generators(self) -> dict[str, nn.Module]:
        return {self.role: self.generator}

    def discriminators(self) -> dict[str, nn.Module]:
        return {self.role: self.discriminator}

    @torch.no_grad()
    def difficulty(self, inputs: Tensor, prediction: Tensor) -> Tensor:
        scores = self.discriminator(inputs, prediction)
        return difficulty_map(scores, prediction.shape[-2:], beta=max(self.beta, 1e-12), mode=self.options.gan_mode)

    def training_step(
        self,
        paired: Mapping[str, Tensor] | None,
        unpaired: Mapping[str, Tensor] | None,
        *,
        extra_terms: Callable[[], dict[str, Tensor]] | None = None,
    ) -> dict[str, float]:
        """``extra_terms`` (DS3-Net's co-training) adds loss terms of the generator to its update."""
        assert paired is not None
        inputs, target = paired["inputs"], paired["target"]
        logs, prediction = self.generator_step(
            inputs, target, tumour_mask=paired.get("tumour_mask"), extra_terms=extra_terms
        )
        logs.update(
            self.update_discriminator(
                f"{self.role}_discriminator",
                self.discriminator,
                (inputs, target),
                (inputs, prediction),
                mode=self.options.gan_mode,
                prefix=f"{self.role}/",
            )
        )
        return logs

    def generator_step(
        self,
        inputs: Tensor,
        target: Tensor,
        *,
        tumour_mask: Tensor | None = None,
        extra_terms: Callable[[], dict[str, Tensor]] | None = None,
    ) -> tuple[dict[str, float], Tensor]:
        o = self.options
        prediction, input_features = self.generator.forward_with_features(inputs)
        scores = self.discriminator(inputs, prediction)
        difficulty = difficulty_map(scores, target.shape[-2:], beta=self.beta, mode=o.gan_mode)
        terms = {
            f"{self.role}/adv": o.lambda_adv * adversarial_loss(scores, True, mode=o.gan_mode),
            f"{self.role}/pixel": o.lambda_pixel
            * difficulty_pixel(
                prediction, target, tumour_weighted(difficulty, tumour_mask, o.tumour_weight), loss=o.pixel_loss
            ),
        }
        if self.patch_nce is not None:
            terms[f"{self.role}/nce"] = o.lambda_nce * self.patch_nce(
                self.generator.encode(prediction), input_features, difficulty
            )
        if extra_terms is not None:
            terms.update(extra_terms())
        self.update(f"{self.role}_generator", terms)
        logs = {name: item(value) for name, value in terms.items()}
        logs[f"{self.role}/beta"] = self.beta
        return logs, prediction.detach()


class DS3Net(Method):
    """The semi-supervised method: a :class:`PairedTeacher` plus a student distilled on unpaired data.

    Two data settings (the trainer's ``unpaired_t1ce``): ``"none"``, the paper's, where no unpaired subject has a
    T1ce and D^S is conditional, judging ``(x_p, y_p)`` against ``(x_u, G^S(x_u))``; and ``"other-subjects"``, where
    the unpaired batch also carries ``reference_target``, real T1ce slices of OTHER unpaired subjects (never of those
    whose inputs the student sees), and D^S is unconditional (build it with ``in_channels=1``), judging those against
    ``G^S(x_u)``, as CUT and CycleGAN use unaligned target images.
    """

    uses_paired = True
    uses_unpaired = True
    uses_reference_t1ce = True

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        teacher_discriminator: PatchDiscriminator,
        student_discriminator: PatchDiscriminator,
        options: DS3NetOptions,
        *,
        total_steps: int,
        lr: float,
        betas: tuple[float, float],
    ) -> None:
        super().__init__()
        self.options = options
        self.total_steps = total_steps
        self.teacher = PairedTeacher(
            teacher, teacher_discriminator, options, total_steps=total_steps, lr=lr, betas=betas, role="teacher"
        )
        if options.student_from_teacher and _config(student) != _config(teacher):
            raise ValueError(
                "student_from_teacher needs the student and the teacher to share an architecture, got "
                f"{_config(student)} and {_config(teacher)}; pass student_from_teacher=False"
            )
        if not (
            options.use_feature_distillation
            or options.use_image_distillation
            or options.lambda_student_adv
            or (options.use_nce and options.student_nce)
            or options.student_pixel
        ):
            raise ValueError(
                "the student has no loss term: enable feature or image distillation, the student's PatchNCE, "
                "student_pixel or a non-zero lambda_student_adv"
            )
        self.student = student
        self.student_discriminator = student_discriminator
        # D^S judges T1ce alone when it was built for one channel: the "other-subjects" setting.
        self.unconditional_student_discriminator = getattr(student_discriminator, "in_channels", 4) == 1
        # The pseudo-targets' source: the teacher itself, or a moving average of its weights (a registered copy, so
        # it moves with .to() and resumes from the checkpoint; it never gets gradients).
        self.teacher_average: nn.Module | None = None
        if options.teacher_ema:
            self.teacher_average = copy.deepcopy(teacher).requires_grad_(False)
        self.distillation = DualLevelDistillation(self.teacher_average or teacher, student)
        if options.tumour_levels:
            # Running sums of the paired subjects' real T1ce and voxel counts per tumour label (buffers: they move
            # with .to() and resume from the checkpoint; float64, so a long run's counts stay exact).
            self.register_buffer("paired_label_sums", torch.zeros(len(TUMOUR_LABELS), dtype=torch.float64))
            self.register_buffer("paired_label_counts", torch.zeros(len(TUMOUR_LABELS), dtype=torch.float64))
        # Intensity only: the teacher's prediction stays aligned with the student's input voxel for voxel.
        self.student_noise = (
            MRIAugmentation(
                geometric=False, noise_std=options.student_noise_std, **STUDENT_NOISE_KINDS[options.student_noise_kind]
            )
            if options.student_noise
            else None
        )
        self.student_nce = self.teacher._make_patch_nce(student) if options.use_nce and options.student_nce else None
        student_params = list(student.parameters())
        if self.student_nce is not None:
            student_params += list(self.student_nce.parameters())
        self.optimizers.update(self.teacher.optimizers)
        self.add_optimizer("student_generator", student_params, lr=lr, betas=betas)
        self.add_optimizer("student_discriminator", student_discriminator.parameters(), lr=lr, betas=betas)

    @property
    def warmup_steps(self) -> int:
        return round(self.options.teacher_warmup_fraction * self.total_steps)

    @classmethod
    def labelled_streams(cls, options: Mapping[str, object]) -> tuple[str, ...]:
        if options.get("tumour_levels"):
            return ("paired", "unpaired")
        return ("unpaired",) if any(options.get(name, 1.0) != 1.0 for name in _LABEL_FACTORS) else ()

    @classmethod
    def without_labels_hint(cls, options: Mapping[str, object]) -> str:
        flags = ["--no-tumour-levels"] if options.get("tumour_levels") else []
        flags += [f"--{name.replace('_', '-')} 1" for name in _LABEL_FACTORS if options.get(name, 1.0) != 1.0]
        return f" ({' '.join(flags)} trains without them)" if flags else ""

    def generators(self) -> dict[str, nn.Module]:
        roles = {"student": self.student, "teacher": self.teacher.generator}
        if self.teacher_average is not None:
            roles["teacher_ema"] = self.teacher_average
        return roles

    def discriminators(self) -> dict[str, nn.Module]:
        return {**self.teacher.discriminators(), "student": self.student_discriminator}

    def calibrated_during_training(self) -> dict[str, tuple[nn.Module, str]]:
        if not self.options.calibrated_targets:
            return {}
        # The generator whose predictions are the pseudo-targets, fitted on the passes the student distils.
        return {"pseudo-targets": (self.distillation.teacher, self.options.teacher_flips)}

    def has_trained(self, role: str, step: int) -> bool:
        # The student's first step is the first after the teacher's warm-up; before it, a residual student is
        # copy-T1, which validation must not be allowed to pick as "the best student".
        return step > (self.warmup_steps if role == "student" else 0)

    def _student_scores(self, inputs: Tensor, prediction: Tensor) -> Tensor:
        if self.unconditional_student_discriminator:
            return self.student_discriminator(prediction)
        return self.student_discriminator(inputs, prediction)

    @torch.no_grad()
    def difficulty(self, inputs: Tensor, prediction: Tensor) -> Tensor:
        scores = self._student_scores(inputs, prediction)
        return difficulty_map(
            scores, prediction.shape[-2:], beta=max(self.teacher.beta, 1e-12), mode=self.options.gan_mode
        )

    def training_step(
        self, paired: Mapping[str, Tensor] | None, unpaired: Mapping[str, Tensor] | None
    ) -> dict[str, float]:
        assert paired is not None and unpaired is not None
        has_reference = "reference_target" in unpaired
        if has_reference != self.unconditional_student_discriminator:
            raise ValueError(
                "unpaired batches with reference_target (real T1ce of other subjects) need an unconditional D^S "
                "(in_channels=1), and an unconditional D^S needs them; got "
                f"reference_target={has_reference}, D^S in_channels={self.student_discriminator.in_channels}"
            )
        self.teacher.step = self.step
        if self.options.tumour_levels and self.options.tumour_levels_from == "batches":
            self._count_paired_levels(paired)
        mutual = None
        if self.options.teacher_mutual and self.step > self.warmup_steps:
            mutual = lambda: self._mutual_terms(unpaired["inputs"])  # noqa: E731  (evaluated inside the update)
        logs = self.teacher.training_step(paired, None, extra_terms=mutual)
        if self.teacher_average is not None:
            self._update_teacher_average()
        if self.step < self.warmup_steps:
            return logs
        if self.step == self.warmup_steps and self.options.student_from_teacher:
            # Joint training starts from what the teacher learned (its average, when there is one), not from
            # scratch (a function of the step, so a resumed run does the same).
            self.student.load_state_dict((self.teacher_average or self.teacher.generator).state_dict())
        # The student's draws (its PatchNCE locations, the noisy student's perturbation) come from a stream of its
        # own, so the teacher's global stream is the paired-only model's, draw for draw.
        with self.random_stream(STUDENT_STREAM):
            logs.update(self.student_step(paired, unpaired))
        return logs

    def _mutual_terms(self, inputs: Tensor) -> dict[str, Tensor]:
        """Co-training: the teacher's L1 to the student's prediction on the unpaired inputs (the student's as it was
        after its last step, detached; it draws no random numbers). With a batch-norm generator (``norm="batch"``) the
        pass also moves the student's running statistics on this batch, which its own step sees next anyway."""
        with torch.no_grad():
            student_prediction = self.student(inputs)
        teacher_prediction = self.teacher.generator(inputs)
        return {"teacher/mutual": self.options.teacher_mutual * (teacher_prediction - student_prediction).abs().mean()}

    @torch.no_grad()
    def _update_teacher_average(self) -> None:
        assert self.teacher_average is not None
        decay = self.options.teacher_ema
        averaged = list(self.teacher_average.parameters())
        current = [param.detach() for param in self.teacher.generator.parameters()]
        if self.step == 0:
            torch._foreach_copy_(averaged, current)
        else:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        theirs = dict(self.teacher.generator.named_buffers())
        for name, mine in self.teacher_average.named_buffers():
            # Normalisation statistics follow the teacher; the average's own intensity calibration (fitted on it
            # under calibrated_targets) is not the teacher's to overwrite.
            if not name.startswith("calibration."):
                mine.copy_(theirs[name])

    @torch.no_grad()
    def observe_paired_subjects(self, sessions: Iterable[Session]) -> None:
        """With ``tumour_levels_from="subjects"``: the levels become the paired subjects' mean real T1ce per tumour
        label over their whole volumes, as stored (normalised, before any augmentation). Counted one volume at a
        time, so memory stays that of one subject; a session without seg or T1ce adds nothing."""
        if not (self.options.tumour_levels and self.options.tumour_levels_from == "subjects"):
            return
        sums = torch.zeros(len(TUMOUR_LABELS), dtype=torch.float64)
        counts = torch.zeros(len(TUMOUR_LABELS), dtype=torch.float64)
        for session in sessions:
            if session.seg is None or session.target is None:
                continue
            target = np.asarray(session.target)
            seg = np.asarray(session.seg)
            for k, label in enumerate(TUMOUR_LABELS):
                inside = seg == label
                sums[k] += float(target[inside].sum(dtype=np.float64))
                counts[k] += float(inside.sum())
        self.paired_label_sums.copy_(sums)
        self.paired_label_counts.copy_(counts)

    @torch.no_grad()
    def _count_paired_levels(self, paired: Mapping[str, Tensor]) -> None:
        if "seg" not in paired:
            raise ValueError("tumour_levels needs the paired batches' tumour labels (the items' 'seg')")
        sums, counts = label_sums(paired["target"], paired["seg"])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Every rank keeps the same levels: the sums over all ranks' paired batches.
            both = torch.cat([sums, counts])
            dist.all_reduce(both)
            sums, counts = both.split(len(TUMOUR_LABELS))
        self.paired_label_sums += sums
        self.paired_label_counts += counts

    @property
    def paired_levels(self) -> Tensor | None:
        """The paired subjects' mean real T1ce per tumour label (``TUMOUR_LABELS``) so far, NaN where a label was never
        seen; None without ``tumour_levels``."""
        if not self.options.tumour_levels:
            return None
        counts = self.paired_label_counts
        return torch.where(counts > 0, self.paired_label_sums / counts.clamp(min=1), torch.nan)

    def student_step(self, paired: Mapping[str, Tensor], unpaired: Mapping[str, Tensor]) -> dict[str, float]:
        o = self.options
        inputs = unpaired["inputs"]
        # With student_warp the student's view is a warp of the batch; everything it is compared with (the
        # pseudo-target, the teacher's features, the labels weighting L_id, D^S's condition) is warped alike.
        theta = (
            random_affine(inputs.shape[0], inputs.shape[-2:], STUDENT_WARPS, device=inputs.device)
            if o.student_warp
            else None
        )
        view = unpaired if theta is None else _warped_batch(unpaired, theta)
        student_inputs = view["inputs"]
        if self.student_noise is not None:
            noisy = {"inputs": student_inputs}
            if "brain_mask" in view:
                noisy["brain_mask"] = view["brain_mask"]
            student_inputs = self.student_noise(noisy)["inputs"]

        # Phase 1: teacher and student on the unpaired batch.
        forward = self.distillation.run(inputs, student_inputs=student_inputs)
        prediction = forward.student_prediction
        # D^S on the student's synthesis, conditioned on the clean inputs (noise the student cannot undo must not
        # tell fakes apart): its map M^S weights L_id and L_pad, its score is the student's adversarial term.
        scores = self._student_scores(view["inputs"], prediction)
        student_map = difficulty_map(scores, prediction.shape[-2:], beta=self.teacher.beta, mode=o.gan_mode)
        # Phase 2: the distillation losses under M^S (L_id's weights also count the unpaired tumour, when asked).
        image_map = tumour_weighted(student_map, view.get("tumour_mask"), o.student_tumour_weight)
        for name, label in _LABEL_FACTORS.items():
            factor = getattr(o, name)
            if factor == 1.0:
                continue
            if "seg" not in unpaired:
                raise ValueError(f"{name} needs the unpaired batches' tumour labels (the items' 'seg')")
            image_map = tumour_weighted(image_map, (view["seg"] == label).to(image_map.dtype), factor)
        # The pseudo-target and its confidence, in the teacher's (unwarped) frame.
        passes: dict[str, Tensor] = {}

        def teacher_passes(flips: str) -> Tensor:
            # A flip set whose passes begin another's (lr's are all's first two) reuses them.
            for made, stacked in passes.items():
                if FLIPS[made][: len(FLIPS[flips])] == FLIPS[flips]:
                    return stacked[: len(FLIPS[flips])]
            with torch.no_grad():
                passes[flips] = flip_passes(
                    self.distillation.teacher, inputs, flips, unflipped=forward.teacher_prediction
                )
            return passes[flips]

        if len(FLIPS[o.teacher_agreement]) > len(FLIPS[o.teacher_flips]):
            teacher_passes(o.teacher_agreement)  # the wider set first, so the other can reuse its passes

        pseudo_target = None
        if o.teacher_flips != "none":
            pseudo_target = teacher_passes(o.teacher_flips).mean(0).to(forward.teacher_prediction.dtype)
        confidence = None
        if o.teacher_agreement != "none":
            confidence, spread = agreement_weights(teacher_passes(o.teacher_agreement), unpaired.get("brain_mask"))
        if o.calibrated_targets:
            if "brain_mask" not in unpaired:
                raise ValueError("calibrated_targets needs the unpaired batches' brain masks (the items' 'brain_mask')")
            teacher_prediction = forward.teacher_prediction if pseudo_target is None else pseudo_target
            pseudo_target = calibrated_target(
                teacher_prediction, unpaired["brain_mask"], self.distillation.teacher.calibration
            )
        if o.tumour_levels:
            if "seg" not in unpaired:
                raise ValueError("tumour_levels needs the unpaired batches' tumour labels (the items' 'seg')")
            levels = self.paired_levels
            assert levels is not None
            teacher_prediction = forward.teacher_prediction if pseudo_target is None else pseudo_target
            pseudo_target = tumour_level_targets(teacher_prediction, unpaired["seg"], levels, mode=o.tumour_levels_mode)
        if theta is not None:
            # Into the student's frame: the pseudo-target, its confidence and the distilled features, by the warp.
            pseudo_target = warp(forward.teacher_prediction if pseudo_target is None else pseudo_target, theta)
            if confidence is not None:
                confidence = warp(confidence, theta)
            forward = dataclasses.replace(
                forward, teacher_features=[warp(feature, theta) for feature in forward.teacher_features]
            )
        if confidence is not None:
            image_map = image_map * confidence.to(image_map.dtype)
        out = self.distillation.losses(forward, image_map, target=pseudo_target)

        terms: dict[str, Tensor] = {}
        if o.lambda_student_adv:
            terms["student/adv"] = o.lambda_student_adv * adversarial_loss(scores, True, mode=o.gan_mode)
        if o.use_feature_distillation:
            terms["student/feature"] = o.lambda_feature * out.feature_loss
        if o.use_image_distillation:
            terms["student/image"] = o.lambda_image * out.image_loss
        if self.student_nce is not None:
            terms["student/nce"] = o.lambda_nce * self.student_nce(
                self.student.encode(prediction), forward.student_features, student_map
            )
        if o.student_pixel:
            # Not in the figure: the student also learns from the paired subjects' real T1ce (L_pid, its own M^S).
            paired_prediction = self.student(paired["inputs"])
            paired_map = self.difficulty(paired["inputs"], paired_prediction)
            paired_map = tumour_weighted(paired_map, paired.get("tumour_mask"), o.tumour_weight)
            terms["student/pixel"] = o.lambda_pixel * difficulty_pixel(
                paired_prediction, paired["target"], paired_map, loss=o.pixel_loss
            )
        self.update("student_generator", terms)
        logs = {name: item(value) for name, value in terms.items()}
        if confidence is not None:
            logs["student/teacher_spread"] = item(spread)

        if self.unconditional_student_discriminator:
            real, fake = (unpaired["reference_target"],), (prediction,)
        else:
            real, fake = (paired["inputs"], paired["target"]), (view["inputs"], prediction)
        logs.update(
            self.update_discriminator(
                "student_discriminator", self.student_discriminator, real, fake, mode=o.gan_mode, prefix="student/"
            )
        )
        return logs


#: The options the 5 % recipes (``recipes/paired_only.py``, ``recipes/ds3net.py``) train with, one dict so the
#: paired-only model and DS3-Net's teacher compare like for like: L1-dominant (no adversarial term, no PatchNCE) and
#: the paired subjects' tumour counted five times in L_pid; ours, measured on CPU budgets (docs/method.md).
#: ``recipes/pix2pix.py`` takes its tumour weight from here too. :class:`DS3NetOptions` itself keeps the paper's values.
RECIPE_OPTIONS: dict[str, object] = {"lambda_adv": 0.0, "use_nce": False, "tumour_weight": 5.0}


#: The noisy student's perturbations (``DS3NetOptions.student_noise_kind``): :class:`MRIAugmentation` settings on top of
#: its intensity defaults (gamma 0.8-1.25, bias field up to 0.3; a sample is perturbed with probability 0.8). The
#: noise's largest std is ``DS3NetOptions.student_noise_std``, which a kind does not set.
STUDENT_NOISE_KINDS: dict[str, dict[str, object]] = {
    "intensity": {},
    "gaussian": {"gamma": (1.0, 1.0), "bias_field": 0.0},
    "bias-field": {"gamma": (1.0, 1.0)},
}
#: Where ``tumour_levels`` counts the paired subjects' levels (``DS3NetOptions.tumour_levels_from``).
TUMOUR_LEVEL_SOURCES: tuple[str, ...] = ("subjects", "batches")
#: The options that multiply L_id's weight inside one unpaired tumour label, and that label.
_LABEL_FACTORS = {"student_enhancing_weight": ENHANCING_LABEL, "student_core_weight": CORE_LABEL}

#: The student's warps under ``student_warp``: stronger than the data streams' augmentation (10 degrees, zoom
#: 0.9-1.1, shift 0.05), which both networks already see, so the student's view differs from its teacher's.
STUDENT_WARPS = WarpRange(degrees=20.0, scale=(0.85, 1.15), translate=0.08, flip=True)
#: Keys of an unpaired batch that move with the student's view: the inputs bilinearly, the label maps by nearest.
_WARPED_IMAGES = ("inputs",)
_WARPED_LABELS = ("brain_mask", "tumour_mask", "seg")


def _warped_batch(batch: Mapping[str, Tensor], theta: Tensor) -> dict[str, Tensor]:
    """``batch`` with its inputs and label maps warped by ``theta``; other keys as they are."""
    view = dict(batch)
    for key in _WARPED_IMAGES:
        view[key] = warp(batch[key], theta)
    for key in _WARPED_LABELS:
        if key in batch:
            view[key] = warp(batch[key], theta, mode="nearest")
    return view


def _config(generator: nn.Module) -> object:
    return generator.config() if hasattr(generator, "config") else type(generator).__name__
