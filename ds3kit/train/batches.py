"""Step-indexed batches and the one way a batch reaches the device.

:class:`StepBatches` makes the batch of optimiser step ``s`` a pure function of ``(seed, s)``, so a resumed run sees
the batches a straight run sees and torchrun ranks split one global batch. :func:`prepare_batch` moves a batch to
the device, augments it and sets its memory layout: the trainer's loop and the benchmarks' training step both call
it, so what they time is what trains.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ds3kit.augment import MRIAugmentation
from ds3kit.data import CachedSliceDataset
from ds3kit.errors import InputError
from ds3kit.train.distributed import DistributedContext
from ds3kit.utils.streams import random_stream


class StepBatches:
    """Batches of a slice dataset indexed by the optimiser step: epoch-wise permutations seeded by (seed, epoch).

    Position ``p = step * global_batch + i`` is entry ``p mod n`` of the permutation of epoch ``p // n``; rank r takes
    ``i`` in ``[r * batch, (r + 1) * batch)``. No iterator state: resuming at step s needs only s.

    ``tumour_repeats`` > 0 lists every slice holding tumour ``1 + tumour_repeats`` times in each epoch (the
    permutation runs over the longer list), so the few tumour slices of a few paired subjects, where the enhancing
    rim is, come round more often. It is still a pure function of (seed, step).
    """

    def __init__(
        self,
        dataset: CachedSliceDataset,
        *,
        batch_size: int,
        seed: int,
        stream: int,
        context: DistributedContext,
        tumour_repeats: int = 0,
    ) -> None:
        if len(dataset) == 0:
            raise InputError("a training stream has no slices with brain tissue")
        if tumour_repeats < 0:
            raise ValueError(f"tumour_repeats must be >= 0, got {tumour_repeats}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.stream = stream
        self.context = context
        self.entries = torch.arange(len(dataset))
        if tumour_repeats:
            tumour = [index for index in range(len(dataset)) if bool(dataset[index]["tumour_mask"].any())]
            extra = torch.tensor(tumour, dtype=torch.long).repeat(tumour_repeats)
            self.entries = torch.cat([self.entries, extra])
        self._permutations: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.stream * 10_007 + epoch)
            self._permutations = {epoch: self.entries[torch.randperm(len(self.entries), generator=generator)]}
        return self._permutations[epoch]

    def indices(self, step: int) -> list[int]:
        """The dataset indices of this rank's batch for ``step``."""
        n = len(self.entries)
        first = step * self.batch_size * self.context.world_size + self.context.rank * self.batch_size
        return [int(self._permutation(p // n)[p % n]) for p in range(first, first + self.batch_size)]

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        items = [self.dataset[index] for index in self.indices(step)]
        return {
            key: torch.stack([item[key] for item in items])
            for key in items[0]
            if isinstance(items[0][key], torch.Tensor)
        }


def prepare_batch(
    batch: Mapping[str, torch.Tensor],
    device: torch.device,
    *,
    augment: MRIAugmentation | None = None,
    channels_last: bool = False,
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """A host batch as a method's ``training_step`` takes it: on ``device``, augmented, in the networks' layout.

    Every tensor is copied to ``device`` (non-blocking: a pinned batch overlaps the copy with compute), then
    ``augment`` (if given) transforms the batch on the device, drawing from a stream of its own seeded by ``seed``
    (:func:`ds3kit.utils.streams.random_stream`; None: the global stream), then with ``channels_last`` every 4-D
    tensor is made channels_last contiguous (the trainer asks for it on CUDA, where the networks are channels_last
    too).
    """
    prepared = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    if augment is not None:
        if seed is None:
            prepared = augment(prepared)
        else:
            with random_stream(seed, device):
                prepared = augment(prepared)
    if channels_last:
        prepared = {
            k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in prepared.items()
        }
    return prepared
