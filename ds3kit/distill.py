r"""Dual-level knowledge distillation: a teacher generator teaches a student on unpaired inputs.

.. math::
    L_{fd} = \frac{1}{|K|} \sum_{k \in K} \overline{\big(A_k(f_k^S(x_u)) - sg(f_k^T(x_u))\big)^2}
    \qquad
    L_{id} = \overline{M^S \odot |G^S(x_u) - sg(G^T(x_u))|}

``sg`` is stop-gradient (the teacher runs under ``torch.no_grad``), ``A_k`` an optional learned 1x1 adapter
(identity by default), ``M^S`` the student's difficulty map. Works with any generator that exposes
``forward_with_features(x) -> (prediction, list of feature maps)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ds3kit.losses.difficulty import PIXEL_LOSSES, difficulty_pixel
from ds3kit.utils.checks import check_ndim

IMAGE_LOSSES = PIXEL_LOSSES

#: A difficulty map, or a function computing it from the student's prediction (e.g. through D^S), or None.
DifficultySource = Tensor | Callable[[Tensor], Tensor] | None


@dataclass
class DistillationOutput:
    """What :class:`DualLevelDistillation` returns. The two losses are UNWEIGHTED; ``total`` applies the weights.

    Attributes:
        feature_loss: L_fd, scalar (0 when no feature layer is distilled).
        image_loss: L_id, scalar.
        total: ``feature_weight * feature_loss + image_weight * image_loss``.
        teacher_prediction: G^T(x_u), detached, (B, C, H, W).
        student_prediction: G^S(x_u), with grad.
        student_features: all of G^S's features (with grad; before adapters), e.g. for the student's PatchNCE.
        teacher_features: the distilled teacher features (detached), one per distilled layer.
        difficulty: the map used by ``image_loss`` (detached), or None.
    """

    feature_loss: Tensor
    image_loss: Tensor
    total: Tensor
    teacher_prediction: Tensor
    student_prediction: Tensor
    student_features: list[Tensor]
    teacher_features: list[Tensor]
    difficulty: Tensor | None


@dataclass
class DistillationPass:
    """Phase 1 of :class:`DualLevelDistillation`: both networks' outputs on one unpaired batch.

    Attributes:
        teacher_prediction: G^T(x_u), detached.
        teacher_features: all of G^T's feature maps, detached.
        student_prediction: G^S(x_u) (or of the student's own inputs), with grad.
        student_features: all of G^S's feature maps, with grad.
    """

    teacher_prediction: Tensor
    teacher_features: list[Tensor]
    student_prediction: Tensor
    student_features: list[Tensor]


class DualLevelDistillation(nn.Module):
    r"""Feature-level (L_fd) and image-level (L_id) distillation from a teacher generator into a student.

    The teacher is held by reference and never registered as a submodule: ``parameters()`` of this module are
    the student's (and the adapters'), the ones an optimiser should see; moving / saving the teacher is its owner's
    business. It runs under ``torch.no_grad``, so no gradient reaches it from these losses, whatever its
    ``requires_grad`` flags (the teacher may keep training on paired data elsewhere). Its train / eval mode is left
    as its owner set it.

    Args:
        teacher: generator with ``forward_with_features``.
        student: generator with ``forward_with_features``.
        feature_layers: indices into the feature lists to distil (negative allowed); None: all of them.
            ``[]`` switches feature distillation off (``feature_loss`` is then 0).
        feature_weight: weight of L_fd in ``total``.
        image_weight: weight of L_id in ``total``.
        image_loss: ``"l1"`` (default, as L_pid) or ``"l2"`` (squared error), both weighted by the map.
        adapters: learn a 1x1 convolution per distilled layer mapping student channels to teacher channels
            (identity where they match). Needs ``feature_channels`` on both generators. Without adapters a
            channel mismatch raises ``ValueError``.

    Example:
        >>> from ds3kit.models import build_generator
        >>> teacher, student = build_generator("tiny"), build_generator("tiny")
        >>> out = DualLevelDistillation(teacher, student)(torch.rand(2, 3, 24, 24))
        >>> out.total.backward()
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        *,
        feature_layers: Sequence[int] | None = None,
        feature_weight: float = 1.0,
        image_weight: float = 1.0,
        image_loss: str = "l1",
        adapters: bool = False,
    ) -> None:
        super().__init__()
        for role, model in (("teacher", teacher), ("student", student)):
            if not callable(getattr(model, "forward_with_features", None)):
                raise ValueError(
                    f"{role} must expose forward_with_features(x) -> (prediction, features), got {type(model).__name__}"
                )
        if image_loss not in IMAGE_LOSSES:
            raise ValueError(f"image_loss must be one of {IMAGE_LOSSES}, got {image_loss!r}")
        # Bypass nn.Module registration on purpose (see the class docstring).
        object.__setattr__(self, "_teacher", teacher)
        self.student = student
        self.feature_layers = None if feature_layers is None else [int(k) for k in feature_layers]
        self.feature_weight = float(feature_weight)
        self.image_weight = float(image_weight)
        self.image_loss = image_loss
        self.adapters: nn.ModuleList | None = None
        if adapters:
            self.adapters = self._build_adapters(teacher, student)

    @property
    def teacher(self) -> nn.Module:
        return self._teacher  # type: ignore[attr-defined]

    def run(self, unpaired_inputs: Tensor, *, student_inputs: Tensor | None = None) -> DistillationPass:
        """Phase 1: the teacher (under ``no_grad``) and the student on ``unpaired_inputs`` (B, C, H, W).

        ``student_inputs``: what the student sees instead (same shape), e.g. a perturbed copy for a noisy student;
        the teacher always sees ``unpaired_inputs``. A caller can then compute the student's difficulty map (and,
        on the same forward pass, its adversarial term) from ``pass_.student_prediction`` before :meth:`losses`.
        """
        check_ndim(unpaired_inputs, 4, "unpaired_inputs", "(B, C, H, W)")
        if student_inputs is None:
            student_inputs = unpaired_inputs
        elif student_inputs.shape != unpaired_inputs.shape:
            raise ValueError(
                f"student_inputs must have the shape of unpaired_inputs {tuple(unpaired_inputs.shape)}, "
                f"got {tuple(student_inputs.shape)}"
            )
        with torch.no_grad():
            teacher_prediction, teacher_features = self.teacher.forward_with_features(unpaired_inputs)
        student_prediction, student_features = self.student.forward_with_features(student_inputs)
        if teacher_prediction.shape != student_prediction.shape:
            raise ValueError(
                f"teacher and student predictions differ in shape: {tuple(teacher_prediction.shape)} and "
                f"{tuple(student_prediction.shape)}"
            )
        return DistillationPass(
            teacher_prediction=teacher_prediction.detach(),
            teacher_features=[feature.detach() for feature in teacher_features],
            student_prediction=student_prediction,
            student_features=list(student_features),
        )

    def losses(
        self,
        pass_: DistillationPass,
        difficulty: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        target: Tensor | None = None,
    ) -> DistillationOutput:
        """Phase 2: L_fd and L_id of a :meth:`run`.

        Args:
            pass_: what :meth:`run` returned.
            difficulty: ``M^S`` (B, 1, H, W) weighting the image loss, or None (ones); detached before use.
            mask: optional weights (e.g. brain mask) restricting the image loss's mean; features are not masked.
            target: the image-level target instead of the teacher's prediction (same shape), e.g. a pseudo-target
                averaged over several teacher passes; None: ``pass_.teacher_prediction``.
        """
        student_prediction, student_features = pass_.student_prediction, pass_.student_features
        layers = self._layers(len(pass_.teacher_features), len(student_features))
        distilled_teacher = [pass_.teacher_features[k] for k in layers]
        per_layer = []
        for position, k in enumerate(layers):
            student_feature = student_features[k]
            if self.adapters is not None:
                student_feature = self.adapters[position](student_feature)
            reference = distilled_teacher[position]
            if student_feature.shape != reference.shape:
                hint = "" if self.adapters is not None else " (adapters=True maps student channels to teacher channels)"
                raise ValueError(
                    f"feature layer {k}: student shape {tuple(student_feature.shape)} does not match teacher shape "
                    f"{tuple(reference.shape)}{hint}"
                )
            per_layer.append(F.mse_loss(student_feature, reference.to(student_feature.dtype)))
        feature_loss = torch.stack(per_layer).mean() if per_layer else student_prediction.new_zeros(())

        if target is None:
            target = pass_.teacher_prediction
        elif target.shape != student_prediction.shape:
            raise ValueError(
                f"target must have the student prediction's shape {tuple(student_prediction.shape)}, "
                f"got {tuple(target.shape)}"
            )
        weight_map = None if difficulty is None else difficulty.detach()
        target = target.detach().to(student_prediction.dtype)
        image_loss = difficulty_pixel(student_prediction, target, weight_map, loss=self.image_loss, mask=mask)

        return DistillationOutput(
            feature_loss=feature_loss,
            image_loss=image_loss,
            total=self.feature_weight * feature_loss + self.image_weight * image_loss,
            teacher_prediction=pass_.teacher_prediction,
            student_prediction=student_prediction,
            student_features=student_features,
            teacher_features=distilled_teacher,
            difficulty=weight_map,
        )

    def forward(
        self,
        unpaired_inputs: Tensor,
        difficulty: DifficultySource = None,
        *,
        mask: Tensor | None = None,
        student_inputs: Tensor | None = None,
    ) -> DistillationOutput:
        """Both phases at once: :meth:`run`, then :meth:`losses`.

        ``difficulty`` may also be a function of the student's prediction returning the map (called once, with the
        prediction that carries grad). A caller that needs the map's discriminator scores for its own terms is
        clearer with the two phases written out.
        """
        pass_ = self.run(unpaired_inputs, student_inputs=student_inputs)
        weight_map = difficulty(pass_.student_prediction) if callable(difficulty) else difficulty
        return self.losses(pass_, weight_map, mask=mask)

    def _layers(self, teacher_count: int, student_count: int) -> list[int]:
        if self.feature_layers is None:
            if teacher_count != student_count:
                raise ValueError(
                    f"teacher returns {teacher_count} feature maps and student {student_count}: pass feature_layers "
                    "to choose which to pair"
                )
            return list(range(teacher_count))
        count = min(teacher_count, student_count)
        for k in self.feature_layers:
            if not -count <= k < count:
                raise ValueError(f"feature layer {k} is out of range for {count} feature maps")
        return [k % count for k in self.feature_layers]

    def _build_adapters(self, teacher: nn.Module, student: nn.Module) -> nn.ModuleList:
        teacher_channels = getattr(teacher, "feature_channels", None)
        student_channels = getattr(student, "feature_channels", None)
        if teacher_channels is None or student_channels is None:
            raise ValueError("adapters=True needs `feature_channels` (a list of ints) on both teacher and student")
        layers = self._layers(len(teacher_channels), len(student_channels))
        return nn.ModuleList(
            nn.Identity()
            if student_channels[k] == teacher_channels[k]
            else nn.Conv2d(student_channels[k], teacher_channels[k], kernel_size=1)
            for k in layers
        )
