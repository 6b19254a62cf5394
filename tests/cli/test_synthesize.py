"""`ds3kit synthesize` on the real TCGA session (modalities on different grids) and on bad input."""

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ds3kit.cli import main
from ds3kit.inference import save_generator
from ds3kit.models import build_generator

TCGA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tcga-fg-6692"
needs_tcga = pytest.mark.skipif(not TCGA.is_dir(), reason=f"the TCGA session is not at {TCGA}")


def tcga(modality: str) -> Path:
    return TCGA / f"TCGA-FG-6692_{modality}.nii.gz"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "student.pt"
    save_generator(path, build_generator("tiny"), method="test", role="student")
    return path


def synthesize(checkpoint: Path, out: Path, **paths: Path) -> int:
    files = {"t1": tcga("t1"), "t2": tcga("t2"), "flair": tcga("flair"), **paths}
    return main([
        "synthesize", "--t1", str(files["t1"]), "--t2", str(files["t2"]), "--flair", str(files["flair"]),
        "--checkpoint", str(checkpoint), "--out", str(out), "--no-progress", "--batch-size", "8",
    ])


@needs_tcga
def test_tcga_session_is_synthesized_on_the_t1_grid(checkpoint, tmp_path):
    out = tmp_path / "t1ce.nii.gz"
    assert synthesize(checkpoint, out) == 0
    written, t1 = nib.load(out), nib.load(tcga("t1"))
    assert written.shape == t1.shape == (256, 224, 26)
    np.testing.assert_allclose(written.affine, t1.affine, atol=1e-5)
    assert written.get_data_dtype() == np.float32
    data = np.asarray(written.dataobj)
    assert np.isfinite(data).all() and 0.0 <= data.min() and data.max() <= 1.0
    assert (data > 0).mean() > 0.05, "the brain region must receive a synthesis"
    assert [p.name for p in tmp_path.iterdir()] == ["t1ce.nii.gz"], "no temporary file may remain"


@needs_tcga
def test_truncated_input_gives_one_line_error_and_no_output(checkpoint, tmp_path, capsys):
    broken = tmp_path / "t2.nii.gz"
    broken.write_bytes(tcga("t2").read_bytes()[:50_000])
    out = tmp_path / "t1ce.nii.gz"
    assert synthesize(checkpoint, out, t2=broken) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "t2.nii.gz" in err
    assert not out.exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@needs_tcga
@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda d: d / "missing.nii.gz", "missing.nii.gz"),
        (lambda d: _write(d / "notnifti.nii.gz", gzip.compress(b"hello")), "notnifti"),
    ],
)
def test_bad_flair_files(checkpoint, tmp_path, capsys, make_bad, message):
    out = tmp_path / "t1ce.nii.gz"
    assert synthesize(checkpoint, out, flair=make_bad(tmp_path)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@needs_tcga
def test_not_a_generator_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": torch.ones(3)}, bogus)
    out = tmp_path / "t1ce.nii.gz"
    assert synthesize(bogus, out) == 2
    assert "not a ds3kit checkpoint" in capsys.readouterr().err
    assert not out.exists()


@needs_tcga
def test_checkpoint_of_another_architecture(checkpoint, tmp_path, capsys):
    payload = torch.load(checkpoint, weights_only=True)
    payload["config"]["base_channels"] = payload["config"]["base_channels"] * 2
    other = tmp_path / "other.pt"
    torch.save(payload, other)
    assert synthesize(other, tmp_path / "t1ce.nii.gz") == 2
    assert "do not fit the generator architecture" in capsys.readouterr().err


def test_output_directory_must_exist(checkpoint, tmp_path, capsys):
    code = main(["synthesize", "--t1", "a.nii.gz", "--t2", "b.nii.gz", "--flair", "c.nii.gz", "--checkpoint",
                 str(checkpoint), "--out", str(tmp_path / "missing" / "t1ce.nii.gz")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
