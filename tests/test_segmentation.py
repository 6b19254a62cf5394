"""ds3kit.segment: BraTS regions, Dice against independent references (plain sets and MONAI), the segmenter,
its checkpoint, slice-wise segmentation and a short training run on a tiny phantom."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric

from ds3kit.data import load_brats_case, make_phantom_case, phantom_affine, save_volume
from ds3kit.errors import CheckpointError
from ds3kit.inference import save_generator
from ds3kit.models import build_generator
from ds3kit.segment import (
    REGIONS,
    SegmentationLoss,
    Segmenter,
    check_held_out,
    dice_by_subject,
    dice_score,
    load_region_slices,
    load_segmenter,
    reference_t1ce,
    region_dice,
    save_segmenter,
    seg_to_regions,
    segment_volume,
    session_dice,
    train_segmenter,
)

SHAPE = (29, 35, 11)  # odd, not a multiple of the U-Net's stride


def set_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Independent reference: Dice of two sets of voxel coordinates, BraTS's empty conventions written out."""
    p = {tuple(i) for i in np.argwhere(pred)}
    t = {tuple(i) for i in np.argwhere(target)}
    if not p and not t:
        return 1.0
    if not p or not t:
        return 0.0
    return 2 * len(p & t) / (len(p) + len(t))


def random_seg(rng: np.random.Generator, shape=SHAPE, labels=(0, 1, 2, 4), p=None) -> np.ndarray:
    return rng.choice(np.array(labels, dtype=np.uint8), size=shape, p=p)


# ---------------------------------------------------------------- regions and Dice


def test_seg_to_regions_follows_brats_label_sets():
    seg = np.array([0, 1, 2, 4], dtype=np.uint8)
    regions = seg_to_regions(seg)
    assert REGIONS == ("wt", "tc", "et") and regions.dtype == bool and regions.shape == (3, 4)
    np.testing.assert_array_equal(regions[0], [False, True, True, True])  # WT = {1, 2, 4}
    np.testing.assert_array_equal(regions[1], [False, True, False, True])  # TC = {1, 4}
    np.testing.assert_array_equal(regions[2], [False, False, False, True])  # ET = {4}


def test_seg_to_regions_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"labels must be in \{0, 1, 2, 4\}, got \[3\]"):
        seg_to_regions(np.array([0, 3], dtype=np.uint8))
    with pytest.raises(ValueError, match="integer BraTS labels, got dtype float32"):
        seg_to_regions(np.zeros(3, dtype=np.float32))


@pytest.mark.parametrize("seed", range(5))
def test_dice_score_matches_the_set_reference_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    pred, target = rng.random(SHAPE) < rng.uniform(0.01, 0.5), rng.random(SHAPE) < rng.uniform(0.01, 0.5)
    assert dice_score(pred, target) == pytest.approx(set_dice(pred, target), abs=1e-12)


def test_dice_score_empty_conventions():
    empty, some = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    some[3, 4, 5] = True
    assert dice_score(empty, empty) == 1.0  # nothing to find, nothing found
    assert dice_score(some, empty) == 0.0  # a false positive region
    assert dice_score(empty, some) == 0.0  # a missed region
    assert dice_score(some, some) == 1.0


def test_dice_score_errors():
    with pytest.raises(ValueError, match=r"same shape, got \(2, 3\) and \(3, 2\)"):
        dice_score(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match="bool masks, got uint8 and bool"):
        dice_score(np.zeros(3, np.uint8), np.zeros(3, bool))


@pytest.mark.parametrize("seed", range(4))
def test_region_dice_matches_monai_dice_metric_without_ignore_empty(seed):
    rng = np.random.default_rng(seed)
    truth = random_seg(rng, p=[0.7, 0.1, 0.1, 0.1])
    # A noisy prediction: the truth's regions with a fraction of voxels flipped.
    pred = seg_to_regions(truth) ^ (rng.random((3, *SHAPE)) < 0.15)
    ours = region_dice(pred, truth)
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    monai = metric(torch.from_numpy(pred)[None].float(), torch.from_numpy(seg_to_regions(truth))[None].float())[0]
    for index, name in enumerate(REGIONS):
        assert ours[f"dice_{name}"] == pytest.approx(float(monai[index]), abs=1e-6)
        assert ours[f"dice_{name}"] == pytest.approx(set_dice(pred[index], seg_to_regions(truth)[index]), abs=1e-12)


def test_region_dice_empty_regions_agree_with_monai_and_brats():
    # No enhancing tumour in the truth (a non-enhancing glioma), ET predicted empty: ET Dice 1. No tumour core in
    # the prediction but some in the truth: TC Dice 0.
    truth = np.zeros(SHAPE, np.uint8)
    truth[2:6, 3:8, 1:4] = 2
    truth[3, 4, 2] = 1
    pred = np.zeros((3, *SHAPE), bool)
    pred[0, 2:6, 3:8, 1:4] = True
    ours = region_dice(pred, truth)
    assert ours == {"dice_et": 1.0, "dice_tc": 0.0, "dice_wt": 1.0}
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    monai = metric(torch.from_numpy(pred)[None].float(), torch.from_numpy(seg_to_regions(truth))[None].float())[0]
    assert [ours[f"dice_{name}"] for name in REGIONS] == monai.tolist()
    # A predicted ET where the truth has none: 0, not 1.
    pred[2, 0, 0, 0] = True
    assert region_dice(pred, truth)["dice_et"] == 0.0


def test_region_dice_errors():
    seg = np.zeros(SHAPE, np.uint8)
    with pytest.raises(
        ValueError,
        match=r"pred_regions must be \(3, \*true_seg.shape\) = \(3, 29, 35, 11\), got shape \(2, 29, 35, 11\)",
    ):
        region_dice(np.zeros((2, *SHAPE), bool), seg)
    with pytest.raises(ValueError, match="pred_regions must be bool, got dtype float32"):
        region_dice(np.zeros((3, *SHAPE), np.float32), seg)


# ---------------------------------------------------------------- the segmenter and its checkpoint


def test_segmenter_accepts_odd_slice_sizes_and_checks_channels():
    segmenter = Segmenter(channels=(4, 8), strides=(2,), num_res_units=0)
    assert segmenter(torch.rand(2, 4, 29, 35)).shape == (2, 3, 29, 35)
    with pytest.raises(
        ValueError, match=r"slices must be \(B, 4, H, W\) \(T1, T1ce, T2, FLAIR\), got shape \(2, 3, 29, 35\)"
    ):
        segmenter(torch.rand(2, 3, 29, 35))
    with pytest.raises(ValueError, match="strides one fewer, got 3 channels and 1 strides"):
        Segmenter(channels=(4, 8, 16), strides=(2,))


def test_segmenter_checkpoint_round_trips_with_weights_only(tmp_path):
    torch.manual_seed(0)
    segmenter = Segmenter(channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch")
    segmenter.eval()
    path = tmp_path / "segmenter.pt"
    save_segmenter(path, segmenter, train_cases=["A", "B"], steps=3)
    payload = torch.load(path, weights_only=True)  # the safe unpickler accepts every stored object
    assert payload["format"] == "ds3kit.segmenter" and payload["regions"] == ["wt", "tc", "et"]
    loaded, metadata = load_segmenter(path)
    assert metadata == {"train_cases": ["A", "B"], "steps": 3} and not loaded.training
    slices = torch.rand(3, 4, 17, 23)
    torch.testing.assert_close(loaded(slices), segmenter(slices), rtol=0, atol=0)


def test_load_segmenter_refuses_other_checkpoints(tmp_path):
    generator_path = tmp_path / "generator.pt"
    save_generator(generator_path, build_generator(preset="tiny"))
    with pytest.raises(CheckpointError, match="expected a 'ds3kit.segmenter' checkpoint, found 'ds3kit.generator'"):
        load_segmenter(generator_path)
    broken = tmp_path / "broken.pt"
    save_segmenter(broken, Segmenter(channels=(4, 8), strides=(2,)))
    payload = torch.load(broken, weights_only=True)
    payload["config"]["channels"] = [6, 8]
    torch.save(payload, broken)
    with pytest.raises(CheckpointError, match="weights do not fit the segmenter architecture"):
        load_segmenter(broken)
    assert zipfile.is_zipfile(broken)


# ---------------------------------------------------------------- slice-wise segmentation


class Thresholds(torch.nn.Module):
    """A transparent 'segmenter': WT where FLAIR > 0.5, TC where T2 > 0.5, ET where T1ce > 0.5 (logits +-10)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # segment_volume finds the device from the parameters

    def forward(self, slices):
        channels = slices[:, [3, 2, 1]]  # FLAIR, T2, T1ce
        return torch.where(channels > 0.5, 10.0, -10.0) + self.anchor


def test_segment_volume_is_slice_wise_and_cut_to_the_brain():
    rng = np.random.default_rng(1)
    t1, t1ce, t2, flair = (rng.random(SHAPE).astype(np.float32) for _ in range(4))
    brain = np.zeros(SHAPE, bool)
    brain[3:25, 4:30, 2:9] = True
    regions = segment_volume(Thresholds(), t1, t1ce, t2, flair, brain, batch_size=3)
    assert regions.dtype == bool and regions.shape == (3, *SHAPE)
    np.testing.assert_array_equal(regions[0], (flair > 0.5) & brain)
    np.testing.assert_array_equal(regions[1], (t2 > 0.5) & brain)
    np.testing.assert_array_equal(regions[2], (t1ce > 0.5) & brain)
    with pytest.raises(ValueError, match=r"t2 must have the brain mask's shape \(29, 35, 11\), got \(29, 35, 10\)"):
        segment_volume(Thresholds(), t1, t1ce, t2[..., :10], flair, brain)


def test_session_dice_uses_the_given_t1ce_and_the_reference_rows(tmp_path):
    case = make_phantom_case(SHAPE, seed=7)
    folder = tmp_path / "Case_1"
    folder.mkdir()
    for name, data in case.items():
        save_volume(folder / f"Case_1_{name}.nii.gz", data, phantom_affine(SHAPE))
    session = load_brats_case(folder)
    real = session_dice(Thresholds(), session, reference_t1ce(session, "real_t1ce"))
    t1, t2, flair = session.inputs
    expected = region_dice(segment_volume(Thresholds(), t1, session.target, t2, flair, session.brain_mask), session.seg)
    assert real == expected
    copy = session_dice(Thresholds(), session, reference_t1ce(session, "copy_t1"))
    np.testing.assert_array_equal(reference_t1ce(session, "copy_t1"), session.inputs[0])
    assert copy["dice_wt"] == real["dice_wt"]  # WT and TC here read FLAIR and T2 only
    with pytest.raises(ValueError, match=r"row must be one of \('real_t1ce', 'copy_t1'\), got 'copy_t2'"):
        reference_t1ce(session, "copy_t2")
    with pytest.raises(ValueError, match=r"t1ce must be on the session's grid \(29, 35, 11\)"):
        session_dice(Thresholds(), session, session.target[:-1])
    # Every subject at once, from a mapping of volumes (a generator's predictions) or from a predictor.
    assert dice_by_subject(Thresholds(), [session], {"Case_1": session.target}) == {"Case_1": real}
    assert dice_by_subject(Thresholds(), [session], lambda s: reference_t1ce(s, "copy_t1")) == {"Case_1": copy}
    with pytest.raises(ValueError, match=r"Case_1: no T1ce given for this session; given: \['Other'\]"):
        dice_by_subject(Thresholds(), [session], {"Other": session.target})


def test_check_held_out_names_training_subjects():
    check_held_out({"train_cases": ["A", "B"]}, ["C", "D"])
    with pytest.raises(ValueError, match=r"trained on 1 of the evaluated subjects \(B\)"):
        check_held_out({"train_cases": ["A", "B"]}, ["B", "C"])
    with pytest.raises(ValueError, match="does not list its training subjects"):
        check_held_out({}, ["C"])


# ---------------------------------------------------------------- training


def test_segmentation_loss_is_lower_for_the_truth_and_checks_shapes():
    rng = np.random.default_rng(2)
    regions = torch.from_numpy(seg_to_regions(random_seg(rng, (2, 19, 23), p=[0.6, 0.1, 0.2, 0.1]))).permute(1, 0, 2, 3)
    loss = SegmentationLoss()
    good = loss(torch.where(regions, 8.0, -8.0), regions)
    bad = loss(torch.where(regions, -8.0, 8.0), regions)
    assert float(good) < 0.01 < 1.0 < float(bad)
    with pytest.raises(ValueError, match="logits and regions must have the same shape"):
        loss(torch.zeros(2, 3, 19, 23), regions[:, :2])


@pytest.fixture(scope="module")
def tiny_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("segment_cohort")
    folders = []
    for index in range(3):
        case = make_phantom_case((40, 40, 12), seed=index)
        folder = root / f"Case_{index}"
        folder.mkdir()
        for name, data in case.items():
            save_volume(
                folder / f"Case_{index}_{name}.nii.gz",
                data,
                phantom_affine((40, 40, 12)),
                dtype=np.uint8 if name == "seg" else None,
            )
        folders.append(folder)
    return folders


def test_load_region_slices_stacks_four_modalities_and_regions(tiny_cases):
    slices = load_region_slices(tiny_cases, image_size=33)
    assert slices.images.shape[1:] == (4, 33, 33) and slices.regions.shape[1:] == (3, 33, 33)
    assert slices.regions.dtype == torch.bool and slices.case_ids == ["Case_0", "Case_1", "Case_2"]
    session = load_brats_case(tiny_cases[0])
    z = int(np.flatnonzero(session.brain_mask.mean(axis=(0, 1)) >= 0.01)[0])  # the first kept slice
    centre = slice(3, 36)  # 40 -> 33: (40 - 33) // 2 = 3 cropped at the start
    np.testing.assert_array_equal(slices.images[0, 1].numpy(), session.target[centre, centre, z])
    np.testing.assert_array_equal(slices.images[0, 3].numpy(), session.inputs[2][centre, centre, z])
    np.testing.assert_array_equal(slices.regions[0].numpy(), seg_to_regions(session.seg)[:, centre, centre, z])


def test_load_region_slices_without_t1ce_puts_the_t1_in_its_channel_and_reads_no_t1ce(tiny_cases, monkeypatch):
    import ds3kit.segment.training as training

    with_t1ce = load_region_slices(tiny_cases, image_size=33)
    loads = []
    original = training.load_brats_case
    monkeypatch.setattr(training, "load_brats_case", lambda case, **kw: loads.append(kw) or original(case, **kw))
    without = load_region_slices(tiny_cases, image_size=33, without_t1ce=True)
    assert loads and all(kw == {"with_target": False} for kw in loads)
    torch.testing.assert_close(without.images[:, 1], with_t1ce.images[:, 0], rtol=0, atol=0)
    for channel in (0, 2, 3):
        torch.testing.assert_close(without.images[:, channel], with_t1ce.images[:, channel], rtol=0, atol=0)
    assert torch.equal(without.regions, with_t1ce.regions) and without.case_ids == with_t1ce.case_ids


def test_check_reads_t1ce_refuses_a_segmenter_trained_without_t1ce():
    from ds3kit.segment import check_reads_t1ce

    check_reads_t1ce({"t1ce_channel": "t1ce"})
    check_reads_t1ce({})  # segmenters written before the option read the T1ce
    with pytest.raises(ValueError, match="trained without T1ce"):
        check_reads_t1ce({"t1ce_channel": "t1"})


def test_train_segmenter_lowers_the_loss_and_is_seeded(tiny_cases):
    slices = load_region_slices(tiny_cases)
    loss = SegmentationLoss()

    def trained(steps: int) -> Segmenter:
        torch.manual_seed(0)  # the initialisation; train_segmenter's seed drives sampling and flips
        segmenter = Segmenter(channels=(4, 8, 16), strides=(2, 2))
        return train_segmenter(slices, steps=steps, batch_size=4, lr=1e-2, seed=0, segmenter=segmenter, progress=False)

    untrained = trained(1)  # one step: nearly the initial weights
    first, second = trained(30), trained(30)
    with torch.no_grad():
        before = float(loss(untrained(slices.images[:16]), slices.regions[:16]))
        after = float(loss(first(slices.images[:16]), slices.regions[:16]))
        torch.testing.assert_close(first(slices.images[:4]), second(slices.images[:4]))
    assert after < 0.8 * before and not first.training
