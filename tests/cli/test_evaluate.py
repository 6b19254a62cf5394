"""`ds3kit evaluate` on small NIfTI volumes: one JSON line, regions, resampling, errors."""

import json

import nibabel as nib
import numpy as np
import pytest

from ds3kit.cli import main


def write(path, data, affine=None):
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def volumes(tmp_path):
    rng = np.random.default_rng(0)
    target = np.zeros((24, 26, 20), np.float32)
    target[3:21, 4:22, 2:18] = rng.random((18, 18, 16)) * 800 + 100  # scanner units, zero background
    seg = np.zeros_like(target)
    seg[8:14, 9:15, 6:12] = 4
    pred = np.clip(target / 900 + 0.05 * rng.standard_normal(target.shape), 0, 1) * (target > 0)
    return {
        "target": write(tmp_path / "t1ce.nii.gz", target),
        "pred": write(tmp_path / "pred.nii.gz", pred),
        "seg": write(tmp_path / "seg.nii.gz", seg),
    }


def test_one_json_line_with_regions(volumes, capsys):
    assert main(["evaluate", "--pred", str(volumes["pred"]), "--target", str(volumes["target"]),
                 "--seg", str(volumes["seg"])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert {"ssim", "psnr", "brain_ssim", "brain_mse", "tumour_psnr", "tumour_mse"} <= set(result)
    assert result["resampled"] is False and 0 < result["brain_ssim"] < 1 and result["tumour_mse"] > 0


def test_identical_volumes_score_perfectly(volumes, capsys):
    assert main(["evaluate", "--pred", str(volumes["target"]), "--target", str(volumes["target"])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["brain_ssim"] == pytest.approx(1.0) and result["brain_mse"] == 0.0


def test_prediction_on_another_grid_is_resampled(volumes, tmp_path, capsys):
    image = nib.load(volumes["pred"])
    shifted = np.eye(4)
    shifted[0, 3] = 0.0  # same world placement, but padded by one voxel on a larger grid
    data = np.pad(np.asarray(image.dataobj), ((0, 2), (0, 0), (0, 0)))
    other = write(tmp_path / "other.nii.gz", data, shifted)
    assert main(["evaluate", "--pred", str(other), "--target", str(volumes["target"])]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["resampled"] is True and "resampled onto" in captured.err


def test_missing_and_mismatched_files(volumes, tmp_path, capsys):
    assert main(["evaluate", "--pred", str(tmp_path / "nope.nii.gz"), "--target", str(volumes["target"])]) == 2
    assert "nope.nii.gz" in capsys.readouterr().err
    bad_seg = write(tmp_path / "badseg.nii.gz", np.ones((5, 5, 5)))
    assert main(["evaluate", "--pred", str(volumes["pred"]), "--target", str(volumes["target"]),
                 "--seg", str(bad_seg)]) == 2
    assert "differs from the target" in capsys.readouterr().err
