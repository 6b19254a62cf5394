"""``data`` group: the trainer's input path against what a train step consumes, and its memory against cohort size.

* ``test_step_batches``: slices/s from today's in-memory path (SliceDataset + StepBatches, host to device) against
  the slices/s one training iteration consumes (``loader_to_step_ratio``, target >= 5).
* ``test_cached_loader``: the same for the preprocessed cache (CachedSliceDataset through ``step_loader``, 0 and 2
  worker processes) on full-size 240 x 240 x 155 cases, at the small and the large preset.
* ``test_preprocess``: preprocessing cases/s, one process and two.
* ``test_rss_against_cohort_size``: peak RSS of the data path of a training run (two slice streams, batches of 50
  steps, validation sessions) on 4 and 12 full-size cases, in-memory against cached, each measured in a fresh
  subprocess so nothing of the other runs is counted. ``rss_growth_per_case_bytes`` is the target (<= 30 MB).

CI (``--benchmark-disable``) runs every case once on tiny cohorts (48 x 48 x 16, 4 and 6 cases) and the tiny preset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from _measure import PeakMemory, Timed, device_name
from _recipes import StepProfile, TrainStep, step_profile

HERE = Path(__file__).resolve().parent
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]
# Full-size cohorts (BraTS's grid) for the timed run; tiny ones for CI.
FULL = {"shape": (240, 240, 155), "sizes": (4, 12)}
SMOKE = {"shape": (48, 48, 16), "sizes": (4, 6)}
PRESETS = {  # the train step each preset runs on CPU: the RunConfig default (small) and BraTS's native slices (large)
    "small": StepProfile("small", 96, 4, (96, 96, 48)),
    "large": StepProfile("large", 240, 8, (240, 240, 24)),
}
PROFILE_SMOKE = StepProfile("tiny", 48, 2, (48, 48, 16))
RSS_STEPS = 50


def _scale(disabled: bool) -> dict:
    return SMOKE if disabled else FULL


def _cohort(disabled: bool) -> list[Path]:
    from ds3kit.data import default_cohort, list_cases

    scale = _scale(disabled)
    return list_cases(default_cohort(cases=max(scale["sizes"]), shape=scale["shape"]))


@pytest.fixture(scope="module")
def cache_dir():
    with tempfile.TemporaryDirectory(prefix="ds3kit-bench-cache-") as folder:
        yield Path(folder)


def _epoch_rule(size: int, batch: int, seed: int, stream: int):
    """The trainer's StepBatches rule: position p = step * batch + i is item p mod n of epoch p // n's permutation."""
    permutations: dict[int, torch.Tensor] = {}

    def indices(step: int) -> list[int]:
        out = []
        for position in range(step * batch, (step + 1) * batch):
            epoch = position // size
            if epoch not in permutations:
                generator = torch.Generator().manual_seed(seed * 1_000_003 + stream * 10_007 + epoch)
                permutations.clear()
                permutations[epoch] = torch.randperm(size, generator=generator)
            out.append(int(permutations[epoch][position % size]))
        return out

    return indices


# --------------------------------------------------------------------------------------------------- in memory
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
    benchmark.extra_info.update(
        {
            "device": device_name(dev),
            "dtype": "float32",
            "shapes": {"batch": list(batch["inputs"].shape), "preset": step.profile.preset},
            "loader_slices_per_s": loader_slices_per_s,
            "train_step_slices_per_s": step_slices_per_s,
            "loader_to_step_ratio": loader_slices_per_s / step_slices_per_s,
            "flops": 0,  # indexing and copies: nothing a FLOP counter counts
            "peak_memory_bytes": memory.peak_bytes,
            "peak_memory_kind": memory.kind,
        }
    )


# --------------------------------------------------------------------------------------------------- the cache
@pytest.mark.benchmark(group="data")
def test_preprocess(benchmark, cache_dir: Path) -> None:
    from ds3kit.data import preprocess_cases

    cases = _cohort(benchmark.disabled)[: min(_scale(benchmark.disabled)["sizes"])]
    rates: dict[str, float] = {}

    def run() -> None:
        for workers in (1,) if benchmark.disabled else (1, 2):  # CI skips the pool's start-up
            folder = cache_dir / f"rate-{workers}-{time.monotonic_ns()}"
            started = time.perf_counter()
            result = preprocess_cases(cases, cache_dir=folder, workers=workers, progress=False)
            rates[f"workers_{workers}"] = len(result.built) / (time.perf_counter() - started)
            assert sorted(result.built) == sorted(cases)

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(
        {
            "device": device_name("cpu"),
            "shapes": {"case": list(_scale(benchmark.disabled)["shape"]), "cases": len(cases)},
            "cases_per_s": rates,
            "flops": 0,
            "load_average_1min": os.getloadavg()[0],
        }
    )


@pytest.mark.benchmark(group="data")
@pytest.mark.parametrize("preset", ["small", "large"])
def test_cached_loader(benchmark, preset: str, cache_dir: Path) -> None:
    """Cached slices/s through step_loader against what one train step at ``preset`` consumes, on CPU."""
    from ds3kit.data import CachedSliceDataset, preprocess_cases, step_loader

    dev = torch.device("cpu")
    profile = PROFILE_SMOKE if benchmark.disabled else PRESETS[preset]
    cases = _cohort(benchmark.disabled)[: min(_scale(benchmark.disabled)["sizes"])]
    entries = preprocess_cases(cases, cache_dir=cache_dir / "shared", progress=False).cases
    half = len(entries) // 2
    datasets = [
        CachedSliceDataset(entries[:half], with_target=True, image_size=profile.image_size),
        CachedSliceDataset(entries[half:], with_target=False, image_size=profile.image_size),
    ]
    steps = 4 if benchmark.disabled else 40
    rates: dict[str, float] = {}

    def deliver(workers: int) -> dict[str, torch.Tensor]:
        loaders = [
            iter(
                step_loader(
                    dataset,
                    _epoch_rule(len(dataset), profile.batch_size, 0, stream),
                    start=0,
                    stop=steps,
                    num_workers=workers,
                )
            )
            for stream, dataset in enumerate(datasets)
        ]
        next(loaders[0]), next(loaders[1])  # worker start-up is paid once per run, not per step
        started = time.perf_counter()
        for _ in range(steps - 1):
            batch = next(loaders[0])
            next(loaders[1])
        rates[f"workers_{workers}"] = (steps - 1) * 2 * profile.batch_size / (time.perf_counter() - started)
        return batch

    def run() -> dict[str, torch.Tensor]:
        batch = deliver(0)
        deliver(2)
        return batch

    batch = benchmark.pedantic(run, rounds=1, iterations=1)
    assert batch["inputs"].shape == (profile.batch_size, 3, profile.image_size, profile.image_size)

    step = TrainStep(dev, profile)
    train = Timed(step, dev)
    for _ in range(1 if benchmark.disabled else 2):
        train()
    step_slices_per_s = step.images_per_step / train.durations[-1]
    best = max(rates.values())
    benchmark.extra_info.update(
        {
            "device": device_name(dev),
            "dtype": "float16 on disk, float32 batches",
            "shapes": {
                "batch": list(batch["inputs"].shape),
                "preset": profile.preset,
                "case": list(_scale(benchmark.disabled)["shape"]),
            },
            "loader_slices_per_s": rates,
            "train_step_slices_per_s": step_slices_per_s,
            "loader_to_step_ratio": best / step_slices_per_s,
            "flops": 0,
            "load_average_1min": os.getloadavg()[0],
        }
    )


# --------------------------------------------------------------------------------------------------- memory
@pytest.mark.benchmark(group="data")
@pytest.mark.parametrize("path", ["in_memory", "cached"])
def test_rss_against_cohort_size(benchmark, path: str, cache_dir: Path) -> None:
    from ds3kit.data import preprocess_cases

    scale = _scale(benchmark.disabled)
    cohort = _cohort(benchmark.disabled)
    profile = PROFILE_SMOKE if benchmark.disabled else PRESETS["large"]
    if path == "cached":  # built ahead of training, as `ds3kit preprocess` does; not part of the measured run
        preprocess_cases(cohort, cache_dir=cache_dir / "shared", workers=2, progress=False)
    rows: dict[int, dict] = {}

    def run() -> None:
        for count in scale["sizes"]:
            spec = {
                "path": path,
                "cases": [str(case) for case in cohort[:count]],
                "cache_dir": str(cache_dir / "shared"),
                "image_size": profile.image_size,
                "batch_size": profile.batch_size,
                "steps": 4 if benchmark.disabled else RSS_STEPS,
            }
            child = subprocess.run(
                [sys.executable, str(Path(__file__)), "--rss-child", json.dumps(spec)],
                capture_output=True,
                text=True,
                check=False,
                cwd=HERE,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            assert child.returncode == 0, child.stderr[-2000:]
            rows[count] = json.loads(child.stdout.strip().splitlines()[-1])

    benchmark.pedantic(run, rounds=1, iterations=1)
    small, large = scale["sizes"]
    growth = (rows[large]["peak_rss_bytes"] - rows[small]["peak_rss_bytes"]) / (large - small)
    anon_growth = (rows[large]["peak_anon_bytes"] - rows[small]["peak_anon_bytes"]) / (large - small)
    benchmark.extra_info.update(
        {
            "device": device_name("cpu"),
            "shapes": {
                "case": list(scale["shape"]),
                "cases": list(scale["sizes"]),
                "batch": profile.batch_size,
                "image_size": profile.image_size,
            },
            "rows": {str(count): row for count, row in rows.items()},
            "rss_growth_per_case_bytes": growth,
            "anon_rss_growth_per_case_bytes": anon_growth,
            "flops": 0,
            "peak_memory_kind": "cpu_peak_rss of a fresh subprocess",
        }
    )


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _rss_child(spec: dict) -> dict:
    """A training run's data path in this fresh process: two slice streams, ``steps`` batches each, validation.

    ``in_memory``: today's trainer (SliceDataset per stream, validation sessions loaded up front). ``cached``:
    CachedSliceDataset through step_loader, validation sessions streamed from the cache one at a time.
    """
    from ds3kit.data import (
        CachedSessions,
        CachedSliceDataset,
        SliceDataset,
        load_brats_case,
        preprocess_cases,
        split_cohort,
        step_loader,
    )
    from ds3kit.data.loader import stack_tensors

    cases = [Path(case) for case in spec["cases"]]
    split = split_cohort(cases, paired_fraction=0.5, seed=0)
    anon = {"peak": _status_bytes("RssAnon")}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.001):
            anon["peak"] = max(anon["peak"], _status_bytes("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    with PeakMemory("cpu") as memory:
        sampler.start()
        streams = []
        if spec["path"] == "in_memory":
            datasets = [
                SliceDataset(split.train_paired, with_target=True, image_size=spec["image_size"]),
                SliceDataset(split.train_unpaired, with_target=False, image_size=spec["image_size"]),
            ]
            val = [load_brats_case(case) for case in split.val]
            for stream, dataset in enumerate(datasets):
                rule = _epoch_rule(len(dataset), spec["batch_size"], 0, stream)
                streams.append(stack_tensors([dataset[i] for i in rule(step)]) for step in range(spec["steps"]))
        else:
            cached = preprocess_cases(cases, cache_dir=spec["cache_dir"], progress=False)
            assert not cached.built, "the cache is built ahead of the measured run"
            datasets = [
                CachedSliceDataset(cached.select(split.train_paired), with_target=True, image_size=spec["image_size"]),
                CachedSliceDataset(
                    cached.select(split.train_unpaired), with_target=False, image_size=spec["image_size"]
                ),
            ]
            val = CachedSessions(cached.select(split.val))
            for stream, dataset in enumerate(datasets):
                rule = _epoch_rule(len(dataset), spec["batch_size"], 0, stream)
                streams.append(iter(step_loader(dataset, rule, start=0, stop=spec["steps"])))
        slices = 0
        for paired, unpaired in zip(*streams):
            slices += len(paired["inputs"]) + len(unpaired["inputs"])
        checksum = sum(float(session.target.mean()) for session in val)  # what validation reads, one at a time
    stop.set()
    sampler.join()
    return {
        "cases": len(cases),
        "slices": sum(len(dataset) for dataset in datasets),
        "slices_read": slices,
        "peak_rss_bytes": memory.peak_bytes,
        "baseline_rss_bytes": memory.baseline_bytes,
        "peak_anon_bytes": anon["peak"],
        "final_file_rss_bytes": _status_bytes("RssFile"),
        "checksum": checksum,
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rss-child":
        print(json.dumps(_rss_child(json.loads(sys.argv[2]))))
    else:
        sys.exit(f"usage: {sys.argv[0]} --rss-child SPEC (run by pytest; see the module docstring)")
