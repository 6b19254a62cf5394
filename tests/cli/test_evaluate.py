"""`ds3kit evaluate` on small NIfTI volumes: one JSON line, regions, resampling, errors."""

import json

import nibabel as nib
import numpy as np
import pytest

from ds3kit.cli import main


def _input_flags(paths) -> list[str]:
    """``--t1 T1 --t2 T2 --flair FLAIR`` of a case written by :func:`_phantom_case`."""
    return [flag for m in ("t1", "t2", "flair") for flag in (f"--{m}", str(paths[m]))]


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
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(volumes["pred"]),
                "--target",
                str(volumes["target"]),
                "--seg",
                str(volumes["seg"]),
            ]
        )
        == 0
    )
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
    assert (
        main(["evaluate", "--pred", str(volumes["pred"]), "--target", str(volumes["target"]), "--seg", str(bad_seg)])
        == 2
    )
    assert "differs from the target" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ values and units
def run_json(capsys, *argv):
    code = main(["evaluate", *map(str, argv)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0]), captured.err


def test_values_match_an_independent_computation(volumes, capsys):
    metrics = pytest.importorskip("skimage.metrics")
    result, err = run_json(capsys, "--pred", volumes["pred"], "--target", volumes["target"], "--seg", volumes["seg"])
    assert err == "" and result["scaling"] == "target"
    target = np.asarray(nib.load(volumes["target"]).dataobj, dtype=np.float64)
    pred = np.asarray(nib.load(volumes["pred"]).dataobj, dtype=np.float64)
    brain = target > 0  # skull-stripped: the estimated brain is the support (no holes in this one)
    # Independent: the z-score map (brain mean +- 3 sd -> [0, 1]) by its definition, in float64.
    low, high = target[brain].mean() - 3 * target[brain].std(), target[brain].mean() + 3 * target[brain].std()
    truth = np.where(brain, np.clip((target - low) / (high - low), 0, 1), 0)
    tumour = np.asarray(nib.load(volumes["seg"]).dataobj) > 0
    assert result["brain_voxels"] == int(brain.sum()) and result["tumour_voxels"] == int(tumour.sum())
    assert result["ssim"] == pytest.approx(
        metrics.structural_similarity(
            pred, truth, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        ),
        abs=1e-4,
    )
    assert result["psnr"] == pytest.approx(metrics.peak_signal_noise_ratio(truth, pred, data_range=1.0), rel=1e-4)
    assert result["brain_mse"] == pytest.approx(np.mean((pred - truth)[brain] ** 2), rel=1e-4)
    assert result["tumour_mse"] == pytest.approx(np.mean((pred - truth)[tumour] ** 2), rel=1e-4)


def test_prediction_in_scanner_units_gets_the_targets_map(volumes, tmp_path, capsys):
    # The target itself, in scanner units, as the prediction: the same map on both, a perfect score.
    result, _ = run_json(capsys, "--pred", volumes["target"], "--target", volumes["target"])
    assert result["scaling"] == "target_map_on_both"
    assert result["ssim"] == 1.0 and result["mse"] == 0.0 and result["psnr"] is None  # inf -> null
    # Twice the intensity is NOT rescaled away (no map fitted on the prediction itself).
    data = np.asarray(nib.load(volumes["target"]).dataobj) * 1.3
    brighter = write(tmp_path / "brighter.nii.gz", data)
    result, _ = run_json(capsys, "--pred", brighter, "--target", volumes["target"])
    assert result["brain_mse"] > 1e-3


def test_scaling_none_and_data_range(volumes, tmp_path, capsys):
    target = np.asarray(nib.load(volumes["target"]).dataobj)
    pred = write(tmp_path / "p.nii.gz", target + 10.0 * (target > 0))
    result, _ = run_json(
        capsys, "--pred", pred, "--target", volumes["target"], "--scaling", "none", "--data-range", 1000
    )
    assert result["scaling"] == "none" and result["brain_mse"] == pytest.approx(100.0)
    assert result["brain_psnr"] == pytest.approx(10 * np.log10(1000.0**2 / 100.0))


def test_both_in_unit_range_are_used_as_is(tmp_path, capsys):
    rng = np.random.default_rng(1)
    target = rng.random((13, 15, 12)).astype(np.float32)
    pred = np.clip(target + 0.1, 0, 1)
    result, _ = run_json(
        capsys, "--pred", write(tmp_path / "p.nii", pred), "--target", write(tmp_path / "t.nii", target)
    )
    assert result["scaling"] == "none"
    assert result["mse"] == pytest.approx(float(np.mean((pred.astype(np.float64) - target) ** 2)), rel=1e-5)


def test_resampled_prediction_scores_like_the_original(volumes, tmp_path, capsys):
    reference, _ = run_json(capsys, "--pred", volumes["pred"], "--target", volumes["target"])
    data = np.pad(np.asarray(nib.load(volumes["pred"]).dataobj), ((0, 3), (2, 0), (0, 0)))
    affine = np.eye(4)
    affine[1, 3] = -2.0  # two voxels of padding before y = 0: the same world placement on a larger grid
    result, err = run_json(
        capsys, "--pred", write(tmp_path / "big.nii.gz", data, affine), "--target", volumes["target"]
    )
    assert result["resampled"] is True and "resampled onto the target's grid" in err
    for key in ("ssim", "psnr", "mse", "brain_ssim", "brain_mse"):
        assert result[key] == pytest.approx(reference[key], rel=1e-5), key


def test_seg_without_tumour_and_explicit_mask(volumes, tmp_path, capsys):
    target = np.asarray(nib.load(volumes["target"]).dataobj)
    empty_seg = write(tmp_path / "seg0.nii.gz", np.zeros_like(target))
    mask = np.zeros_like(target)
    mask[5:15, 6:16, 4:14] = 1
    result, _ = run_json(
        capsys,
        "--pred",
        volumes["pred"],
        "--target",
        volumes["target"],
        "--seg",
        empty_seg,
        "--mask",
        write(tmp_path / "mask.nii.gz", mask),
    )
    assert result["tumour_voxels"] == 0 and not any(
        key.startswith("tumour_") and key != "tumour_voxels" for key in result
    )
    assert result["brain_voxels"] == 1000


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data-range", "0"], "--data-range must be a finite number > 0"),
        (["--mask", "EMPTY"], "the brain mask is empty"),
        (["--mask", "CORRUPT"], "not a readable NIfTI image"),
        (["--target", "TINY"], "SSIM needs every spatial side >= 11"),
    ],
)
def test_bad_inputs_give_one_line_and_exit_2(volumes, tmp_path, capsys, extra, message):
    files = {
        "EMPTY": write(tmp_path / "empty.nii.gz", np.zeros((24, 26, 20))),
        "CORRUPT": tmp_path / "corrupt.nii.gz",
        "TINY": write(tmp_path / "tiny.nii.gz", np.arange(8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10)),
    }
    files["CORRUPT"].write_bytes(b"\x1f\x8b not really a gzip file")
    argv = ["evaluate", "--pred", str(volumes["pred"]), "--target", str(volumes["target"])]
    argv += [str(files.get(item, item)) for item in extra]
    if "--target" in extra:
        argv = ["evaluate", "--pred", str(files["TINY"]), "--target", str(files["TINY"])]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ds3kit evaluate: error:") and message in lines[0]


def _phantom_case(tmp_path):
    from ds3kit.data.phantom import make_phantom_case, phantom_affine

    shape = (30, 34, 14)
    case = make_phantom_case(shape, seed=4)
    affine = phantom_affine(shape)
    paths = {name: tmp_path / f"{name}.nii.gz" for name in ("t1", "t2", "flair", "t1ce", "seg")}
    for name, path in paths.items():
        nib.save(nib.Nifti1Image(case[name].astype(np.float32), affine), str(path))
    return paths


def test_baselines_beside_the_prediction(tmp_path, capsys):
    import torch

    from ds3kit.baselines import LinearBaseline
    from ds3kit.checkpoint import save_generator
    from ds3kit.data import load_session
    from ds3kit.metrics import psnr
    from ds3kit.models import build_generator

    paths = _phantom_case(tmp_path)
    session = load_session(paths["t1"], paths["t2"], paths["flair"], t1ce=paths["t1ce"], seg=paths["seg"])
    # A prediction that is worse than copying T1: T1 with noise.
    rng = np.random.default_rng(1)
    noisy = np.clip(session.inputs[0] + 0.2 * rng.standard_normal(session.shape), 0, 1) * session.brain_mask
    write(tmp_path / "pred.nii.gz", noisy, session.affine)
    line = LinearBaseline(weights=(0.5, -0.1, 0.2), intercept=0.1)
    save_generator(
        tmp_path / "g.pt",
        build_generator("tiny"),
        linear_baseline={"weights": list(line.weights), "intercept": line.intercept},
    )
    argv = [
        "evaluate",
        "--pred",
        str(tmp_path / "pred.nii.gz"),
        "--target",
        str(paths["t1ce"]),
        "--seg",
        str(paths["seg"]),
        *_input_flags(paths),
        "--checkpoint",
        str(tmp_path / "g.pt"),
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["baselines"]) == {"copy-T1", "linear"} and result["beats_copy_t1"] is False

    # Independent: the same scores straight from the session (same grid, same normalisation as training).
    def brain_psnr(volume):
        return float(
            psnr(
                torch.from_numpy(volume)[None, None],
                torch.from_numpy(session.target)[None, None],
                mask=torch.from_numpy(session.brain_mask)[None, None],
            )
        )

    assert result["baselines"]["copy-T1"]["brain_psnr"] == pytest.approx(brain_psnr(session.inputs[0]), abs=1e-3)
    assert result["baselines"]["linear"]["brain_psnr"] == pytest.approx(brain_psnr(line(session)), abs=1e-3)


def test_baseline_flags_are_checked(tmp_path, capsys):
    paths = _phantom_case(tmp_path)
    base = ["evaluate", "--pred", str(paths["t1"]), "--target", str(paths["t1ce"])]
    assert main([*base, "--t2", str(paths["t2"])]) == 2
    assert "--t2 given without --t1" in capsys.readouterr().err
    assert main([*base, "--t1", str(paths["t1"]), "--t2", str(paths["t2"])]) == 2
    assert "--t2 and --flair go together" in capsys.readouterr().err
    assert (
        main(
            [
                *base,
                *_input_flags(paths),
                "--checkpoint",
                str(tmp_path / "missing.pt"),
            ]
        )
        == 2
    )


def test_segmenter_adds_dice_for_the_prediction_and_both_reference_rows(tmp_path, capsys):
    import torch

    from ds3kit.data import load_session
    from ds3kit.segment import Segmenter, reference_t1ce, save_segmenter, session_dice

    paths = _phantom_case(tmp_path)
    torch.manual_seed(0)
    segmenter = Segmenter(channels=(4, 8), strides=(2,), num_res_units=0)
    save_segmenter(tmp_path / "seg.pt", segmenter, train_cases=["other"], steps=0)
    session = load_session(paths["t1"], paths["t2"], paths["flair"], t1ce=paths["t1ce"], seg=paths["seg"])
    write(tmp_path / "pred.nii.gz", session.inputs[1], session.affine)  # any [0, 1] volume on the grid
    base = [
        "evaluate",
        "--pred",
        str(tmp_path / "pred.nii.gz"),
        "--target",
        str(paths["t1ce"]),
        "--segmenter",
        str(tmp_path / "seg.pt"),
    ]
    assert main(base) == 2
    assert "--segmenter needs --seg, --t1, --t2, --flair" in capsys.readouterr().err
    assert (
        main(
            [
                *base,
                "--seg",
                str(paths["seg"]),
                *_input_flags(paths),
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    segmenter.eval()
    expected_real = session_dice(segmenter, session, reference_t1ce(session, "real_t1ce"))
    expected_pred = session_dice(segmenter, session, session.inputs[1])
    for key in ("dice_et", "dice_tc", "dice_wt"):
        assert result[key] == pytest.approx(expected_pred[key], abs=1e-6)
        assert result["baselines"]["real T1ce (segmenter)"][key] == pytest.approx(expected_real[key], abs=1e-6)
        assert key in result["baselines"]["copy-T1"]

    # A segmenter trained without T1ce cannot judge a synthetic one: refused, by name.
    save_segmenter(tmp_path / "inputs-only.pt", segmenter, train_cases=["other"], steps=0, t1ce_channel="t1")
    flags = [*base[:-1], str(tmp_path / "inputs-only.pt"), "--seg", str(paths["seg"]), *_input_flags(paths)]
    assert main(flags) == 2
    assert "inputs-only.pt: the segmenter was trained without T1ce" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the reliability map
def _checkpoint_with_discriminator(path, *, linear: bool = True, in_channels: int = 4):
    import torch

    from ds3kit.checkpoint import save_generator
    from ds3kit.models import build_discriminator, build_generator

    torch.manual_seed(0)
    discriminator = build_discriminator("tiny", in_channels=in_channels)
    with torch.no_grad():
        discriminator.model[-1].bias.add_(0.5)
    extra = {"linear_baseline": {"weights": [0.5, -0.1, 0.2], "intercept": 0.1}} if linear else {}
    save_generator(path, build_generator("tiny"), discriminator=discriminator, gan_mode="bce", **extra)
    return discriminator.eval()


@pytest.mark.parametrize("in_channels", [4, 1])
def test_reliability_correlations_match_an_independent_computation(tmp_path, capsys, in_channels):
    from ds3kit.data import brain_mask, load_session
    from ds3kit.reliability import edge_map, reliability_volume

    paths = _phantom_case(tmp_path)
    session = load_session(paths["t1"], paths["t2"], paths["flair"], t1ce=paths["t1ce"])
    rng = np.random.default_rng(2)
    pred = np.clip(session.target + 0.1 * rng.standard_normal(session.shape), 0, 1) * session.brain_mask
    write(tmp_path / "pred.nii.gz", pred, session.affine)
    discriminator = _checkpoint_with_discriminator(tmp_path / "g.pt", in_channels=in_channels)
    result, _ = run_json(
        capsys,
        "--pred",
        tmp_path / "pred.nii.gz",
        "--target",
        paths["t1ce"],
        "--seg",
        paths["seg"],
        *_input_flags(paths),
        "--checkpoint",
        tmp_path / "g.pt",
    )
    assert set(result["baselines"]) == {"copy-T1", "linear"}  # the existing report is all still there
    reliability = result["reliability"]
    assert set(reliability) == {"discriminator", "edge_map", "beats_edge_map"}

    # Independent: the target normalised by its mean +- 3 sd in its own brain, numpy's Pearson correlation.
    target = np.asarray(nib.load(paths["t1ce"]).dataobj, dtype=np.float64)
    brain = brain_mask([target])
    low, high = target[brain].mean() - 3 * target[brain].std(), target[brain].mean() + 3 * target[brain].std()
    truth = np.where(brain, np.clip((target - low) / (high - low), 0, 1), 0)
    error = np.abs(np.asarray(nib.load(tmp_path / "pred.nii.gz").dataobj, dtype=np.float64) - truth)
    tumour = np.asarray(nib.load(paths["seg"]).dataobj) > 0
    inputs = load_session(paths["t1"], paths["t2"], paths["flair"])
    maps = {
        "discriminator": reliability_volume(
            pred.astype(np.float32), discriminator, inputs.inputs, inputs.brain_mask, gan_mode="bce"
        ),
        "edge_map": edge_map(pred.astype(np.float32), inputs.brain_mask),
    }
    for name, volume in maps.items():
        for region, mask in (("brain", brain), ("tumour", tumour)):
            expected = np.corrcoef(volume[mask].astype(np.float64), error[mask])[0, 1]
            assert reliability[name][region] == pytest.approx(expected, abs=1e-5), (name, region)
    assert reliability["beats_edge_map"] == (reliability["discriminator"]["brain"] > reliability["edge_map"]["brain"])


def test_reliability_without_linear_baseline_or_tumour(tmp_path, capsys):
    from ds3kit.data import load_session

    paths = _phantom_case(tmp_path)
    session = load_session(paths["t1"], paths["t2"], paths["flair"])
    write(tmp_path / "pred.nii.gz", session.inputs[0], session.affine)  # copy-T1 as the prediction, in [0, 1]
    _checkpoint_with_discriminator(tmp_path / "g.pt", linear=False)
    result, err = run_json(
        capsys,
        "--pred",
        tmp_path / "pred.nii.gz",
        "--target",
        paths["t1ce"],
        *_input_flags(paths),
        "--checkpoint",
        tmp_path / "g.pt",
    )
    assert "records no linear baseline; that row is left out" in err
    assert set(result["baselines"]) == {"copy-T1"}
    assert set(result["reliability"]["discriminator"]) == {"brain"} == set(result["reliability"]["edge_map"])


def test_no_reliability_without_a_discriminator_or_with_scanner_units(tmp_path, capsys):
    from ds3kit.checkpoint import save_generator
    from ds3kit.models import build_generator

    paths = _phantom_case(tmp_path)
    argv = ["--target", paths["t1ce"], "--t1", paths["t1"], "--t2", paths["t2"], "--flair", paths["flair"]]
    save_generator(
        tmp_path / "old.pt", build_generator("tiny"), linear_baseline={"weights": [0.5, -0.1, 0.2], "intercept": 0.1}
    )
    result, _ = run_json(capsys, "--pred", paths["t1"], *argv, "--checkpoint", tmp_path / "old.pt")
    assert "reliability" not in result and set(result["baselines"]) == {"copy-T1", "linear"}
    _checkpoint_with_discriminator(tmp_path / "g.pt")
    scanner = np.asarray(nib.load(paths["t1ce"]).dataobj)
    assert scanner.max() > 1
    result, err = run_json(capsys, "--pred", paths["t1ce"], *argv, "--checkpoint", tmp_path / "g.pt")
    assert "reliability" not in result and "the reliability map is left out" in err
    save_generator(tmp_path / "bare.pt", build_generator("tiny"))
    assert (
        main(["evaluate", "--pred", str(paths["t1"]), *map(str, argv), "--checkpoint", str(tmp_path / "bare.pt")]) == 2
    )
    assert "records no linear baseline" in capsys.readouterr().err


def test_reliability_on_a_target_grid_other_than_the_t1_grid(tmp_path, capsys):
    from ds3kit.data import load_session

    paths = _phantom_case(tmp_path)
    session = load_session(paths["t1"], paths["t2"], paths["flair"])
    rng = np.random.default_rng(3)
    write(
        tmp_path / "pred.nii.gz",
        np.clip(session.inputs[0] + 0.1 * rng.random(session.shape), 0, 1) * session.brain_mask,
        session.affine,
    )
    _checkpoint_with_discriminator(tmp_path / "g.pt")
    argv = [
        "--pred",
        tmp_path / "pred.nii.gz",
        "--seg",
        paths["seg"],
        *_input_flags(paths),
        "--checkpoint",
        tmp_path / "g.pt",
    ]
    reference, _ = run_json(capsys, *argv, "--target", paths["t1ce"])
    # The same target, world placement and segmentation, on a grid padded by two voxels before y = 0.
    image = nib.load(paths["t1ce"])
    affine = image.affine.copy()
    affine[:3, 3] -= 2 * affine[:3, 1]
    padded = write(tmp_path / "t1ce_big.nii.gz", np.pad(np.asarray(image.dataobj), ((0, 0), (2, 0), (0, 0))), affine)
    seg = write(
        tmp_path / "seg_big.nii.gz",
        np.pad(np.asarray(nib.load(paths["seg"]).dataobj), ((0, 0), (2, 0), (0, 0))),
        affine,
    )
    argv[argv.index(paths["seg"])] = seg
    result, err = run_json(capsys, *argv, "--target", padded)
    assert "resampled onto the target's grid" in err
    for name in ("discriminator", "edge_map"):
        for region in ("brain", "tumour"):
            assert result["reliability"][name][region] == pytest.approx(
                reference["reliability"][name][region], abs=1e-5
            ), (name, region)
