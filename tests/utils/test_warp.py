"""random_affine and warp: a float64 bilinear reference, labels kept exactly, true rotations, every resolution alike."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ds3kit.utils.warp import WarpRange, random_affine, warp


def bilinear_reference(image: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """float64, one output pixel at a time: its centre in normalised coordinates, through theta, into input pixel
    coordinates (align_corners=False), then the four neighbours' weighted sum, zero outside the image."""
    batch, channels, height, width = image.shape
    out = np.zeros_like(image, dtype=np.float64)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                u, v = (2 * j + 1) / width - 1, (2 * i + 1) / height - 1
                x, y = theta[b] @ np.array([u, v, 1.0])
                col, row = ((x + 1) * width - 1) / 2, ((y + 1) * height - 1) / 2
                c0, r0 = math.floor(col), math.floor(row)
                for r, wr in ((r0, 1 - (row - r0)), (r0 + 1, row - r0)):
                    for c, wc in ((c0, 1 - (col - c0)), (c0 + 1, col - c0)):
                        if 0 <= r < height and 0 <= c < width:
                            out[b, :, i, j] += wr * wc * image[b, :, r, c]
    return out


def test_bilinear_warp_matches_a_float64_reference_on_odd_non_square_slices():
    torch.manual_seed(0)
    image = torch.rand(3, 2, 9, 13, dtype=torch.float64)
    theta = random_affine(3, (9, 13), WarpRange(degrees=30, scale=(0.8, 1.2), translate=0.1))
    actual = warp(image, theta.double())
    np.testing.assert_allclose(actual.numpy(), bilinear_reference(image.numpy(), theta.double().numpy()), atol=1e-10)


def nearest_reference(labels: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """float64: the input pixel nearest to each output centre's position through theta, zero outside."""
    batch, channels, height, width = labels.shape
    out = np.zeros_like(labels)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                x, y = theta[b] @ np.array([(2 * j + 1) / width - 1, (2 * i + 1) / height - 1, 1.0])
                col, row = round(((x + 1) * width - 1) / 2), round(((y + 1) * height - 1) / 2)
                if 0 <= row < height and 0 <= col < width:
                    out[b, :, i, j] = labels[b, :, row, col]
    return out


def test_nearest_keeps_label_values_and_dtype():
    torch.manual_seed(1)
    labels = torch.tensor([0, 1, 2, 4])[torch.randint(0, 4, (2, 1, 11, 7))]
    theta = random_affine(2, (11, 7), WarpRange())
    expected = nearest_reference(labels.numpy(), theta.double().numpy())
    assert (expected > 0).any()
    for tensor in (labels, labels > 1, labels.float()):
        out = warp(tensor, theta, mode="nearest")
        assert out.dtype == tensor.dtype and out.shape == tensor.shape
        reference = expected > 1 if tensor.dtype == torch.bool else expected
        np.testing.assert_array_equal(out.numpy(), reference.astype(out.numpy().dtype))


def test_no_warp_is_the_identity_and_the_flip_is_the_h_axis():
    image = torch.rand(4, 3, 8, 6)
    torch.manual_seed(2)
    theta = random_affine(4, (8, 6), WarpRange(degrees=0, scale=(1, 1), translate=0, flip=False))
    torch.testing.assert_close(warp(image, theta), image, atol=1e-6, rtol=0)
    theta = random_affine(64, (8, 6), WarpRange(degrees=0, scale=(1, 1), translate=0, flip=True))
    flipped = theta[:, 1, 1] < 0
    assert 10 < int(flipped.sum()) < 54  # about half
    image = torch.rand(64, 1, 8, 6)
    out = warp(image, theta)
    torch.testing.assert_close(out[flipped], image[flipped].flip(-2), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[~flipped], image[~flipped], atol=1e-6, rtol=0)


def test_warps_are_rotations_and_zooms_in_pixel_units_within_their_range():
    """On a non-square slice the normalised matrix is anisotropic; back in pixel units it is zoom times a rotation
    (times the flip), the zoom and the angle within range, and the shift within range of each side."""
    height, width = 24, 40
    warps = WarpRange(degrees=25, scale=(0.8, 1.25), translate=0.1)
    torch.manual_seed(3)
    theta = random_affine(200, (height, width), warps).double()
    half = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    linear = theta[:, :, :2] * half[:, None] / half[None, :]  # N^-1 L N, N = diag(2 / W, 2 / H)
    zoom = torch.linalg.det(linear).abs().sqrt()
    gram = linear.transpose(1, 2) @ linear
    torch.testing.assert_close(gram, zoom[:, None, None] ** 2 * torch.eye(2, dtype=torch.float64).expand_as(gram))
    assert 0.8 - 1e-6 <= float(zoom.min()) and float(zoom.max()) <= 1.25 + 1e-6
    angle = torch.atan2(linear[:, 1, 0], linear[:, 0, 0]).abs()
    assert float(angle.max()) <= math.radians(25) + 1e-6 and float(angle.max()) > math.radians(20)
    assert float(theta[:, :, 2].abs().max()) <= 0.2 + 1e-6


def test_the_same_warp_at_every_resolution():
    """A feature map at half resolution, warped, is the half-resolution of the warped image (smooth content)."""
    rows, cols = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 48), indexing="ij")
    image = (torch.sin(3 * rows + 1) * torch.cos(2 * cols))[None, None].repeat(2, 1, 1, 1)
    torch.manual_seed(4)
    theta = random_affine(2, (32, 48), WarpRange(translate=0.0, scale=(1.0, 1.0)))
    coarse_then_warped = warp(F.avg_pool2d(image, 2), theta)
    warped_then_coarse = F.avg_pool2d(warp(image, theta), 2)
    inside = warp(torch.ones_like(image[:, :, ::2, ::2]), theta) > 0.999  # away from the zero padding
    error = (coarse_then_warped - warped_then_coarse)[inside].abs().max()
    assert float(error) < 0.02


def test_draws_are_reproducible_under_a_seed():
    torch.manual_seed(5)
    first = random_affine(3, (10, 12), WarpRange())
    torch.manual_seed(5)
    assert torch.equal(first, random_affine(3, (10, 12), WarpRange()))


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="scale must be"):
        WarpRange(scale=(1.2, 0.9))
    with pytest.raises(ValueError, match="translate must be"):
        WarpRange(translate=1.0)
    with pytest.raises(ValueError, match="degrees must be"):
        WarpRange(degrees=-1)
    with pytest.raises(ValueError, match=r"theta must have shape \(2, 2, 3\)"):
        warp(torch.rand(2, 1, 5, 5), torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match="mode must be"):
        warp(torch.rand(1, 1, 5, 5), torch.zeros(1, 2, 3), mode="bicubic")
    with pytest.raises(ValueError, match="batch >= 1"):
        random_affine(0, (5, 5), WarpRange())
