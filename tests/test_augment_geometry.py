"""MRIAugmentation: one geometry for all modalities, the target and the labels; intensity on the inputs only."""

import pytest
import torch

from ds3kit.augment import MRIAugmentation


def batch(seed=0, size=41):
    generator = torch.Generator().manual_seed(seed)
    image = torch.zeros(4, 1, size, size)
    image[:, :, 8:30, 10:33] = torch.rand(4, 1, 22, 23, generator=generator) * 0.5 + 0.4
    seg = torch.where(image > 0.7, 4.0, torch.where(image > 0, 2.0, 0.0))
    return {
        "inputs": image.expand(-1, 3, -1, -1).clone(),
        "target": image.clone(),
        "brain_mask": (image > 0).float(),
        "seg": seg,
        "case_index": torch.arange(4),
    }


def test_same_geometry_for_every_modality_target_and_labels():
    torch.manual_seed(0)
    out = MRIAugmentation(intensity=False, p_geometric=1.0)(batch())
    assert torch.equal(out["inputs"][:, 0], out["inputs"][:, 1]) and torch.equal(out["inputs"][:, 1], out["inputs"][:, 2])
    assert torch.equal(out["inputs"][:, :1], out["target"])
    assert set(out["seg"].unique().tolist()) <= {0.0, 2.0, 4.0}
    # The warped labels sit where the warped image is: label > 0 inside the image support, up to border pixels.
    support = out["target"] > 0.05
    agreement = ((out["seg"] > 0) == support).float().mean()
    assert agreement > 0.97
    assert not torch.equal(out["target"], batch()["target"]), "p_geometric=1 must move the image"
    assert torch.equal(out["case_index"], torch.arange(4)), "other keys pass through"


def test_intensity_changes_inputs_only_inside_the_brain():
    torch.manual_seed(1)
    original = batch()
    out = MRIAugmentation(geometric=False, p_intensity=1.0)(original)
    assert torch.equal(out["target"], original["target"])
    assert not torch.equal(out["inputs"], original["inputs"])
    outside = original["brain_mask"].expand(-1, 3, -1, -1) == 0
    assert torch.equal(out["inputs"][outside], original["inputs"][outside])
    assert out["inputs"].min() >= 0 and out["inputs"].max() <= 1
    # Per-modality draws: the three identical channels stop being identical.
    assert not torch.equal(out["inputs"][:, 0], out["inputs"][:, 1])


def test_probability_zero_is_identity_and_seed_reproduces():
    original = batch()
    out = MRIAugmentation(p_geometric=0.0, p_intensity=0.0, flip=False)(original)
    for key in ("inputs", "target", "seg", "brain_mask"):
        torch.testing.assert_close(out[key], original[key])
    augment = MRIAugmentation()
    torch.manual_seed(7)
    first = augment(batch())
    torch.manual_seed(7)
    second = augment(batch())
    for key in first:
        assert torch.equal(first[key], second[key])


def test_bad_batch():
    with pytest.raises(ValueError, match=r"batch\['inputs'\] must be \(B, M, H, W\)"):
        MRIAugmentation()({"inputs": torch.rand(3, 8, 8)})
