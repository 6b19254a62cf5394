from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ds3kit.data.phantom import make_phantom_case, phantom_affine
from ds3kit.data.session import find_brats_files, list_cases, load_brats_case, load_session
from ds3kit.errors import InputError

from .conftest import SMALL_SHAPE, TCGA_DIR, write_nifti


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    "names, expected",
    [
        (
            ["C_t1.nii.gz", "C_t1ce.nii.gz", "C_t2.nii.gz", "C_flair.nii.gz", "C_seg.nii.gz"],
            {
                "t1": "C_t1.nii.gz",
                "t2": "C_t2.nii.gz",
                "flair": "C_flair.nii.gz",
                "t1ce": "C_t1ce.nii.gz",
                "seg": "C_seg.nii.gz",
            },
        ),
        (  # BraTS 2020 case 355: odd seg name, plain .nii
            [
                "BraTS20_Training_355_t1.nii",
                "BraTS20_Training_355_t1ce.nii",
                "BraTS20_Training_355_t2.nii",
                "BraTS20_Training_355_flair.nii",
                "W39_1998.09.19_Segm.nii",
            ],
            {
                "t1": "BraTS20_Training_355_t1.nii",
                "seg": "W39_1998.09.19_Segm.nii",
                "t1ce": "BraTS20_Training_355_t1ce.nii",
            },
        ),
        (  # t1Gd, upper case
            ["X_T1.NII.GZ", "X_t1Gd.nii.gz", "X_T2.nii.gz", "X_FLAIR.nii.gz"],
            {"t1": "X_T1.NII.GZ", "t1ce": "X_t1Gd.nii.gz", "flair": "X_FLAIR.nii.gz"},
        ),
        (  # BraTS 2023
            [
                "BraTS-GLI-00000-000-t1n.nii.gz",
                "BraTS-GLI-00000-000-t1c.nii.gz",
                "BraTS-GLI-00000-000-t2w.nii.gz",
                "BraTS-GLI-00000-000-t2f.nii.gz",
                "BraTS-GLI-00000-000-seg.nii.gz",
            ],
            {
                "t1": "BraTS-GLI-00000-000-t1n.nii.gz",
                "t1ce": "BraTS-GLI-00000-000-t1c.nii.gz",
                "t2": "BraTS-GLI-00000-000-t2w.nii.gz",
                "flair": "BraTS-GLI-00000-000-t2f.nii.gz",
            },
        ),
    ],
)
def test_find_brats_files_recognises_known_names(tmp_path, names, expected):
    found = find_brats_files(_touch(tmp_path / "case", *names, "._C_t1.nii.gz", "notes.txt"))
    for modality, name in expected.items():
        assert found[modality].name == name
    assert list(found)[:3] == ["t1", "t2", "flair"]


def test_t1_never_claims_t1ce(tmp_path):
    folder = _touch(tmp_path / "case", "C_t1ce.nii.gz", "C_t2.nii.gz", "C_flair.nii.gz")
    with pytest.raises(InputError, match=r"missing modality t1\b"):
        find_brats_files(folder)


def test_missing_modality_is_named(tmp_path):
    folder = _touch(tmp_path / "case", "C_t1.nii.gz", "C_t2.nii.gz")
    with pytest.raises(InputError, match="missing modality flair"):
        find_brats_files(folder)


def test_duplicate_modality(tmp_path):
    folder = _touch(tmp_path / "case", "C_t1.nii", "C_t1.nii.gz", "C_t2.nii.gz", "C_flair.nii.gz")
    with pytest.raises(InputError, match="two files for t1"):
        find_brats_files(folder)


def test_load_brats_case(brats_case_dir, small_case):
    session = load_brats_case(brats_case_dir)
    assert session.case_id == "BraTS20_Training_007"
    assert session.inputs.shape == (3, *SMALL_SHAPE) and session.inputs.dtype == np.float32
    assert session.target.shape == SMALL_SHAPE
    assert 0.0 <= session.inputs.min() and session.inputs.max() <= 1.0
    np.testing.assert_array_equal(session.brain_mask, small_case["t1"] > 0)
    assert not session.inputs[:, ~session.brain_mask].any()
    np.testing.assert_array_equal(session.seg, small_case["seg"])
    assert set(session.scalings) == {"t1", "t2", "flair", "t1ce"}
    # the inverse map gives back scanner units inside the robust range
    t1 = small_case["t1"]
    inside = session.brain_mask & (session.inputs[0] > 0) & (session.inputs[0] < 1)
    np.testing.assert_allclose(session.scalings["t1"].denormalize(session.inputs[0])[inside], t1[inside], rtol=1e-4)
    np.testing.assert_allclose(session.affine, phantom_affine(SMALL_SHAPE), atol=1e-4)  # float32 header storage


def test_unpaired_case_never_reads_t1ce(brats_case_dir):
    (brats_case_dir / f"{brats_case_dir.name}_t1ce.nii.gz").write_bytes(b"corrupt")  # would fail if read
    session = load_brats_case(brats_case_dir, with_target=False)
    assert session.target is None and "t1ce" not in session.scalings
    with pytest.raises(InputError, match="t1ce"):
        load_brats_case(brats_case_dir, with_target=True)


def test_paired_case_without_t1ce(brats_case_dir):
    (brats_case_dir / f"{brats_case_dir.name}_t1ce.nii.gz").unlink()
    with pytest.raises(InputError, match="missing modality t1ce"):
        load_brats_case(brats_case_dir)


def test_mismatched_grids_inside_brats_case_names_the_files(brats_case_dir, small_case):
    write_nifti(brats_case_dir / f"{brats_case_dir.name}_t2.nii.gz", small_case["t2"][:-2])
    write_nifti(brats_case_dir / f"{brats_case_dir.name}_seg.nii.gz", small_case["seg"][:, :-1])
    with pytest.raises(InputError, match=r"_t2\.nii\.gz \(31, 37, 19\).*_seg\.nii\.gz \(33, 36, 19\).*_t1\.nii\.gz"):
        load_brats_case(brats_case_dir)


def test_bad_seg_labels(brats_case_dir, small_case):
    seg = small_case["seg"].copy()
    seg[0, 0, 0] = 3
    write_nifti(brats_case_dir / f"{brats_case_dir.name}_seg.nii.gz", seg)
    with pytest.raises(InputError, match=r"_seg\.nii\.gz.*\{0, 1, 2, 4\}, found 3"):
        load_brats_case(brats_case_dir)


def test_empty_modality_is_named(brats_case_dir):
    write_nifti(brats_case_dir / f"{brats_case_dir.name}_flair.nii.gz", np.zeros(SMALL_SHAPE, np.float32))
    with pytest.raises(InputError, match=r"_flair\.nii\.gz.*empty"):
        load_brats_case(brats_case_dir)


def test_list_cases(tmp_path, small_case):
    for name in ("Case_b", "Case_a", ".hidden"):
        write_nifti(_touch(tmp_path / name) / f"{name}_t1.nii.gz", small_case["t1"])
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "name_mapping.csv").write_text("x")
    assert [p.name for p in list_cases(tmp_path)] == ["Case_a", "Case_b"]
    with pytest.raises(InputError, match="no case folders"):
        list_cases(tmp_path / "empty_folder")


def test_load_session_with_explicit_mask_and_volumes_on_other_grids(tmp_path, small_case):
    affine = phantom_affine(SMALL_SHAPE)
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, :3] @ np.array([2.0, 0.0, 0.0])  # T2 grid starts two voxels further
    t1 = write_nifti(tmp_path / "s_t1.nii.gz", small_case["t1"], affine)
    t2 = write_nifti(tmp_path / "s_t2.nii.gz", small_case["t2"][2:], shifted)
    flair = write_nifti(tmp_path / "s_flair.nii.gz", small_case["flair"], affine)
    mask = write_nifti(tmp_path / "s_mask.nii.gz", (small_case["t1"] > 0).astype(np.uint8), affine)
    session = load_session(t1, t2, flair, mask=mask)
    assert session.case_id == "s" and session.target is None and session.seg is None
    # voxels 2.. of the T1 grid are the T2's voxels 0..; they land back exactly
    expected = session.scalings["t2"].normalize(small_case["t2"])
    np.testing.assert_allclose(
        session.inputs[1, 2:][session.brain_mask[2:]], expected[2:][session.brain_mask[2:]], atol=1e-5
    )
    assert not session.inputs[1, :2].any()


def test_load_session_rejects_non_overlapping_grids(tmp_path, small_case):
    far = phantom_affine(SMALL_SHAPE)
    far[:3, 3] += 5000.0
    t1 = write_nifti(tmp_path / "t1.nii.gz", small_case["t1"], phantom_affine(SMALL_SHAPE))
    t2 = write_nifti(tmp_path / "t2.nii.gz", small_case["t2"], far)
    with pytest.raises(InputError, match=r"t2\.nii\.gz.*does not overlap"):
        load_session(t1, t2, t1)


@pytest.mark.skipif(not TCGA_DIR.is_dir(), reason=f"real session not found at {TCGA_DIR}")
def test_real_session_on_different_grids_lands_on_the_t1_grid():
    files = {name: TCGA_DIR / f"TCGA-FG-6692_{name}.nii.gz" for name in ("t1", "t2", "flair", "t1ce")}
    session = load_session(files["t1"], files["t2"], files["flair"], t1ce=files["t1ce"])
    t1_image, t2_image = nib.load(files["t1"]), nib.load(files["t2"])
    assert session.case_id == "TCGA-FG-6692"
    assert session.inputs.shape == (3, *t1_image.shape) and session.target.shape == t1_image.shape
    np.testing.assert_array_equal(session.affine, t1_image.affine)
    assert 0.2 < session.brain_mask.mean() < 0.8  # a head, not the whole field of view nor nothing

    # Independent check at random voxels: T1 voxel -> world -> T2 voxel -> trilinear sample.
    rng = np.random.default_rng(0)
    candidates = np.argwhere(session.brain_mask)
    voxels = candidates[rng.choice(len(candidates), 50, replace=False)].T
    world = t1_image.affine @ np.vstack([voxels, np.ones(voxels.shape[1])])
    t2_voxels = (np.linalg.inv(t2_image.affine) @ world)[:3]
    t2_data = np.asarray(t2_image.dataobj, dtype=np.float64)
    sampled = ndimage.map_coordinates(t2_data, t2_voxels, order=1, mode="constant", cval=0.0)
    expected = session.scalings["t2"].normalize(sampled)
    np.testing.assert_allclose(session.inputs[1][tuple(voxels)], expected, atol=1e-4)
    assert np.ptp(expected) > 0.3  # the sampled voxels are diverse tissue, not one flat value


# --------------------------------------------------------------------------------------- label conventions
def _write_case(folder: Path, case: dict[str, np.ndarray], names: dict[str, str], seg: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    affine = phantom_affine(SMALL_SHAPE)
    for modality, suffix in names.items():
        write_nifti(folder / f"{folder.name}{suffix}.nii.gz", seg if modality == "seg" else case[modality], affine)
    return folder


@pytest.fixture(scope="module")
def enhancing_case() -> dict[str, np.ndarray]:
    """A phantom case with every tumour label (core 1, oedema 2, enhancing 4); seed 3's has no enhancing rim."""
    case = make_phantom_case(SMALL_SHAPE, seed=4)
    assert set(np.unique(case["seg"])) == {0, 1, 2, 4}
    return case


_NAMES_2020 = {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"}
_NAMES_2023 = {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"}


def _as_2023(seg: np.ndarray) -> np.ndarray:
    """BraTS 2023's labels from the phantom's 2020 labels: enhancing tumour 4 -> 3, the rest unchanged."""
    relabelled = seg.copy()
    relabelled[seg == 4] = 3
    return relabelled


def test_brats2023_case_maps_enhancing_3_to_the_internal_4(tmp_path, enhancing_case):
    case_2020 = _write_case(tmp_path / "BraTS20_Training_001", enhancing_case, _NAMES_2020, enhancing_case["seg"])
    case_2023 = _write_case(
        tmp_path / "BraTS-GLI-00001-000", enhancing_case, _NAMES_2023, _as_2023(enhancing_case["seg"])
    )
    old, new = load_brats_case(case_2020), load_brats_case(case_2023)
    assert new.case_id == "BraTS-GLI-00001-000"
    np.testing.assert_array_equal(new.seg, enhancing_case["seg"])  # the same regions, the same internal labels
    np.testing.assert_array_equal(new.seg, old.seg)
    np.testing.assert_array_equal(new.inputs, old.inputs)
    assert set(np.unique(new.seg)) <= {0, 1, 2, 4}


def test_label_convention_is_detected_from_names_and_can_be_overridden(tmp_path, enhancing_case):
    from ds3kit.data.session import detect_label_convention

    assert detect_label_convention(["a/X-t1n.nii.gz", "a/X-t2w.nii.gz"]) == "brats2023"
    assert detect_label_convention({"t1": Path("X_t1.nii"), "seg": Path("X_seg.nii")}) == "brats2020"
    assert detect_label_convention(["X_T1CE.NII.GZ", "X_t1Gd.nii.gz"]) == "brats2020"
    # 2020 names holding 2023 labels: refused with a hint, read with the explicit option
    case = _write_case(tmp_path / "Renamed_001", enhancing_case, _NAMES_2020, _as_2023(enhancing_case["seg"]))
    with pytest.raises(
        InputError, match=r"_seg\.nii\.gz.*\{0, 1, 2, 4\}, found 3 \(brats2020.*label_convention='brats2023'"
    ):
        load_brats_case(case)
    np.testing.assert_array_equal(load_brats_case(case, label_convention="brats2023").seg, enhancing_case["seg"])
    # 2023 names holding 2020 labels: refused with the other hint, read with the explicit option
    other = _write_case(tmp_path / "BraTS-MEN-00002-000", enhancing_case, _NAMES_2023, enhancing_case["seg"])
    with pytest.raises(
        InputError, match=r"-seg\.nii\.gz.*\{0, 1, 2, 3\}, found 4 \(brats2023.*label_convention='brats2020'"
    ):
        load_brats_case(other)
    np.testing.assert_array_equal(load_brats_case(other, label_convention="brats2020").seg, enhancing_case["seg"])
    with pytest.raises(ValueError, match="label_convention must be one of auto, brats2020, brats2023, got 'brats2021'"):
        load_brats_case(other, label_convention="brats2021")


def test_a_seg_mixing_3_and_4_is_refused_in_every_convention(tmp_path, enhancing_case):
    seg = enhancing_case["seg"].copy()
    enhancing = np.argwhere(seg == 4)
    seg[tuple(enhancing[0])] = 3
    case = _write_case(tmp_path / "BraTS-PED-00003-000", enhancing_case, _NAMES_2023, seg)
    for convention in ("auto", "brats2020", "brats2023"):
        with pytest.raises(InputError, match=r"-seg\.nii\.gz: segmentation holds both label 3 and label 4"):
            load_brats_case(case, label_convention=convention)


def test_load_session_detects_brats2023_names(tmp_path, enhancing_case):
    case = _write_case(tmp_path / "BraTS-SSA-00004-000", enhancing_case, _NAMES_2023, _as_2023(enhancing_case["seg"]))
    files = {modality: case / f"{case.name}{suffix}.nii.gz" for modality, suffix in _NAMES_2023.items()}
    session = load_session(files["t1"], files["t2"], files["flair"], t1ce=files["t1ce"], seg=files["seg"])
    assert session.case_id == "BraTS-SSA-00004-000"
    np.testing.assert_array_equal(session.seg, enhancing_case["seg"])
