"""step_loader: the batch of step s is a pure function of s, whatever the workers."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import Dataset

from ds3kit.data import (
    CachedSliceDataset,
    StepBatchSampler,
    preprocess_cases,
    stack_tensors,
    step_loader,
    write_phantom_cohort,
)

from .conftest import SMALL_SHAPE


class SeededRule:
    """An independent step rule: a fresh seeded permutation per step, 5 items each (repeats across steps)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.calls: list[tuple[int, int]] = []  # (step, pid): where the rule runs

    def __call__(self, step: int) -> list[int]:
        self.calls.append((step, os.getpid()))
        generator = torch.Generator().manual_seed(self.seed * 7919 + step)
        return torch.randperm(self.size, generator=generator)[:5].tolist()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> CachedSliceDataset:
    folder = tmp_path_factory.mktemp("loader")
    cases = write_phantom_cohort(folder / "c", cases=2, shape=SMALL_SHAPE, seed=5, progress=False)
    result = preprocess_cases(cases, cache_dir=folder / "cache", progress=False)
    return CachedSliceDataset(result.cases, with_target=True, image_size=35)


def _expected(dataset: Dataset, rule: SeededRule, step: int) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in rule(step)]
    return {
        key: torch.stack([item[key] for item in items])
        for key in ("inputs", "brain_mask", "tumour_mask", "seg", "target")
    }


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_are_the_rule_in_step_order(dataset, num_workers):
    rule, reference = SeededRule(len(dataset), seed=3), SeededRule(len(dataset), seed=3)
    loader = step_loader(dataset, rule, start=4, stop=11, num_workers=num_workers)
    assert len(loader) == 7
    batches = list(loader)
    assert len(batches) == 7
    for step, batch in zip(range(4, 11), batches):
        expected = _expected(dataset, reference, step)
        assert list(batch) == list(expected)  # ints (case_index, slice_index) are dropped, as in the trainer
        for key, value in expected.items():
            assert torch.equal(batch[key], value), (step, key)
    assert [step for step, _ in rule.calls] == list(range(4, 11))
    assert {pid for _, pid in rule.calls} == {os.getpid()}  # the rule runs in this process, never in a worker


def test_a_resumed_loader_sees_the_straight_runs_batches(dataset):
    rule = SeededRule(len(dataset), seed=8)
    straight = list(step_loader(dataset, rule, start=0, stop=6, num_workers=2, multiprocessing_context="spawn"))
    resumed = list(step_loader(dataset, rule, start=3, stop=6))
    for a, b in zip(straight[3:], resumed):
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_the_loader_leaves_the_global_rng_alone(dataset):
    # A resumed run restores the RNG and then builds its loaders: they must not shift the augmentation stream.
    torch.manual_seed(11)
    expected = torch.rand(4)
    torch.manual_seed(11)
    for workers in (0, 2):
        for _ in step_loader(dataset, SeededRule(len(dataset), seed=1), start=2, stop=4, num_workers=workers):
            pass
    assert torch.equal(torch.rand(4), expected)


def test_sampler_and_collate_checks():
    with pytest.raises(ValueError, match="need 0 <= start <= stop, got start=5, stop=2"):
        StepBatchSampler(lambda step: [step], start=5, stop=2)
    assert list(StepBatchSampler(lambda step: (step, step + 1), start=1, stop=3)) == [[1, 2], [2, 3]]
    with pytest.raises(ValueError, match="empty batch"):
        stack_tensors([])
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        step_loader([], lambda step: [0], start=0, stop=1, num_workers=-1)
