from __future__ import annotations

from ds3kit.cli import main
from ds3kit.data.session import list_cases


def test_phantom_command_writes_cohort_and_reports(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert main(["phantom", str(out), "--cases", "2", "--shape", "17", "19", "11", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert str(out) in captured.out and " s)" in captured.out
    assert "phantom cases" in captured.err  # tqdm progress on stderr
    assert [p.name for p in list_cases(out)] == ["Phantom_001", "Phantom_002"]


def test_phantom_command_bad_parent_is_one_line_error(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "no" / "cohort"), "--cases", "1", "--shape", "17", "19", "11"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ds3kit phantom: error:") and "does not exist" in err and "\n" not in err
