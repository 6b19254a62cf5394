"""``data`` group: slices/s from the trainer's input path (SliceDataset + StepBatches, host to device) against
the slices/s one training iteration consumes.

``extra_info["loader_to_step_ratio"]`` is the loader's slices/s over the train step's; the target is >= 5, so that
loading never shows in a training profile. The loader runs in the training process (the trainer has no worker
processes: batches are views of in-memory slice tensors).
"""

from __future__ import annotations

import pytest
import torch

from _measure import PeakMemory, Timed, device_name
from _recipes import TrainStep, step_profile

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


@pytest.mark.benchmark(group="data")
@pytest.mark.parametrize("device", DEVICES)
def test_step_batches(benchmark, device: str) -> None:
    dev = torch.device(device)
    step = TrainStep(dev, step_profile(dev, disabled=benchmark.disabled))
    paired, unpaired = step.streams
    steps_per_round = 20
    cursor = iter(range(10**9))

    def load() -> dict[str, torch.Tensor]:
        # What the trainer does per iteration: a paired and an unpaired batch for the next step, on the device.
        for _ in range(steps_per_round):
            index = next(cursor)
            batches = step.batch(paired, index), step.batch(unpaired, index)
        return batches[0]

    timed = Timed(load, dev)
    rounds = 1 if benchmark.disabled else 10
    with PeakMemory(dev) as memory:
        batch = benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0 if benchmark.disabled else 1)
    assert batch["inputs"].shape == (step.config.batch_size, 3, step.config.image_size, step.config.image_size)

    # What one iteration consumes, timed here on the same batches (the warm-up step first).
    train = Timed(step, dev)
    for _ in range(1 if benchmark.disabled else 3):
        train()
    loader_slices_per_s = steps_per_round * step.images_per_step / timed.best
    step_slices_per_s = step.images_per_step / (train.durations[-1] if benchmark.disabled else min(train.durations[1:]))
    benchmark.extra_info.update({
        "device": device_name(dev),
        "dtype": "float32",
        "shapes": {"batch": list(batch["inputs"].shape), "preset": step.profile.preset},
        "loader_slices_per_s": loader_slices_per_s,
        "train_step_slices_per_s": step_slices_per_s,
        "loader_to_step_ratio": loader_slices_per_s / step_slices_per_s,
        "flops": 0,  # indexing and copies: nothing a FLOP counter counts
        "peak_memory_bytes": memory.peak_bytes,
        "peak_memory_kind": memory.kind,
    })
