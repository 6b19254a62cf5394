"""What every training method shares: its optimisers, a guarded update, and the hooks the trainer calls."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ds3kit.losses.adversarial import adversarial_loss
from ds3kit.utils.streams import random_stream, stream_seed

if TYPE_CHECKING:
    from ds3kit.data.session import Session


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or Inf; raised before it can touch the weights."""


class Method(nn.Module):
    """A training method: networks, optimisers, and one optimisation step over a paired and an unpaired batch.

    Subclasses set ``uses_paired`` / ``uses_unpaired`` (which data streams the trainer feeds), build their
    networks in ``__init__``, and implement :meth:`training_step`, :meth:`generators` and, when they have any,
    :meth:`discriminators`.
    """

    uses_paired: bool = True
    uses_unpaired: bool = False
    #: True for unpaired translation (CUT): the "paired" stream only lends real T1ce slices of OTHER subjects.
    target_domain_only: bool = False
    #: True when the method can use real T1ce of OTHER unpaired subjects (``unpaired["reference_target"]``); the
    #: trainer then feeds them under ``RunConfig.unpaired_t1ce == "other-subjects"``.
    uses_reference_t1ce: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.step = 0
        #: Seeds :meth:`random_stream` (the trainer sets it from the run's seed and rank).
        self.stream_seed = 0

    @classmethod
    def labelled_streams(cls, options: Mapping[str, object]) -> tuple[str, ...]:
        """The data streams (``"paired"``, ``"unpaired"``) whose subjects must have tumour labels under ``options``:
        the trainer refuses a cohort where none of a stream's subjects has one, before any step."""
        return ()

    @classmethod
    def without_labels_hint(cls, options: Mapping[str, object]) -> str:
        """Appended to the trainer's error when a stream of :meth:`labelled_streams` has no labels: the flags that
        train under ``options`` without them (empty when there is no such way)."""
        return ""

    def observe_paired_subjects(self, sessions: Iterable[Session]) -> None:
        """Called once before training (and again on resume) with the paired training subjects, normalised as the
        batches are and before any augmentation, one volume at a time: a method that needs a statistic of the
        whole subjects (DS3-Net's tumour levels) takes it here. The default takes nothing."""

    def random_stream(self, name: int) -> AbstractContextManager[None]:
        """A block whose random draws come from a stream of their own, a pure function of (``stream_seed``, ``name``,
        step), and leave the global stream untouched: DS3-Net runs its student in one, so the teacher draws exactly
        what the paired-only model draws."""
        device = next((param.device for param in self.parameters()), torch.device("cpu"))
        return random_stream(stream_seed(self.stream_seed, name, self.step), device)

    def add_optimizer(
        self, name: str, parameters: Iterable[nn.Parameter], *, lr: float, betas: tuple[float, float]
    ) -> None:
        self.optimizers[name] = torch.optim.Adam(list(parameters), lr=lr, betas=betas)

    def training_step(
        self, paired: Mapping[str, Tensor] | None, unpaired: Mapping[str, Tensor] | None
    ) -> dict[str, float]:
        """One optimisation step of every network; returns the loss terms for logging."""
        raise NotImplementedError

    def generators(self) -> dict[str, nn.Module]:
        """The generators to evaluate and ship, by role (e.g. ``{"student": ..., "teacher": ...}``)."""
        raise NotImplementedError

    def discriminators(self) -> dict[str, nn.Module]:
        """The discriminators, by the role of the generator each judges (``{}`` for a method without any)."""
        return {}

    def shipped_generator(self) -> str:
        """The role of the model a user takes away (DS3-Net: the student)."""
        return next(iter(self.generators()))

    def has_trained(self, role: str, step: int) -> bool:
        """Whether generator ``role`` has taken an optimisation step by ``step`` steps: only then may validation
        select its weights (a student idle during its teacher's warm-up is still its initialisation)."""
        return step > 0

    def calibrated_during_training(self) -> dict[str, tuple[nn.Module, str]]:
        """Generators whose intensity calibration the trainer refits on the validation subjects after every validation
        check, by name, each with the test-time flips (``"none"``, ``"lr"``, ``"all"``) its calibrated passes use:
        a method that trains on a calibrated prediction (DS3-Net's ``calibrated_targets``) lists its source here. The
        default lists none."""
        return {}

    @torch.no_grad()
    def difficulty(self, inputs: Tensor, prediction: Tensor) -> Tensor | None:
        """The difficulty map the shipped model's discriminator draws for a prediction (for figures), if any."""
        return None

    def update(self, optimizer: str, terms: Mapping[str, Tensor]) -> None:
        """Zero, backpropagate the sum of ``terms``, average gradients across processes, step.

        Every term is checked first, so a non-finite loss stops training with its name and the step
        before it corrupts any weight.
        """
        if not terms:
            raise ValueError(f"update of {optimizer!r} at step {self.step} got no loss term")
        for name, value in terms.items():
            if not bool(torch.isfinite(value.detach()).all()):
                raise NonFiniteLossError(f"non-finite loss at step {self.step}: {name} = {value.detach().item()}")
        opt = self.optimizers[optimizer]
        opt.zero_grad(set_to_none=True)
        total = sum(terms.values())
        total.backward()
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        _average_gradients(params)
        opt.step()

    def update_discriminator(
        self,
        optimizer: str,
        discriminator: nn.Module,
        real: Sequence[Tensor],
        fake: Sequence[Tensor],
        *,
        mode: str,
        prefix: str = "",
    ) -> dict[str, float]:
        """One discriminator step: ``0.5 * (l_adv(D(*real), real) + l_adv(D(*fake), fake))``, fakes detached.

        ``real`` / ``fake`` are D's positional arguments: ``(inputs, t1ce)`` for a conditional PatchGAN, ``(t1ce,)``
        for an unconditional one. Returns the two terms (``{prefix}d_real``, ``{prefix}d_fake``) for logging.
        """
        terms = {
            f"{prefix}d_real": 0.5 * adversarial_loss(discriminator(*real), True, mode=mode),
            f"{prefix}d_fake": 0.5 * adversarial_loss(discriminator(*(t.detach() for t in fake)), False, mode=mode),
        }
        self.update(optimizer, terms)
        return {name: item(value) for name, value in terms.items()}


def _average_gradients(params: list[nn.Parameter]) -> None:
    # Methods take several optimiser steps per iteration over networks used in several passes, which
    # DistributedDataParallel's one-forward-one-backward contract does not fit; one coalesced
    # all-reduce per update gives the same synchronous data parallelism.
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not params:
        return
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        count = grad.numel()
        grad.copy_(flat[offset : offset + count].view_as(grad))
        offset += count


def item(value: Tensor | float) -> float:
    """A loss term as a float for logging."""
    return float(value.detach()) if isinstance(value, Tensor) else float(value)
