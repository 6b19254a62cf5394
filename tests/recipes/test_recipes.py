"""End-to-end runs of the recipes in their --smoke configuration (8 steps on a small phantom cohort)."""

import json

import numpy as np
import pytest
import torch
from _recipes import load_recipe

from ds3kit.data import load_brats_case
from ds3kit.inference import load_generator


def smoke(recipe: str, cohort, out, *extra: str) -> int:
    return load_recipe(recipe).main(["--smoke", "--data", str(cohort), "--out", str(out), "--no-progress", *extra])


def test_ds3net_smoke_writes_the_whole_run_directory(small_cohort, tmp_path, capsys):
    out = tmp_path / "run"
    assert smoke("ds3net", small_cohort, out) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["models"]) == {"student", "teacher"} and report["shipped"] == "student"
    for role in ("student", "teacher"):
        mean = report["models"][role]["mean"]
        assert 0.0 < mean["brain_ssim"] <= 1.0 and mean["brain_mse"] >= 0.0 and "tumour_psnr" in mean
        generator, metadata = load_generator(out / "checkpoints" / f"{role}.pt")
        assert metadata["role"] == role and metadata["method"] == "ds3net"
    payload = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert payload["step"] == 8 and payload["format"] == "ds3kit.training"
    assert report["test_flips"] == "all"  # the test scores average the four in-plane flips (RunConfig.test_flips)
    assert (out / "figures" / "test_student.png").stat().st_size > 10_000
    assert len(list((out / "predictions" / "student").glob("*_t1ce.nii.gz"))) == len(report["split"]["test"][:2])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(line["split"] == "val" for line in lines)
    assert any("student/image" in line for line in lines), "the student must train after the teacher's warm-up"
    table = capsys.readouterr().out
    assert "student" in table and "teacher" in table and "tumour_ssim" in table
    # The tumour levels (the recipe's default counts them over the paired subjects' whole volumes, before any
    # augmentation): the checkpoint holds each label's voxel count and real T1ce sum of the stored paired subjects.
    assert payload["config"]["method_options"]["tumour_levels_from"] == "subjects"
    sums, counts = np.zeros(3), np.zeros(3)
    for name in report["split"]["train_paired"]:
        session = load_brats_case(small_cohort / name, with_target=True)
        for k, label in enumerate((1, 2, 4)):
            sums[k] += session.target[session.seg == label].sum(dtype=np.float64)
            counts[k] += (session.seg == label).sum()
    assert counts.sum() > 0 and payload["model"]["paired_label_counts"].tolist() == counts.tolist()
    # Each cached voxel is within CACHE_TOLERANCE (2**-12) of the float32 normalisation.
    assert (np.abs(payload["model"]["paired_label_sums"].numpy() - sums) <= counts * 2.0**-12).all()


@pytest.mark.parametrize(
    "recipe, roles", [("paired_only", {"teacher"}), ("pix2pix", {"generator"}), ("cut", {"generator"})]
)
def test_baseline_smoke(recipe, roles, small_cohort, tmp_path):
    out = tmp_path / recipe
    assert smoke(recipe, small_cohort, out, "--steps", "6") == 0
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["models"]) == roles and report["steps"] == 6


# With --calibrated-targets the teacher's calibration, fitted at the check of step 4, must resume from the checkpoint.
@pytest.mark.parametrize("options", [(), ("--calibrated-targets",)])
def test_stop_and_resume_gives_the_same_metrics_as_a_straight_run(small_cohort, tmp_path, options):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert smoke("ds3net", small_cohort, straight, *options) == 0
    assert smoke("ds3net", small_cohort, resumed, "--stop-after-steps", "5", *options) == 0
    assert not (resumed / "metrics.json").exists()
    assert torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)["step"] == 5
    assert smoke("ds3net", small_cohort, resumed, "--resume", *options) == 0
    assert json.loads((resumed / "metrics.json").read_text()) == json.loads((straight / "metrics.json").read_text())


def test_existing_run_is_not_overwritten(small_cohort, tmp_path, capsys):
    out = tmp_path / "run"
    assert smoke("ds3net", small_cohort, out, "--stop-after-steps", "2") == 0
    before = (out / "checkpoints" / "last.pt").read_bytes()
    assert smoke("ds3net", small_cohort, out) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert (out / "checkpoints" / "last.pt").read_bytes() == before


def test_non_finite_loss_stops_with_step_and_term_and_keeps_last_checkpoint(
    small_cohort, tmp_path, capsys, monkeypatch
):
    import ds3kit.methods.ds3net as ds3net_module

    out = tmp_path / "run"
    real = ds3net_module.difficulty_pixel
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 6 else value  # the teacher's 6th update = step index 5

    monkeypatch.setattr(ds3net_module, "difficulty_pixel", poisoned)
    assert smoke("ds3net", small_cohort, out, "--checkpoint-every", "4") == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step 5: teacher/pixel" in err
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 4
    assert not (out / "metrics.json").exists()


def test_bad_data_root_is_one_line_error(tmp_path, capsys):
    assert load_recipe("ds3net").main(["--smoke", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_select_average_ships_the_mean_of_the_weights_over_the_decays_validation_checks(
    small_cohort, tmp_path, monkeypatch
):
    import ds3kit.train.trainer as trainer_module
    from ds3kit.checkpoint import GENERATOR_FORMAT, load_checkpoint

    states: dict[int, dict[str, torch.Tensor]] = {}
    real = trainer_module._running_mean

    def recorded(average, step, module):
        states[step] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        return real(average, step, module)

    monkeypatch.setattr(trainer_module, "_running_mean", recorded)
    out = tmp_path / "run"
    # 8 steps, validation every 2, the decay over the last half: the checks at steps 4, 6 and 8 are averaged.
    assert smoke("paired_only", small_cohort, out, "--select", "average", "--val-every", "2") == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["averaged_steps"] == {"teacher": [4, 6, 8]} and sorted(states) == [4, 6, 8]
    assert report["selected_step"]["teacher"] == 8
    # The best-validation weights of the same training, scored beside the average.
    assert report["best_val"]["teacher"]["step"] in (2, 4, 6, 8)
    assert set(report["best_val"]["teacher"]["mean"]) >= {"brain_psnr", "tumour_psnr", "brain_ssim"}
    shipped = load_checkpoint(out / "checkpoints" / "teacher.pt", kind=GENERATOR_FORMAT)["state_dict"]
    for name, value in shipped.items():
        if value.is_floating_point() and not name.startswith("calibration."):  # fitted after the average
            expected = torch.stack([states[step][name].double() for step in (4, 6, 8)]).mean(0)
            torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("recipe", "flags", "message"),
    [
        ("ds3net", ["--teacher-ema", "1.5"], "teacher_ema must be in [0, 1)"),
        ("ds3net", ["--pixel-loss", "huber"], "pixel_loss must be one of l1, l2, got 'huber'"),
        ("paired_only", ["--tumour-weight", "-1"], "tumour_weight must be >= 0, got -1.0"),
        ("pix2pix", ["--pixel-loss", "l3"], "pixel_loss must be one of l1, l2, got 'l3'"),
        ("ds3net", ["--unpaired-tumour-repeats", "-2"], "unpaired_tumour_repeats must be >= 0"),
        ("cut", ["--seed", "-1"], "seed must be >= 0, got -1"),
    ],
)
def test_an_option_out_of_range_is_a_usage_error_before_any_data_is_read(
    recipe, flags, message, tmp_path, capsys, monkeypatch
):
    module = load_recipe(recipe)

    def no_training(*args, **kwargs):
        raise AssertionError("the recipe built a trainer from a bad option")

    monkeypatch.setattr(module, "Trainer", no_training)
    with pytest.raises(SystemExit) as raised:
        module.main(["--data", str(tmp_path / "never-read"), "--out", str(tmp_path / "r"), *flags])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert f"error: {message}" in error and "Traceback" not in error
    assert not (tmp_path / "r").exists()


def test_ds3net_on_a_cohort_without_labels_is_a_one_line_error_naming_the_way_out(small_cohort, tmp_path, capsys):
    import shutil

    unlabelled = tmp_path / "cohort"
    shutil.copytree(small_cohort, unlabelled)
    for seg in unlabelled.glob("*/*_seg.nii.gz"):
        seg.unlink()
    assert smoke("ds3net", unlabelled, tmp_path / "r") == 2  # tumour levels and the enhancing weight are defaults
    error = capsys.readouterr().err
    assert "need tumour labels (seg) on the paired training subjects" in error
    assert "--no-tumour-levels --student-enhancing-weight 1 trains without them" in error
    # Without either the recipe does not need them, and says it did not use them.
    assert smoke("ds3net", unlabelled, tmp_path / "r2", "--no-tumour-levels", "--student-enhancing-weight", "1") == 0
    assert "unpaired tumour labels: not used" in capsys.readouterr().out
    # Oversampling the unpaired tumour slices needs the labels that find them; the paired default does not refuse.
    without = ("--no-tumour-levels", "--student-enhancing-weight", "1", "--unpaired-tumour-repeats", "2")
    assert smoke("ds3net", unlabelled, tmp_path / "r4", *without) == 2
    error = capsys.readouterr().err
    assert "--unpaired-tumour-repeats 2 needs tumour labels (seg) on the unpaired training subjects" in error
    assert "(--unpaired-tumour-repeats 0 trains without)" in error
    assert smoke("ds3net", small_cohort, tmp_path / "r3") == 0
    assert "unpaired tumour labels: used" in capsys.readouterr().out
    assert json.loads((tmp_path / "r3" / "metrics.json").read_text())["unpaired_labels"] == "used"


def test_segmenter_adds_dice_rows_to_the_report(small_cohort, tmp_path, capsys):
    from ds3kit.segment import Segmenter, save_segmenter

    torch.manual_seed(0)
    checkpoint = tmp_path / "segmenter.pt"
    save_segmenter(checkpoint, Segmenter(channels=(4, 8), strides=(2,), num_res_units=0), train_cases=["elsewhere"])
    out = tmp_path / "run"
    assert smoke("pix2pix", small_cohort, out, "--steps", "4", "--segmenter", str(checkpoint)) == 0
    report = json.loads((out / "metrics.json").read_text())
    dice = ("dice_et", "dice_tc", "dice_wt")
    assert all(key in report["models"]["generator"]["mean"] for key in dice)
    assert all(key in report["baselines"]["copy-T1"]["mean"] for key in dice)
    real = report["baselines"]["real T1ce (segmenter)"]["mean"]
    assert set(real) == set(dice) and all(0.0 <= value <= 1.0 for value in real.values())
    assert "dice_et" in capsys.readouterr().out

    # A segmenter that trained on the test subjects is refused before it can flatter the synthesis.
    test_cases = report["split"]["test"]
    save_segmenter(checkpoint, Segmenter(channels=(4, 8), strides=(2,), num_res_units=0), train_cases=test_cases)
    with pytest.raises(ValueError, match="trained on"):
        smoke("pix2pix", small_cohort, tmp_path / "again", "--steps", "4", "--segmenter", str(checkpoint))


def test_other_subjects_t1ce_feeds_d_s_from_subjects_whose_inputs_the_student_never_sees(
    small_cohort, tmp_path, capsys, monkeypatch
):
    from ds3kit.train.trainer import Trainer

    streams = {}
    original = Trainer._streams

    def recording(self, split, method):
        found = original(self, split, method)
        streams.update(
            {
                name: None if s is None else {c.case_id for c in s.dataset.cases}
                for name, s in zip(("paired", "unpaired", "reference"), found)
            }
        )
        streams["split_unpaired"] = {p.name for p in split.train_unpaired}
        return found

    monkeypatch.setattr(Trainer, "_streams", recording)
    out = tmp_path / "run"
    assert smoke("ds3net", small_cohort, out, "--unpaired-t1ce", "other-subjects") == 0
    assert streams["reference"] and streams["unpaired"]
    assert not streams["reference"] & streams["unpaired"]  # no subject lends both inputs and T1ce
    assert streams["reference"] | streams["unpaired"] == streams["split_unpaired"]
    assert not streams["reference"] & streams["paired"]
    report = json.loads((out / "metrics.json").read_text())
    assert report["unpaired_t1ce"] == "other-subjects"
    assert "unpaired T1ce: other-subjects" in capsys.readouterr().out
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("student/d_real" in line for line in lines)


def test_the_paper_setting_is_the_default_and_is_printed(small_cohort, tmp_path, capsys):
    out = tmp_path / "run"
    assert smoke("ds3net", small_cohort, out, "--steps", "6") == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["unpaired_t1ce"] == "none"
    printed = capsys.readouterr().out
    assert "unpaired T1ce: none" in printed
    # The step's precision depends on the CPU (bf16 autocast only with native bf16): the report says which ran.
    from ds3kit.train.trainer import bf16_autocast_pays

    expected = "bf16 autocast" if bf16_autocast_pays(torch.device("cpu")) else "float32"
    assert report["precision"] == expected
    assert f"step in {expected}" in printed


def test_without_amp_the_report_says_float32(small_cohort, tmp_path, capsys):
    out = tmp_path / "run"
    assert smoke("paired_only", small_cohort, out, "--steps", "4", "--no-amp") == 0
    assert json.loads((out / "metrics.json").read_text())["precision"] == "float32"
    assert "step in float32" in capsys.readouterr().out


def test_a_recipe_checkpoint_draws_its_reliability_map(small_cohort, tmp_path, capsys):
    """The student ships with D^S: `ds3kit synthesize --difficulty` works on it, and the report measures the map."""
    from ds3kit.checkpoint import load_discriminator
    from ds3kit.cli import main as cli
    from ds3kit.data import load_volume

    out = tmp_path / "run"
    assert smoke("ds3net", small_cohort, out) == 0
    report = json.loads((out / "metrics.json").read_text())
    correlations = report["models"]["student"]["reliability"]
    assert {"map/brain", "edge/brain"} <= correlations.keys()
    assert all(-1.0 <= value <= 1.0 for value in correlations.values())
    assert "reliability map's correlation with |error|" in capsys.readouterr().out
    assert load_discriminator(out / "checkpoints" / "student.pt").in_channels == 4  # D^S, conditional by default
    case = small_cohort / report["split"]["test"][0]
    modality = {m: next(case.glob(f"*_{m}.nii.gz")) for m in ("t1", "t2", "flair")}
    synthesis, difficulty = tmp_path / "t1ce.nii.gz", tmp_path / "difficulty.nii.gz"
    argv = [
        "synthesize",
        "--t1",
        str(modality["t1"]),
        "--t2",
        str(modality["t2"]),
        "--flair",
        str(modality["flair"]),
        "--checkpoint",
        str(out / "checkpoints" / "student.pt"),
        "--out",
        str(synthesis),
        "--difficulty",
        str(difficulty),
        "--no-progress",
    ]
    assert cli(argv) == 0
    volume = load_volume(difficulty, allow_constant=True).data
    assert volume.shape == load_volume(synthesis).data.shape and 0.0 <= volume.min() and volume.max() <= 1.0


def test_validation_does_not_move_the_training_random_stream(small_cohort, tmp_path):
    """Scoring builds inference copies (new layers, random init): it must not change what later steps draw."""

    def train_losses(out, *extra):
        assert smoke("paired_only", small_cohort, out, *extra) == 0
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [(line["step"], line["teacher/pixel"]) for line in lines if line["split"] == "train"]

    often = train_losses(tmp_path / "often", "--val-every", "2")
    rarely = train_losses(tmp_path / "rarely", "--val-every", "1000")
    assert len(often) == 4 and often == rarely  # the smoke run logs every 2 of its 8 steps


def test_the_supervised_recipes_weight_the_tumour_in_l_pid(small_cohort, tmp_path):
    """tumour_weight 5 is the measured default of the recipes that train on real T1ce (docs/method.md: paired-only
    and DS3-Net's teacher at 5 %, pix2pix at 100 %) and reaches the checkpoint's recorded config; the flag turns it
    off."""
    weights = {
        name: load_recipe(name).DEFAULTS.method_options.get("tumour_weight", 1.0)
        for name in ("ds3net", "paired_only", "pix2pix")
    }
    assert weights == {"ds3net": 5.0, "paired_only": 5.0, "pix2pix": 5.0}
    for out, extra, weight in (("default", (), 5.0), ("off", ("--tumour-weight", "1"), 1.0)):
        assert smoke("paired_only", small_cohort, tmp_path / out, "--steps", "6", *extra) == 0
        checkpoint = torch.load(tmp_path / out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        assert checkpoint["config"]["method_options"]["tumour_weight"] == weight


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("--lambda-adv", "1", "--use-nce"),
        ("--teacher-ema", "0.9"),
        ("--no-tumour-levels", "--student-tumour-weight", "1", "--student-enhancing-weight", "1"),
        ("--student-warp",),
        ("--unpaired-tumour-repeats", "2"),
    ],
    ids=["recipe-options", "paper-losses", "ema-teacher", "no-tumour-levels", "student-warp", "unpaired-repeats"],
)
def test_ds3net_teacher_is_the_paired_only_model_draw_for_draw(small_cohort, tmp_path, extra):
    """The teacher of a DS3-Net run trains on what a paired-only run trains on, with the same initialisation and the
    same random draws (its augmentation, its PatchNCE locations): the student and the unpaired stream draw from
    streams of their own. So the teacher's weights, losses and test scores are the paired-only run's, bit for bit, and
    DS3-Net minus paired-only is the student's own gain, free of the teacher's run-to-run spread."""
    assert smoke("paired_only", small_cohort, tmp_path / "paired_only", *extra) == 0
    assert smoke("ds3net", small_cohort, tmp_path / "ds3net", *extra) == 0

    def teacher_losses(run):
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [
            {k: v for k, v in line.items() if k.startswith("teacher/")} for line in lines if line["split"] == "train"
        ]

    paired_only, ds3net = tmp_path / "paired_only", tmp_path / "ds3net"
    ds3net_lines = [json.loads(line) for line in (ds3net / "metrics.jsonl").read_text().splitlines()]
    assert any("student/image" in line for line in ds3net_lines), "the student must have trained alongside"
    assert teacher_losses(ds3net) == teacher_losses(paired_only)
    mine = torch.load(paired_only / "checkpoints" / "last.pt", weights_only=True)["model"]
    theirs = torch.load(ds3net / "checkpoints" / "last.pt", weights_only=True)["model"]
    # PairedTeacher's networks and optimiser-free state sit under "teacher." in DS3Net's.
    assert mine and all(theirs["teacher." + key].equal(value) for key, value in mine.items())
    reports = [json.loads((run / "metrics.json").read_text()) for run in (paired_only, ds3net)]
    assert reports[0]["models"]["teacher"] == reports[1]["models"]["teacher"]


def test_the_shipped_synthesis_is_calibrated_on_the_validation_subjects_and_scored_both_ways(small_cohort, tmp_path):
    from ds3kit.data import load_volume
    from ds3kit.evaluation import session_metrics
    from ds3kit.inference import synthesize_volume

    out = tmp_path / "run"
    assert smoke("paired_only", small_cohort, out, "--steps", "4", "--test-flips", "lr") == 0
    report = json.loads((out / "metrics.json").read_text())
    calibration = report["calibration"]["teacher"]
    assert calibration["fitted"] and calibration["flips"] == "lr"
    assert calibration["subjects"] == len(report["split"]["val"]) >= 1
    generator, metadata = load_generator(out / "checkpoints" / "teacher.pt")
    assert generator.calibration.fitted and metadata["calibration"] == calibration
    # The prediction on disk is the calibrated synthesis and the report scores it; the raw one is scored beside it.
    raw_psnr = []
    for case in report["models"]["teacher"]["subjects"]:
        session = load_brats_case(small_cohort / case, with_target=True)  # the cache's to 2**-12
        raw = synthesize_volume(generator, session.inputs, brain_mask=session.brain_mask, flips="lr", calibrate=False)
        shipped = generator.calibration.apply(raw, session.brain_mask)
        written = load_volume(out / "predictions" / "teacher" / f"{case}_t1ce.nii.gz").data
        assert np.abs(written - shipped).max() < 2e-3 < np.abs(written - raw).max()
        assert report["models"]["teacher"]["subjects"][case]["brain_psnr"] == pytest.approx(
            session_metrics(session, shipped)["brain_psnr"], abs=0.01
        )
        raw_psnr.append(session_metrics(session, raw)["brain_psnr"])
    assert report["uncalibrated"]["teacher"]["mean"]["brain_psnr"] == pytest.approx(np.mean(raw_psnr), abs=0.01)

    off = tmp_path / "off"
    assert smoke("paired_only", small_cohort, off, "--steps", "4", "--no-calibrate") == 0
    report = json.loads((off / "metrics.json").read_text())
    assert report["calibration"] == {} and "uncalibrated" not in report
    assert not load_generator(off / "checkpoints" / "teacher.pt")[0].calibration.fitted


def test_calibrated_targets_refit_the_teachers_calibration_at_each_check_and_leave_the_teacher_untouched(
    small_cohort, tmp_path, monkeypatch
):
    from ds3kit.inference import calibrate_generator
    from ds3kit.train import trainer

    # The fit is counted from validation's own predictions (no flips: the same passes): no second synthesis.
    separate_fits = []
    monkeypatch.setattr(trainer, "calibrate_generator", lambda *args, **kwargs: separate_fits.append(kwargs))
    plain, calibrated = tmp_path / "plain", tmp_path / "calibrated"
    assert smoke("ds3net", small_cohort, plain) == 0
    assert smoke("ds3net", small_cohort, calibrated, "--calibrated-targets") == 0
    assert separate_fits == []

    def val_lines(run):
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [line for line in lines if line["split"] == "val"]

    # Validation scores the networks uncalibrated and the fit draws no random numbers: the teacher trains, scores
    # and is selected exactly as without the option; the student, taught other targets, is not.
    for a, b in zip(val_lines(plain), val_lines(calibrated), strict=True):
        teacher = {k: v for k, v in a.items() if k.startswith("teacher/")}
        assert teacher and teacher == {k: b[k] for k in teacher}
    assert val_lines(plain)[-1]["student/brain_psnr"] != val_lines(calibrated)[-1]["student/brain_psnr"]
    # The last check's fit is in the training checkpoint: the teacher's calibration refitted on the validation
    # subjects (read from NIfTI here, within the cache's 2**-12 of what the trainer read) with the same weights.
    model = torch.load(calibrated / "checkpoints" / "last.pt", weights_only=True)["model"]
    teacher, _ = load_generator(calibrated / "checkpoints" / "teacher.pt")
    prefix = "teacher.generator."
    teacher.load_state_dict({k[len(prefix) :]: v for k, v in model.items() if k.startswith(prefix)})
    trained = teacher.calibration.target.clone()
    assert teacher.calibration.fitted
    report = json.loads((calibrated / "metrics.json").read_text())
    val = [load_brats_case(small_cohort / case, with_target=True) for case in report["split"]["val"]]
    calibrate_generator(teacher, val)
    assert torch.allclose(teacher.calibration.target, trained, atol=5e-3)
    assert not torch.allclose(trained, teacher.calibration.source, atol=5e-3)
    # --no-calibrate ships the identity, whatever the teacher trained through.
    off = tmp_path / "off"
    assert smoke("ds3net", small_cohort, off, "--calibrated-targets", "--no-calibrate") == 0
    assert not load_generator(off / "checkpoints" / "teacher.pt")[0].calibration.fitted
    # Pseudo-targets through flips are fitted on flipped passes, which validation does not make: one fit per check.
    flipped = tmp_path / "flipped"
    assert smoke("ds3net", small_cohort, flipped, "--calibrated-targets", "--teacher-flips", "lr") == 0
    assert [fit["flips"] for fit in separate_fits] == ["lr"] * len(val_lines(flipped))
