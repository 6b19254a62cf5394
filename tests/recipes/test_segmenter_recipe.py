"""recipes/segmenter.py in its --smoke configuration: trains a few steps, ships a weights-only checkpoint, never
trains on the held-out subjects, reports both reference rows."""

import json

import torch
from _recipes import load_recipe

from ds3kit.data import list_cases, split_cohort
from ds3kit.segment import Segmenter, check_held_out, load_segmenter


def test_segmenter_smoke_writes_a_safe_checkpoint_and_the_dice_rows(small_cohort, tmp_path, capsys):
    out = tmp_path / "segmenter"
    recipe = load_recipe("segmenter")
    assert recipe.main(["--smoke", "--data", str(small_cohort), "--out", str(out), "--no-progress"]) == 0

    payload = torch.load(out / "checkpoints" / "segmenter.pt", weights_only=True)
    assert payload["format"] == "ds3kit.segmenter" and payload["metadata"]["steps"] == 8
    segmenter, metadata = load_segmenter(out / "checkpoints" / "segmenter.pt")
    assert isinstance(segmenter, Segmenter)
    assert segmenter(torch.rand(1, 4, 48, 48)).shape == (1, 3, 48, 48)

    split = split_cohort(list_cases(small_cohort), paired_fraction=0.05, seed=0)  # the trainer's split, seed 0
    assert metadata["train_cases"] == [case.name for case in split.train]
    check_held_out(metadata, [case.name for case in split.val + split.test])

    report = json.loads((out / "metrics.json").read_text())
    assert set(report["rows"]) == {"val", "test"}
    for part in ("val", "test"):
        assert set(report["rows"][part]) == {"real_t1ce", "copy_t1"}
        for row in report["rows"][part].values():
            assert set(row["mean"]) == {"dice_et", "dice_tc", "dice_wt"}
            assert all(0.0 <= value <= 1.0 for value in row["mean"].values())
    assert set(report["rows"]["test"]["real_t1ce"]["subjects"]) == {case.name for case in split.test[:2]}
    table = capsys.readouterr().out
    assert "real_t1ce" in table and "copy_t1" in table and "dice_et" in table

    # A second run into the same folder is refused rather than silently replacing the shipped segmenter.
    assert recipe.main(["--smoke", "--data", str(small_cohort), "--out", str(out), "--no-progress"]) == 2
    assert "already holds a segmenter; pass --overwrite" in capsys.readouterr().err


def test_segmenter_without_t1ce_trains_on_the_inputs_and_reports_the_copy_t1_row_only(small_cohort, tmp_path, capsys):
    out = tmp_path / "without"
    argv = ["--smoke", "--without-t1ce", "--data", str(small_cohort), "--out", str(out), "--no-progress"]
    assert load_recipe("segmenter").main(argv) == 0
    _, metadata = load_segmenter(out / "checkpoints" / "segmenter.pt")
    assert metadata["t1ce_channel"] == "t1"
    report = json.loads((out / "metrics.json").read_text())
    assert report["without_t1ce"] is True
    for part in ("val", "test"):
        assert set(report["rows"][part]) == {"copy_t1"}
    assert "without T1ce" in capsys.readouterr().out
