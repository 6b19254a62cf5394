import pytest

from ds3kit.errors import InputError
from ds3kit.utils.atomic import atomic_path, atomic_write_text


def test_atomic_write_replaces_target(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failure_keeps_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "volume.nii.gz"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="writer crashed"):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
            tmp.write_bytes(b"half")
            raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["volume.nii.gz"]


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(InputError, match="output directory .*missing.* does not exist"):
        atomic_write_text(tmp_path / "missing" / "x.txt", "x")
