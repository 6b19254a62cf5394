from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ds3kit.data.nifti import Volume, load_volume, resample_to_reference, save_volume
from ds3kit.errors import InputError

from .conftest import write_nifti


def _random_volume(shape=(13, 11, 7), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1.0, 100.0, size=shape).astype(np.float32)


def _oblique_affine(angle_deg: float, zooms=(1.1, 0.9, 2.3), shift=(3.0, -2.0, 5.0)) -> np.ndarray:
    angle = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(zooms)
    affine[:3, 3] = shift
    return affine


def test_round_trip_keeps_data_affine_and_both_forms(tmp_path):
    data = _random_volume()
    affine = _oblique_affine(17.0)
    path = tmp_path / "out.nii.gz"
    save_volume(path, data, affine)
    image = nib.load(path)
    assert image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.header.get_sform(), affine, atol=1e-5)
    np.testing.assert_allclose(image.header.get_qform(), affine, atol=1e-5)
    assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
    volume = load_volume(path)
    assert volume.data.dtype == np.float32 and volume.data.shape == data.shape
    np.testing.assert_array_equal(volume.data, data)
    assert volume.path == path
    assert not [p for p in tmp_path.iterdir() if p.name != "out.nii.gz"]  # no temporary left behind


def test_load_applies_header_scaling(tmp_path):
    raw = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    image = nib.Nifti1Image(raw, np.eye(4))
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, tmp_path / "scaled.nii")
    np.testing.assert_allclose(load_volume(tmp_path / "scaled.nii").data, raw * 0.5 + 10.0)


def test_trailing_singleton_4d_is_squeezed(tmp_path):
    data = _random_volume()
    path = write_nifti(tmp_path / "four.nii.gz", data[..., None])
    assert load_volume(path).data.shape == data.shape


@pytest.mark.parametrize("shape", [(9, 8), (9, 8, 7, 2)])
def test_not_3d_is_rejected(tmp_path, shape):
    path = write_nifti(tmp_path / "bad.nii.gz", np.random.default_rng(0).random(shape).astype(np.float32))
    with pytest.raises(InputError, match=r"bad\.nii\.gz.*3-D"):
        load_volume(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_is_rejected(tmp_path, bad):
    data = _random_volume()
    data[3, 4, 5] = bad
    path = write_nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(InputError, match=r"nan\.nii\.gz.*1 non-finite"):
        load_volume(path)


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_constant_volume_is_rejected_unless_allowed(tmp_path, value):
    path = write_nifti(tmp_path / "flat.nii.gz", np.full((7, 8, 9), value, np.float32))
    with pytest.raises(InputError, match=r"flat\.nii\.gz.*empty"):
        load_volume(path)
    assert load_volume(path, allow_constant=True).data.max() == value


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nowhere\.nii\.gz.*does not exist"):
        load_volume(tmp_path / "nowhere.nii.gz")


def test_not_nifti(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image" * 50))
    with pytest.raises(InputError, match=r"notes\.nii\.gz.*NIfTI"):
        load_volume(path)
    text = tmp_path / "plain.nii"
    text.write_text("hello")
    with pytest.raises(InputError, match=r"plain\.nii"):
        load_volume(text)


def test_truncated_gzip(tmp_path):
    path = write_nifti(tmp_path / "whole.nii.gz", _random_volume((21, 23, 17)))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut\.nii\.gz.*truncated or corrupt"):
        load_volume(cut)


def test_unreadable_file(tmp_path, monkeypatch):
    path = write_nifti(tmp_path / "locked.nii.gz", _random_volume())
    path.chmod(0)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root reads any file: simulate the refusal instead
        monkeypatch.setattr("ds3kit.data.nifti.os.access", lambda *args, **kwargs: False)
    try:
        with pytest.raises(InputError, match=r"locked\.nii\.gz.*not readable"):
            load_volume(path)
    finally:
        path.chmod(0o600)


def test_save_into_missing_directory_writes_nothing(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        save_volume(tmp_path / "missing" / "out.nii.gz", _random_volume(), np.eye(4))
    assert not (tmp_path / "missing").exists()


def test_save_uint8_labels(tmp_path):
    labels = np.random.default_rng(1).choice([0, 1, 2, 4], size=(9, 10, 11)).astype(np.uint8)
    save_volume(tmp_path / "seg.nii.gz", labels, np.eye(4), dtype=np.uint8)
    image = nib.load(tmp_path / "seg.nii.gz")
    assert image.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels)


def _volume(data, affine, name="v") -> Volume:
    return Volume(data=data, affine=affine, header=nib.Nifti1Header(), path=Path(name))


def test_resample_identity_fast_path_returns_data_unchanged():
    data = _random_volume()
    affine = _oblique_affine(5.0)
    out = resample_to_reference(_volume(data, affine), _volume(np.zeros_like(data), affine + 1e-6))
    assert out.data is data


def test_resample_integer_shift_matches_array_shift():
    data = _random_volume((15, 13, 9), seed=2)
    reference_affine = np.eye(4)
    source_affine = np.eye(4)
    source_affine[:3, 3] = (2.0, -1.0, 3.0)  # source voxel i sits at world i + shift
    out = resample_to_reference(_volume(data, source_affine), _volume(np.zeros_like(data), reference_affine))
    # reference voxel j reads source voxel j - shift
    np.testing.assert_allclose(out.data[2:, :-1, 3:], data[:-2, 1:, :-3], atol=1e-5)
    assert np.all(out.data[:2] == 0)


def test_resample_matches_independent_map_coordinates():
    rng = np.random.default_rng(4)
    source = ndimage.gaussian_filter(rng.random((31, 29, 13)), 1.5).astype(np.float32)
    source_affine = _oblique_affine(20.0, zooms=(0.9, 1.0, 2.5), shift=(-12.0, -14.0, -15.0))
    reference_affine = _oblique_affine(-8.0, zooms=(1.3, 1.1, 2.0), shift=(-10.0, -9.0, -10.0))
    reference_shape = (23, 27, 11)
    out = resample_to_reference(
        _volume(source, source_affine), _volume(np.zeros(reference_shape, np.float32), reference_affine)
    )
    assert out.data.shape == reference_shape
    np.testing.assert_array_equal(out.affine, reference_affine)
    voxels = np.stack([rng.integers(0, n, 60) for n in reference_shape])
    world = reference_affine @ np.vstack([voxels, np.ones(60)])
    source_voxels = (np.linalg.inv(source_affine) @ world)[:3]
    expected = ndimage.map_coordinates(source.astype(np.float64), source_voxels, order=1, mode="constant", cval=0.0)
    np.testing.assert_allclose(out.data[tuple(voxels)], expected, atol=1e-4)
    assert (expected != 0).sum() > 20  # the check compares real samples, not the empty outside


def test_resample_without_overlap_is_rejected():
    data = _random_volume()
    far = np.eye(4)
    far[:3, 3] = 1000.0
    with pytest.raises(InputError, match="does not overlap"):
        resample_to_reference(_volume(data, far, "far.nii.gz"), _volume(data, np.eye(4), "ref.nii.gz"))


def test_resample_rejects_bad_order():
    data = _random_volume()
    with pytest.raises(ValueError, match="order"):
        resample_to_reference(_volume(data, np.eye(4)), _volume(data, np.eye(4)), order=7)
