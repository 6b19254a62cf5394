"""MRIAugmentation: shared geometry (checked by replaying kornia's params), labels, intensity, seeds, identity, errors."""

from __future__ import annotations

import math

import pytest
import torch

from ds3kit.augment import MRIAugmentation, random_bias_field


def make_batch(batch_size=5, height=37, width=43, seed=0, seg_dtype=torch.int64):
    """A skull-stripped-looking batch: a bright smooth blob on a zero background, all modalities equal."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.linspace(-1, 1, height)[:, None]
    cols = torch.linspace(-1, 1, width)[None, :]
    centre = torch.rand(batch_size, 2, generator=generator) * 0.4 - 0.2
    radius2 = (rows - centre[:, 0, None, None]) ** 2 / 0.5 + (cols - centre[:, 1, None, None]) ** 2 / 0.6
    texture = 0.6 + 0.3 * torch.rand(batch_size, height, width, generator=generator)
    image = torch.where(radius2 < 1, texture * (1.2 - radius2).clamp(0, 1), torch.zeros(()))[:, None]
    seg = torch.zeros_like(image, dtype=seg_dtype)
    seg[image > 0] = 2
    seg[image > 0.5] = 4
    seg[image > 0.7] = 1
    return {
        "inputs": image.expand(-1, 3, -1, -1).clone(),
        "target": image.clone(),
        "brain_mask": image > 0,
        "tumour_mask": (image > 0.5).float(),
        "seg": seg,
        "case_index": torch.arange(batch_size),
        "name": "kept",
    }


def replay(augment, batch, key, as_mask=False):
    """Warp batch[key] with the recorded kornia params of the last call (only the selected samples)."""
    selected = augment.last_params["geometric"]
    index = selected.nonzero().squeeze(1)
    tensor = batch[key]
    chosen = tensor.index_select(0, index)
    if as_mask:
        dummy = torch.zeros(chosen.shape[0], 1, *chosen.shape[2:])
        _, warped = augment.warp(dummy, chosen, params=augment.last_params["warp"], data_keys=["input", "mask"])
    else:
        warped = augment.warp(chosen.float(), params=augment.last_params["warp"], data_keys=["input"]).clamp(0, 1)
    out = tensor.clone()
    out[index] = warped.to(tensor.dtype)
    return out


def test_one_geometry_for_modalities_target_and_labels_matches_kornia_replay():
    batch = make_batch()
    torch.manual_seed(3)
    augment = MRIAugmentation(intensity=False, p_geometric=1.0)
    out = augment(batch)
    assert bool(augment.last_params["geometric"].all())
    # Every modality and the target moved identically.
    assert torch.equal(out["inputs"][:, 0], out["inputs"][:, 1])
    assert torch.equal(out["inputs"][:, 0], out["inputs"][:, 2])
    assert torch.equal(out["inputs"][:, :1], out["target"])
    assert not torch.equal(out["target"], batch["target"])
    # Against kornia, replayed with the recorded parameters: images and every label map, exactly.
    torch.testing.assert_close(out["target"], replay(augment, batch, "target"), rtol=0, atol=1e-6)
    for key in ("brain_mask", "tumour_mask", "seg"):
        assert torch.equal(out[key], replay(augment, batch, key, as_mask=True)), key


def test_labels_follow_the_warped_image_and_keep_their_values_and_dtypes():
    batch = make_batch(seg_dtype=torch.uint8)
    torch.manual_seed(4)
    out = MRIAugmentation(intensity=False, p_geometric=1.0)(batch)
    assert out["seg"].dtype == torch.uint8 and out["brain_mask"].dtype == torch.bool
    assert out["tumour_mask"].dtype == torch.float32
    assert set(out["seg"].unique().tolist()) <= {0, 1, 2, 4}
    assert set(out["tumour_mask"].unique().tolist()) <= {0.0, 1.0}
    # Nearest-neighbour labels vs the bilinear image: they disagree only along edges (a thin band of pixels).
    # (Inside the blob the image is >= 0.12; half of that separates it from the zero background.)
    agreement = (out["brain_mask"] == (out["target"] > 0.06)).float().mean()
    assert agreement > 0.97
    assert ((out["seg"] == 0) == ~out["brain_mask"]).all()


def test_flip_is_along_h_by_default_and_w_on_request():
    batch = make_batch()
    for flip_dim in (-2, -1):
        torch.manual_seed(5)
        augment = MRIAugmentation(
            intensity=False, p_geometric=1.0, degrees=0.0, translate=0.0, scale=(1.0, 1.0), flip_dim=flip_dim
        )
        out = augment(batch)
        flipped = 0
        for b in range(batch["target"].shape[0]):
            same = torch.allclose(out["target"][b], batch["target"][b], atol=1e-5)
            mirrored = torch.allclose(out["target"][b], batch["target"][b].flip(flip_dim), atol=1e-5)
            assert same or mirrored
            flipped += mirrored and not same
            assert torch.equal(
                out["seg"][b], batch["seg"][b].flip(flip_dim) if mirrored and not same else batch["seg"][b]
            )
        assert flipped > 0


def test_p_geometric_selects_about_that_fraction_of_samples():
    torch.manual_seed(6)
    batch = make_batch(batch_size=200, height=15, width=17)
    augment = MRIAugmentation(intensity=False, p_geometric=0.7)
    out = augment(batch)
    selected = augment.last_params["geometric"]
    assert 0.55 < selected.float().mean() < 0.85
    unselected = ~selected
    assert torch.equal(out["target"][unselected], batch["target"][unselected])
    assert torch.equal(out["seg"][unselected], batch["seg"][unselected])


def test_intensity_changes_inputs_only_inside_the_brain_per_modality():
    batch = make_batch()
    torch.manual_seed(7)
    augment = MRIAugmentation(geometric=False, p_intensity=1.0)
    out = augment(batch)
    assert torch.equal(out["target"], batch["target"])
    assert torch.equal(out["seg"], batch["seg"])
    outside = ~batch["brain_mask"].expand(-1, 3, -1, -1)
    assert torch.equal(out["inputs"][outside], batch["inputs"][outside])
    assert (out["inputs"][outside] == 0).all()
    inside = ~outside
    assert not torch.equal(out["inputs"][inside], batch["inputs"][inside])
    assert out["inputs"].min() >= 0 and out["inputs"].max() <= 1
    assert not torch.equal(out["inputs"][:, 0], out["inputs"][:, 1])  # independent draws per modality


def test_intensity_without_brain_mask_keeps_zero_background():
    batch = make_batch()
    del batch["brain_mask"]
    torch.manual_seed(8)
    out = MRIAugmentation(p_intensity=1.0, p_geometric=1.0)(batch)
    # Where the (warped) image is zero, nothing was added (noise may still clip a few brain pixels to 0).
    background = (out["target"] == 0).expand(-1, 3, -1, -1)
    assert background.float().mean() > 0.3
    assert (out["inputs"][background] == 0).all()
    assert (out["inputs"][~background] > 0).float().mean() > 0.97


def test_gamma_alone_is_exactly_a_power():
    batch = make_batch()
    torch.manual_seed(9)
    augment = MRIAugmentation(geometric=False, p_intensity=1.0, gamma=(2.0, 2.0), bias_field=0.0, noise_std=0.0)
    out = augment(batch)
    inside = batch["brain_mask"].expand(-1, 3, -1, -1)
    torch.testing.assert_close(out["inputs"][inside], batch["inputs"][inside] ** 2)


def test_intensity_parameters_lie_in_their_ranges():
    torch.manual_seed(10)
    augment = MRIAugmentation(geometric=False, p_intensity=1.0)
    augment(make_batch(batch_size=64, height=11, width=13))
    gamma, strength, noise = (augment.last_params[k] for k in ("gamma", "bias_strength", "noise_std"))
    assert gamma.shape == strength.shape == noise.shape == (64, 3)
    assert gamma.min() >= 0.8 and gamma.max() <= 1.25 and (gamma < 1).any() and (gamma > 1).any()
    assert strength.min() >= 0 and strength.max() <= 0.3
    assert noise.min() >= 0 and noise.max() <= 0.02


def test_bias_field_is_smooth_and_bounded():
    torch.manual_seed(11)
    strength = torch.tensor([[0.3, 0.1], [0.0, 0.5]])
    field = random_bias_field((2, 2, 31, 29), strength)
    low, high = field.amin(dim=(-2, -1)), field.amax(dim=(-2, -1))
    assert (low >= torch.exp(-strength) - 1e-6).all() and (high <= torch.exp(strength) + 1e-6).all()
    # It reaches one end of its range exactly (normalised by the polynomial's peak).
    reached = torch.isclose(low, torch.exp(-strength), atol=1e-5) | torch.isclose(high, torch.exp(strength), atol=1e-5)
    assert reached.all()
    assert torch.equal(field[1, 0], torch.ones(31, 29))
    # Smooth: neighbouring pixels differ by far less than the field's range.
    assert (field.diff(dim=-1).abs().amax() < 0.1) and (field.diff(dim=-2).abs().amax() < 0.1)
    with pytest.raises(ValueError, match=r"strength must have shape \(2, 2\)"):
        random_bias_field((2, 2, 8, 8), torch.zeros(2))


def test_seed_reproduces_and_another_seed_differs():
    augment = MRIAugmentation()
    results = []
    for seed in (12, 12, 13):
        torch.manual_seed(seed)
        results.append(augment(make_batch()))
    for key in ("inputs", "target", "seg", "brain_mask", "tumour_mask"):
        assert torch.equal(results[0][key], results[1][key])
    assert not torch.equal(results[0]["inputs"], results[2]["inputs"])


def test_probability_zero_and_switches_off_are_the_identity():
    batch = make_batch()
    for augment in (
        MRIAugmentation(p_geometric=0.0, p_intensity=0.0),
        MRIAugmentation(geometric=False, intensity=False),
    ):
        out = augment(batch)
        for key in ("inputs", "target", "seg", "brain_mask", "tumour_mask", "case_index"):
            assert torch.equal(out[key], batch[key]), key


def test_shapes_other_keys_and_no_mutation():
    batch = make_batch()
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    torch.manual_seed(14)
    out = MRIAugmentation(p_geometric=1.0, p_intensity=1.0)(batch)
    assert set(out) == set(batch)
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            assert out[key].shape == value.shape and out[key].dtype == value.dtype
            assert torch.equal(value, before[key]), f"the input {key} was modified"
    assert out["case_index"] is batch["case_index"] and out["name"] == "kept"


def test_only_inputs_and_unpaired_batches_work():
    torch.manual_seed(15)
    inputs = make_batch()["inputs"]
    out = MRIAugmentation(p_geometric=1.0, p_intensity=1.0)({"inputs": inputs})
    assert out["inputs"].shape == inputs.shape and not torch.equal(out["inputs"], inputs)


def test_dtype_and_gradients():
    batch = make_batch(batch_size=3, height=17, width=19)
    inputs = batch["inputs"].double().requires_grad_(True)
    torch.manual_seed(16)
    out = MRIAugmentation(p_geometric=1.0, p_intensity=1.0)(
        {**batch, "inputs": inputs, "target": batch["target"].double()}
    )
    assert out["inputs"].dtype == torch.float64 and out["target"].dtype == torch.float64
    out["inputs"].sum().backward()
    assert inputs.grad is not None and torch.isfinite(inputs.grad).all() and inputs.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"degrees": -1.0}, "degrees must be >= 0"),
        ({"translate": 1.0}, r"translate must be in \[0, 1\)"),
        ({"scale": (1.1, 0.9)}, r"scale must be \(low, high\) with 0 < low <= high"),
        ({"gamma": (0.0, 1.0)}, r"gamma must be \(low, high\)"),
        ({"bias_field": -0.1}, "bias_field must be >= 0"),
        ({"noise_std": math.nan}, "noise_std must be >= 0"),
        ({"p_geometric": 1.5}, r"p_geometric must be in \[0, 1\], got 1.5"),
        ({"p_intensity": -0.1}, r"p_intensity must be in \[0, 1\]"),
        ({"flip_dim": 0}, "flip_dim must be -2 .H. or -1 .W., got 0"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        MRIAugmentation(**options)


def test_bad_batches():
    augment = MRIAugmentation()
    inputs = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="batch must be a dict with an 'inputs' tensor"):
        augment({"target": inputs})
    with pytest.raises(
        ValueError, match=r"batch\['inputs'\] must be \(B, M, H, W\) floating point.*got shape \(3, 16, 16\)"
    ):
        augment({"inputs": inputs[0]})
    with pytest.raises(ValueError, match=r"batch\['inputs'\] must be .*torch.int64"):
        augment({"inputs": inputs.long()})
    with pytest.raises(
        ValueError, match=r"batch\['seg'\] must be \(B, 1, H, W\) = \(2, 1, 16, 16\).*got shape \(2, 1, 16, 15\)"
    ):
        augment({"inputs": inputs, "seg": torch.zeros(2, 1, 16, 15)})
    with pytest.raises(ValueError, match=r"batch\['target'\] must be \(B, C, H, W\)"):
        augment({"inputs": inputs, "target": torch.rand(3, 1, 16, 16)})
