from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ds3kit.data.dataset import SliceDataset, center_crop_or_pad, split_cohort
from ds3kit.data.phantom import write_phantom_cohort
from ds3kit.data.session import load_brats_case
from ds3kit.errors import InputError

from .conftest import SMALL_SHAPE


def _cases(n: int) -> list[Path]:
    return [Path(f"/data/Case_{i:03d}") for i in range(n)]


def test_split_is_a_deterministic_partition_of_subjects():
    cases = _cases(37)
    split = split_cohort(cases, paired_fraction=0.1, seed=4)
    groups = [split.train_paired, split.train_unpaired, split.val, split.test]
    assert sorted(p for g in groups for p in g) == sorted(cases)
    assert sum(len(g) for g in groups) == 37  # disjoint
    assert (len(split.test), len(split.val)) == (round(0.2 * 37), round(0.1 * 37))
    assert len(split.train_paired) == round(0.1 * len(split.train))
    assert split == split_cohort(list(reversed(cases)), paired_fraction=0.1, seed=4)  # order-independent
    assert split.test != split_cohort(cases, paired_fraction=0.1, seed=5).test


def test_paired_sets_are_nested_and_eval_sets_fixed_across_fractions():
    cases = _cases(40)
    splits = [split_cohort(cases, paired_fraction=f, seed=0) for f in (0.05, 0.1, 0.5, 1.0)]
    for smaller, larger in zip(splits, splits[1:]):
        assert set(smaller.train_paired) <= set(larger.train_paired)
        assert smaller.test == larger.test and smaller.val == larger.val
    assert [len(s.train_paired) for s in splits] == [1, 3, 14, 28]
    assert splits[-1].train_unpaired == []


def test_split_edge_cases():
    tiny = split_cohort(_cases(3), paired_fraction=0.01)
    assert (len(tiny.test), len(tiny.val), len(tiny.train_paired), len(tiny.train_unpaired)) == (1, 1, 1, 0)
    none_paired = split_cohort(_cases(10), paired_fraction=0.0)
    assert none_paired.train_paired == [] and len(none_paired.train_unpaired) == 7
    no_eval = split_cohort(_cases(5), paired_fraction=0.5, val_fraction=0.0, test_fraction=0.0)
    assert no_eval.val == [] and no_eval.test == [] and len(no_eval.train) == 5
    with pytest.raises(ValueError, match="paired_fraction"):
        split_cohort(_cases(10), paired_fraction=1.5)
    with pytest.raises(ValueError, match="< 1"):
        split_cohort(_cases(10), paired_fraction=0.5, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="duplicate"):
        split_cohort(_cases(2) * 2, paired_fraction=0.5)
    two = split_cohort(_cases(2), paired_fraction=0.5)  # the training subject comes before val
    assert (len(two.test), len(two.val), len(two.train)) == (1, 0, 1)


def test_center_crop_or_pad_round_trip():
    image = torch.arange(7 * 9, dtype=torch.float32).reshape(1, 7, 9)
    padded = center_crop_or_pad(image, (12, 12))
    assert padded.shape == (1, 12, 12)
    assert torch.equal(padded[:, 2:9, 1:10], image) and padded.sum() == image.sum()
    assert torch.equal(center_crop_or_pad(padded, (7, 9)), image)
    cropped = center_crop_or_pad(image, (5, 4))
    assert torch.equal(cropped, image[:, 1:6, 2:6])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> list[Path]:
    return write_phantom_cohort(
        tmp_path_factory.mktemp("cohort") / "c", cases=3, shape=SMALL_SHAPE, seed=2, progress=False
    )


def test_items_match_the_sessions(cohort):
    dataset = SliceDataset(cohort, with_target=True, min_brain_fraction=0.05)
    sessions = [load_brats_case(case) for case in cohort]
    expected_count = sum(int((s.brain_mask.mean(axis=(0, 1)) >= 0.05).sum()) for s in sessions)
    assert len(dataset) == expected_count < 3 * SMALL_SHAPE[2]  # empty top/bottom slices skipped
    for index in (0, len(dataset) // 2, len(dataset) - 1):
        item = dataset[index]
        session = sessions[item["case_index"]]
        z = item["slice_index"]
        assert item["inputs"].shape == (3, 33, 37) and item["inputs"].dtype == torch.float32
        np.testing.assert_array_equal(item["inputs"].numpy(), session.inputs[..., z])
        np.testing.assert_array_equal(item["target"][0].numpy(), session.target[..., z])
        np.testing.assert_array_equal(item["brain_mask"][0].numpy(), session.brain_mask[..., z])
        np.testing.assert_array_equal(item["tumour_mask"][0].numpy(), session.seg[..., z] > 0)
        np.testing.assert_array_equal(item["seg"][0].numpy(), session.seg[..., z])
        assert session.brain_mask[..., z].mean() >= 0.05
    assert [s.case_id for s in dataset.sessions] == ["Phantom_001", "Phantom_002", "Phantom_003"]


def test_unpaired_items_never_carry_a_target(cohort):
    dataset = SliceDataset(cohort, with_target=False, image_size=41, cache=False)
    assert all(session.target is None for session in dataset.sessions)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True)))
    assert "target" not in batch
    assert batch["inputs"].shape == (8, 3, 41, 41) and batch["tumour_mask"].shape == (8, 1, 41, 41)
    assert batch["inputs"][:, :, :4].abs().sum() == 0  # zero padding (41 - 33 = 8 rows, 4 above)


def test_sessions_as_input_and_target_required(cohort):
    session = load_brats_case(cohort[0], with_target=False)
    dataset = SliceDataset([session], with_target=False, image_size=24)
    assert dataset[0]["inputs"].shape == (3, 24, 24)
    with pytest.raises(InputError, match="Phantom_001.*no T1ce"):
        SliceDataset([session], with_target=True)
    with pytest.raises(ValueError, match="min_brain_fraction"):
        SliceDataset([session], with_target=False, min_brain_fraction=2.0)
