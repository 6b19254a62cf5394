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


def synthesize(checkpoint: Path, out: Path, *extra: str, **paths: Path) -> int:
    files = {"t1": tcga("t1"), "t2": tcga("t2"), "flair": tcga("flair"), **paths}
    return main(
        [
            "synthesize",
            "--t1",
            str(files["t1"]),
            "--t2",
            str(files["t2"]),
            "--flair",
            str(files["flair"]),
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--no-progress",
            "--batch-size",
            "8",
            *extra,
        ]
    )


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
def test_flips_average_the_flipped_passes_and_default_to_all_four(checkpoint, tmp_path):
    from ds3kit.data import load_session
    from ds3kit.inference import load_generator, synthesize_volume

    session = load_session(tcga("t1"), tcga("t2"), tcga("flair"))
    generator, _ = load_generator(checkpoint)
    for flips in ("none", "all"):
        out = tmp_path / f"{flips}.nii.gz"
        assert synthesize(checkpoint, out, "--flips", flips) == 0
        expected = synthesize_volume(generator, session.inputs, brain_mask=session.brain_mask, flips=flips)
        np.testing.assert_allclose(np.asarray(nib.load(out).dataobj), expected, rtol=0, atol=1e-5)
    assert synthesize(checkpoint, tmp_path / "default.nii.gz") == 0
    default = np.asarray(nib.load(tmp_path / "default.nii.gz").dataobj)
    # (This untrained residual generator is close to flip-equivariant, so "all" and "none" nearly agree here; the
    # averaging itself is tested against a reference in tests/test_inference.py.)
    np.testing.assert_array_equal(default, np.asarray(nib.load(tmp_path / "all.nii.gz").dataobj))


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
    code = main(
        [
            "synthesize",
            "--t1",
            "a.nii.gz",
            "--t2",
            "b.nii.gz",
            "--flair",
            "c.nii.gz",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(tmp_path / "missing" / "t1ce.nii.gz"),
        ]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- --difficulty: the reliability map
@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict[str, Path]:
    from ds3kit.data.phantom import make_phantom_case, phantom_affine

    shape = (30, 27, 9)  # odd in-plane sides
    case = make_phantom_case(shape, seed=2)
    folder = tmp_path_factory.mktemp("phantom")
    paths = {name: folder / f"{name}.nii.gz" for name in ("t1", "t2", "flair")}
    for name, path in paths.items():
        nib.save(nib.Nifti1Image(case[name].astype(np.float32), phantom_affine(shape)), str(path))
    return paths


def synthesize_phantom(phantom: dict[str, Path], checkpoint: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "synthesize",
            "--t1",
            str(phantom["t1"]),
            "--t2",
            str(phantom["t2"]),
            "--flair",
            str(phantom["flair"]),
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ]
    )


@pytest.mark.parametrize("in_channels", [4, 1])
def test_difficulty_writes_the_reliability_map_on_the_t1_grid(phantom, tmp_path, capsys, in_channels):
    from ds3kit.checkpoint import load_discriminator
    from ds3kit.data import load_session
    from ds3kit.models import build_discriminator
    from ds3kit.reliability import reliability_volume

    torch.manual_seed(0)
    discriminator = build_discriminator("tiny", in_channels=in_channels)
    with torch.no_grad():
        discriminator.model[-1].bias.add_(0.5)  # scores around 0.5: a map that is not all 1
    path = tmp_path / "student.pt"
    save_generator(path, build_generator("tiny"), discriminator=discriminator, gan_mode="lsgan", role="student")
    out, difficulty = tmp_path / "t1ce.nii.gz", tmp_path / "difficulty.nii.gz"
    assert synthesize_phantom(phantom, path, out, "--difficulty", str(difficulty)) == 0, capsys.readouterr().err
    assert "reliability map" in capsys.readouterr().err
    written, t1 = nib.load(difficulty), nib.load(phantom["t1"])
    assert written.shape == t1.shape and written.get_data_dtype() == np.float32
    np.testing.assert_allclose(written.affine, t1.affine, atol=1e-6)
    data = np.asarray(written.dataobj)
    session = load_session(phantom["t1"], phantom["t2"], phantom["flair"])
    prediction = np.asarray(nib.load(out).dataobj)
    expected = reliability_volume(prediction, load_discriminator(path), session.inputs, session.brain_mask)
    np.testing.assert_allclose(data, expected, atol=1e-6)
    assert not data[~session.brain_mask].any() and 0.0 <= data.min() and data.max() <= 1.0
    assert data[session.brain_mask].std() > 0.01
    assert sorted(p.name for p in tmp_path.iterdir()) == ["difficulty.nii.gz", "student.pt", "t1ce.nii.gz"]


def test_difficulty_without_a_discriminator_writes_nothing(phantom, checkpoint, tmp_path, capsys, monkeypatch):
    import ds3kit.inference

    def must_not_run(*args, **kwargs):
        raise AssertionError("synthesized before checking the checkpoint")

    monkeypatch.setattr(ds3kit.inference, "synthesize_volume", must_not_run)
    out, difficulty = tmp_path / "t1ce.nii.gz", tmp_path / "difficulty.nii.gz"
    assert synthesize_phantom(phantom, checkpoint, out, "--difficulty", str(difficulty)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ds3kit synthesize: error: --difficulty:")
    assert "holds no discriminator" in err and "predates" in err and "not trained with one" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name, message",
    [
        ("difficulty.png", "expected a .nii or .nii.gz path"),
        ("missing/d.nii.gz", "does not exist"),
        ("t1ce.nii.gz", "the same path as --out"),
    ],
)
def test_difficulty_path_is_checked(phantom, checkpoint, tmp_path, capsys, name, message):
    out = tmp_path / "t1ce.nii.gz"
    assert synthesize_phantom(phantom, checkpoint, out, "--difficulty", str(tmp_path / name)) == 2
    err = capsys.readouterr().err
    assert "--difficulty" in err and message in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ the calibration
def test_the_checkpoints_calibration_is_applied_unless_no_calibrate(phantom, tmp_path, capsys):
    torch.manual_seed(0)
    generator = build_generator("tiny")
    source = np.linspace(0.0, 1.0, generator.calibration.source.numel())
    generator.calibration.set_knots(source, 0.1 + 0.8 * source)  # a line: exact between the knots
    calibrated = tmp_path / "calibrated.pt"
    save_generator(calibrated, generator, calibration={"flips": "all", "fitted": True})
    outs = {name: tmp_path / f"{name}.nii.gz" for name in ("default", "raw", "lr")}
    assert synthesize_phantom(phantom, calibrated, outs["default"]) == 0
    assert synthesize_phantom(phantom, calibrated, outs["raw"], "--no-calibrate") == 0
    assert "fitted after" not in capsys.readouterr().err
    shipped, raw = (np.asarray(nib.load(outs[name]).dataobj) for name in ("default", "raw"))
    brain = raw > 0
    assert brain.any() and (shipped[~brain] == 0).all()
    np.testing.assert_allclose(shipped[brain], 0.1 + 0.8 * raw[brain], atol=1e-5)
    assert synthesize_phantom(phantom, calibrated, outs["lr"], "--flips", "lr") == 0
    assert "fitted after --flips all, and this synthesis runs --flips lr" in capsys.readouterr().err
