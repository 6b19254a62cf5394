"""``train_step`` group: one DS3-Net iteration (teacher, student, both discriminators, every loss).

Images/s count the slices one iteration consumes (a paired and an unpaired batch). FLOPs are counted once with
torch.utils.flop_counter over a whole iteration (forward and backward of every network) and divided by the
median time of the benchmarked rounds.
"""

from __future__ import annotations

import pytest
import torch
from _measure import PeakMemory, Timed, count_flops, profile_dir, throughput_info, write_profile
from _recipes import TrainStep, step_profile

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


@pytest.mark.benchmark(group="train_step")
@pytest.mark.parametrize("device", DEVICES)
def test_train_step(benchmark, device: str) -> None:
    dev = torch.device(device)
    step = TrainStep(dev, step_profile(dev, disabled=benchmark.disabled))
    flops = count_flops(step)  # also the warm-up round
    timed = Timed(step, dev)
    rounds = 1 if benchmark.disabled else (3 if dev.type == "cpu" else 20)
    with PeakMemory(dev) as memory:
        losses = benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0 if dev.type == "cpu" else 3)
    assert any(name.startswith("student/") for name in losses), "the student did not run: step before the warm-up?"
    assert all(torch.isfinite(torch.tensor(value)) for value in losses.values())
    benchmark.extra_info.update(
        throughput_info(
            device=dev,
            dtype=step.dtype,
            flops=flops,
            seconds=timed.best,
            median_seconds=timed.median,
            memory=memory,
            images_per_s=step.images_per_step / timed.best,
            images_per_s_median=step.images_per_step / timed.median,
            images_per_step=step.images_per_step,
            rounds=len(timed.durations),
            shapes=step.shapes(),
        )
    )
    if profile_dir() is not None:
        write_profile(f"train_step-{device}", step, dev)
        write_profile(f"patch_nce-{device}", patch_nce_call(step), dev, steps=5)


def patch_nce_call(step: TrainStep):
    """The teacher's L_pad alone, forward and backward, on the features of this step's paired batch."""
    teacher = step.method.teacher
    inputs = step.paired["inputs"]
    with torch.no_grad():
        prediction, input_features = teacher.generator.forward_with_features(inputs)
        query_features = teacher.generator.encode(prediction)
    difficulty = torch.ones_like(prediction)

    def run() -> None:
        queries = [feature.detach().requires_grad_(True) for feature in query_features]
        teacher.patch_nce(queries, input_features, difficulty).backward()

    return run
