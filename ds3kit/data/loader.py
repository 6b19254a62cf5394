"""A DataLoader whose batch for optimiser step ``s`` is a pure function of ``s``: step-indexed batch sampling.

The training engine draws the batch of step ``s`` from a rule ``indices(s) -> dataset indices`` (a seeded
permutation per epoch, split between torchrun ranks). :func:`step_loader` keeps that rule and moves the slice reads
into DataLoader worker processes: :class:`StepBatchSampler` yields ``indices(start), indices(start + 1), ...`` in the
main process, the workers read the items, and the DataLoader hands the batches back in step order, pinned for the
GPU when asked. Which items make up a batch never depends on the workers, their number or their timing, so a run
resumed at step ``s`` sees the batches a straight run sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

StepIndices = Callable[[int], Sequence[int]]


class StepBatchSampler(Sampler[list[int]]):
    """Yields ``list(indices(step))`` for ``step`` in ``[start, stop)``, in order.

    Args:
        indices: the batch rule, called in the process that iterates the sampler (the DataLoader's main process).
        start, stop: the steps to cover, ``0 <= start <= stop``.
    """

    def __init__(self, indices: StepIndices, *, start: int, stop: int) -> None:
        if not 0 <= int(start) <= int(stop):
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        self.indices = indices
        self.start = int(start)
        self.stop = int(stop)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield [int(index) for index in self.indices(step)]

    def __len__(self) -> int:
        return self.stop - self.start


def stack_tensors(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Collate dataset items into a batch: every tensor-valued key stacked on a new first dimension; ints
    (``case_index``, ``slice_index``) dropped, as in the training engine's in-process batches."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    return {
        key: torch.stack([item[key] for item in items])
        for key, value in items[0].items()
        if isinstance(value, torch.Tensor)
    }


def step_loader(
    dataset: Dataset,
    indices: StepIndices,
    *,
    start: int,
    stop: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    multiprocessing_context: str | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` yielding the batches of steps ``start .. stop - 1`` in order.

    Batch ``k`` is ``stack_tensors([dataset[i] for i in indices(start + k)])`` whatever ``num_workers`` is. The
    loader never draws from the global torch RNG (a DataLoader iterator draws its workers' base seed from its own
    generator here), so creating one at a resumed step leaves the training RNG stream as a straight run has it.

    Args:
        dataset: a map-style dataset (e.g. :class:`ds3kit.data.CachedSliceDataset`, whose memory maps the workers
            share through the page cache).
        indices: the step -> dataset indices rule.
        start, stop: steps to cover (``stop`` excluded).
        num_workers: reader processes (0: read in this process).
        pin_memory: page-locked batches, for asynchronous copies to CUDA.
        prefetch_factor: batches each worker reads ahead (DataLoader's default 2 when None and workers > 0).
        multiprocessing_context: "fork", "spawn" or "forkserver" (None: the platform default).
    """
    if int(num_workers) < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    options: dict[str, Any] = {}
    if num_workers > 0:
        options["prefetch_factor"] = prefetch_factor if prefetch_factor is not None else 2
        if multiprocessing_context is not None:
            options["multiprocessing_context"] = multiprocessing_context
    return DataLoader(
        dataset,
        batch_sampler=StepBatchSampler(indices, start=start, stop=stop),
        num_workers=int(num_workers),
        collate_fn=stack_tensors,
        pin_memory=bool(pin_memory),
        generator=torch.Generator().manual_seed(0),  # the workers' base seed; items draw no random numbers
        **options,
    )
