"""A synthetic glioma MRI cohort in BraTS layout: the recipes' default data, generated on first use.

Each case is a skull-stripped head-like brain with white matter, a folded grey-matter cortex, deep
grey nuclei, CSF (sulci, interhemispheric fissure, lateral and third ventricles), choroid plexus
and vessels, and a glioma (oedema 2, necrotic / non-enhancing core 1, enhancing rim 4) that
pushes the tissue around it. Tissue contrasts follow the table in docs/data.md. Every subject gets
its own smooth deformation, brain size and pose, tumour size / position / shape, per-modality
bias field, intensity scale and Rician noise. All of it is vectorised numpy / scipy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import fft, ndimage
from tqdm import tqdm

from ds3kit.data.nifti import save_volume
from ds3kit.errors import InputError

# Bump when the generator's output changes, so cached cohorts of an older version are not reused.
PHANTOM_FORMAT_VERSION = 2  # 2: each case also holds phantom_truth/ (same volumes as 1)
MODALITIES = ("t1", "t1ce", "t2", "flair")

# BraTS field of view (mm): 240 x 240 in plane, 155 slices of 1 mm; the phantom spans the same.
_FIELD_OF_VIEW_MM = (240.0, 240.0, 155.0)

# Indicative relative signal per tissue (the method doc's table), columns t1, t1ce, t2, flair.
TISSUE_CONTRASTS: dict[str, tuple[float, float, float, float]] = {
    "background": (0.00, 0.00, 0.00, 0.00),
    "white_matter": (0.80, 0.80, 0.40, 0.45),
    "grey_matter": (0.60, 0.60, 0.55, 0.60),
    "csf": (0.15, 0.15, 1.00, 0.10),
    "vessel": (0.50, 0.95, 0.30, 0.40),
    "oedema": (0.55, 0.55, 0.85, 0.90),
    "core": (0.30, 0.30, 0.90, 0.60),
    "enhancing": (0.55, 1.00, 0.70, 0.75),
}
_TISSUES = tuple(TISSUE_CONTRASTS)
_CODE = {name: code for code, name in enumerate(_TISSUES)}
# BraTS label of each tissue code: core 1 (necrotic / non-enhancing), oedema 2, enhancing 4.
_SEG_OF_TISSUE = np.array([0, 0, 0, 0, 0, 2, 1, 4], dtype=np.uint8)


def make_phantom_case(
    shape: Sequence[int] = (96, 96, 48), *, seed: int = 0, with_truth: bool = False
) -> dict[str, np.ndarray]:
    """Generate one synthetic glioma case.

    Args:
        shape: grid (X, Y, Z); X is left-right, Y posterior-anterior, Z inferior-superior (axial
            slices are the last axis). Each axis needs at least 8 voxels. The grid always spans
            the BraTS field of view, see :func:`phantom_affine`.
        seed: everything is a deterministic function of ``(shape, seed)``.

    Returns:
        ``t1``, ``t1ce``, ``t2``, ``flair``: float32 (X, Y, Z), raw "scanner" units >= 0, exactly 0
        outside the brain; ``seg``: uint8 (X, Y, Z) BraTS labels {0, 1, 2, 4}. With ``with_truth`` also
        ``t1ce_clean`` (the T1ce signal before its Rician noise, same units) and ``tissue`` (uint8 codes in the
        order of :data:`TISSUE_CONTRASTS`): what the ceilings of :mod:`ds3kit.baselines` need. The other arrays
        are the same with or without it (no extra random draws).
    """
    grid = _check_shape(shape)
    rng = np.random.default_rng(seed)
    spacing = np.array(_FIELD_OF_VIEW_MM) / np.array(grid)
    tissue, brain = _anatomy(grid, spacing, rng)

    case: dict[str, np.ndarray] = {}
    lookup = np.array([TISSUE_CONTRASTS[name] for name in _TISSUES], dtype=np.float32)  # (tissues, 4)
    for column, modality in enumerate(MODALITIES):
        # Per subject, each tissue's signal varies a little (age, sequence parameters).
        contrast = lookup[:, column] * rng.uniform(0.95, 1.05, size=len(_TISSUES)).astype(np.float32)
        image = contrast[tissue]
        image *= 1.0 + 0.03 * _smooth_noise(rng, grid, spacing, correlation_mm=3.0)  # tissue texture
        image = ndimage.gaussian_filter(image, sigma=0.5, truncate=2.0)  # partial volume
        image *= np.exp(0.12 * _smooth_noise(rng, grid, spacing, correlation_mm=70.0))  # receive-coil bias
        scale = rng.uniform(300.0, 3000.0)  # scanner units differ per subject and sequence
        sigma = scale * rng.uniform(0.012, 0.03)
        signal = image * scale
        real = signal + rng.normal(0.0, sigma, size=grid).astype(np.float32)
        imaginary = rng.normal(0.0, sigma, size=grid).astype(np.float32)
        magnitude = np.sqrt(real * real + imaginary * imaginary)  # Rician: magnitude of complex Gaussian noise
        magnitude[~brain] = 0.0  # skull-stripped, like BraTS
        case[modality] = magnitude.astype(np.float32, copy=False)
        if with_truth and modality == "t1ce":
            case["t1ce_clean"] = np.where(brain, signal, 0.0).astype(np.float32)
    case["seg"] = _SEG_OF_TISSUE[tissue]
    if with_truth:
        case["tissue"] = tissue.astype(np.uint8)
    return case


# Where a phantom case keeps what only a simulation knows; a sub-folder, so BraTS readers never see it.
TRUTH_FOLDER = "phantom_truth"


def load_phantom_truth(case_dir: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """A phantom case's ``t1ce_clean`` (float32) and ``tissue`` (uint8 codes), or None when the case has none
    (real data, or a cohort written before :data:`PHANTOM_FORMAT_VERSION` 2)."""
    from ds3kit.data.nifti import load_volume

    folder = Path(case_dir) / TRUTH_FOLDER
    paths = {name: folder / f"{name}.nii.gz" for name in ("t1ce_clean", "tissue")}
    if not all(path.is_file() for path in paths.values()):
        return None
    clean = load_volume(paths["t1ce_clean"], allow_constant=True).data.astype(np.float32)
    tissue = np.rint(load_volume(paths["tissue"], allow_constant=True).data).astype(np.uint8)
    return {"t1ce_clean": clean, "tissue": tissue}


def phantom_affine(shape: Sequence[int]) -> np.ndarray:
    """The (4, 4) RAS voxel -> world affine of a phantom grid: voxels of 240/X x 240/Y x 155/Z mm, centred on 0."""
    grid = _check_shape(shape)
    spacing = np.array(_FIELD_OF_VIEW_MM) / np.array(grid)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -spacing * (np.array(grid) - 1) / 2.0
    return affine


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` (0-based) in a cohort of seed ``seed``; independent of the cohort size."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def write_phantom_cohort(
    out: str | os.PathLike,
    *,
    cases: int = 40,
    shape: Sequence[int] = (96, 96, 48),
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write a phantom cohort in BraTS layout: ``OUT/Phantom_001/Phantom_001_{t1,t1ce,t2,flair,seg}.nii.gz``.

    Intensities are float32, seg uint8, with the affine of :func:`phantom_affine`. Case ``i`` is
    ``make_phantom_case(shape, seed=case_seed(seed, i))``, so a larger cohort extends a smaller
    one. ``OUT`` is created if needed (its parent must exist); existing case files are replaced.

    Returns:
        The case folders, in order.

    Raises:
        InputError: the parent of ``OUT`` does not exist.
        ValueError: ``cases`` < 1 or a bad ``shape``.
    """
    if int(cases) < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    grid = _check_shape(shape)
    root = Path(out)
    if not root.parent.is_dir():
        raise InputError(f"{root}: parent directory {root.parent} does not exist")
    root.mkdir(exist_ok=True)
    affine = phantom_affine(grid)
    width = max(3, len(str(cases)))
    folders = []
    for index in tqdm(range(cases), desc="phantom cases", unit="case", disable=not progress):
        name = f"Phantom_{index + 1:0{width}d}"
        folder = root / name
        folder.mkdir(exist_ok=True)
        case = make_phantom_case(grid, seed=case_seed(seed, index), with_truth=True)
        for modality in MODALITIES:
            save_volume(folder / f"{name}_{modality}.nii.gz", case[modality], affine)
        save_volume(folder / f"{name}_seg.nii.gz", case["seg"], affine, dtype=np.uint8)
        (folder / TRUTH_FOLDER).mkdir(exist_ok=True)
        save_volume(folder / TRUTH_FOLDER / "t1ce_clean.nii.gz", case["t1ce_clean"], affine)
        save_volume(folder / TRUTH_FOLDER / "tissue.nii.gz", case["tissue"], affine, dtype=np.uint8)
        folders.append(folder)
    return folders


def default_cohort(
    cache_dir: str | os.PathLike | None = None,
    *,
    cases: int = 40,
    shape: Sequence[int] = (96, 96, 48),
    seed: int = 0,
) -> Path:
    """The recipes' default data: a phantom cohort, generated on first use and then reused.

    It lives in ``cache_dir or $DS3KIT_CACHE or ~/.cache/ds3kit``, in a folder named by the
    parameters and :data:`PHANTOM_FORMAT_VERSION`. It is built in a hidden temporary folder and
    renamed into place when complete, so an interrupted run never leaves a partial cohort.

    Returns:
        The cohort root (pass it to :func:`ds3kit.data.list_cases`).
    """
    grid = _check_shape(shape)
    base = Path(cache_dir or os.environ.get("DS3KIT_CACHE") or Path.home() / ".cache" / "ds3kit")
    name = f"phantom-v{PHANTOM_FORMAT_VERSION}-{int(cases)}cases-{'x'.join(map(str, grid))}-seed{int(seed)}"
    final = base / name
    if (final / "cohort.json").is_file():
        return final
    base.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=base))
    try:
        write_phantom_cohort(building, cases=cases, shape=grid, seed=seed, progress=True)
        manifest = {
            "format_version": PHANTOM_FORMAT_VERSION,
            "cases": int(cases),
            "shape": list(grid),
            "seed": int(seed),
        }
        (building / "cohort.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(building, final)
        except OSError:
            if not (final / "cohort.json").is_file():
                raise
            shutil.rmtree(building, ignore_errors=True)  # another process finished the same cohort first
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return final


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    grid = tuple(int(n) for n in shape)
    if len(grid) != 3 or min(grid) < 8:
        raise ValueError(f"shape must be 3 sizes (X, Y, Z), each >= 8, got {tuple(shape)}")
    return grid  # type: ignore[return-value]


def _smooth_noise(rng: np.random.Generator, grid: tuple, spacing: np.ndarray, correlation_mm: float) -> np.ndarray:
    """Gaussian-correlated noise with unit standard deviation, float32 (X, Y, Z).

    Smooth fields are drawn on a coarser grid and linearly upsampled: the FFT then costs little,
    and a field smoother than the coarse spacing loses nothing to linear interpolation.
    """
    sigma_voxels = correlation_mm / spacing
    factor = int(np.clip(np.floor(sigma_voxels.min() / 1.5), 1, 8))
    coarse_shape = grid if factor == 1 else tuple(max(4, -(-n // factor) + 1) for n in grid)
    white = rng.standard_normal(coarse_shape, dtype=np.float32)
    sigma_coarse = sigma_voxels * (np.array(coarse_shape) - 1) / (np.array(grid) - 1) if factor > 1 else sigma_voxels
    spectrum = fft.rfftn(white)
    frequencies = np.meshgrid(
        *[fft.fftfreq(n) for n in coarse_shape[:-1]], fft.rfftfreq(coarse_shape[-1]), indexing="ij", sparse=True
    )
    gain = np.exp(-2.0 * np.pi**2 * sum((s * f) ** 2 for s, f in zip(sigma_coarse, frequencies)))
    field = fft.irfftn(spectrum * gain.astype(np.float32), s=coarse_shape).astype(np.float32)
    if factor > 1:
        field = ndimage.zoom(field, np.array(grid) / np.array(coarse_shape), order=1, grid_mode=False)
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    return field


def _anatomy(grid: tuple, spacing: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tissue codes (uint8, indices into TISSUE_CONTRASTS) and the brain mask, both (X, Y, Z)."""
    # World positions (mm) of voxel centres, centred on the grid.
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(grid, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij")

    # Subject pose and size: a small rotation about the vertical and left-right axes, a shift, a scale.
    size = rng.uniform(0.9, 1.06)
    yaw, pitch = np.deg2rad(rng.uniform(-5, 5)), np.deg2rad(rng.uniform(-4, 4))
    x, y, z = x - rng.uniform(-4, 4), y - rng.uniform(-4, 4), z - 6.0 - rng.uniform(-4, 4)
    x, y = np.cos(yaw) * x + np.sin(yaw) * y, -np.sin(yaw) * x + np.cos(yaw) * y
    y, z = np.cos(pitch) * y + np.sin(pitch) * z, -np.sin(pitch) * y + np.cos(pitch) * z

    # Smooth random deformation: every subject's anatomy is a different warp of the template.
    warp_mm = 4.0
    x = x + warp_mm * _smooth_noise(rng, grid, spacing, 25.0)
    y = y + warp_mm * _smooth_noise(rng, grid, spacing, 25.0)
    z = z + warp_mm * _smooth_noise(rng, grid, spacing, 25.0)

    semi_axes = np.array([68.0, 84.0, 62.0]) * size  # brain half-width, half-length, half-height (mm)

    # Tumour, in template coordinates before the mass effect: centre inside a hemisphere, away from the surface.
    while True:
        direction = rng.normal(size=3)
        radius = rng.uniform(0.1, 0.6) * direction / np.linalg.norm(direction)
        centre = radius * semi_axes
        if abs(centre[0]) > 12.0:
            break
    small = rng.random() < 0.2
    core_radius = rng.uniform(3.5, 6.0) if small else rng.uniform(9.0, 22.0)
    oedema_factor = rng.uniform(1.3, 2.1)
    offset = (x - centre[0], y - centre[1], z - centre[2])
    distance = np.sqrt(offset[0] ** 2 + offset[1] ** 2 + offset[2] ** 2) + 1e-3

    # Mass effect: healthy tissue near the tumour is pushed outwards, i.e. read from nearer the centre.
    push = 0.6 * core_radius * np.exp(-((distance / (1.6 * core_radius * oedema_factor**0.5)) ** 2))
    shrink = np.maximum(1.0 - push / distance, 0.0)
    ax, ay, az = centre[0] + offset[0] * shrink, centre[1] + offset[1] * shrink, centre[2] + offset[2] * shrink

    # Brain outline: a noisy ellipsoid. depth is 0 at the surface, 1 at the centre.
    rho = np.sqrt((ax / semi_axes[0]) ** 2 + (ay / semi_axes[1]) ** 2 + (az / semi_axes[2]) ** 2)
    rho *= 1.0 + 0.025 * _smooth_noise(rng, grid, spacing, 20.0)
    brain = rho < 1.0
    depth = 1.0 - rho

    # Cortex: sulci are sheets where a smooth field crosses zero; white matter recedes under them
    # and reaches into the gyri elsewhere, which folds the grey/white boundary.
    sulcal_field = _smooth_noise(rng, grid, spacing, 7.0)
    on_sulcus = np.exp(-((sulcal_field / 0.35) ** 2))
    gyral_field = _smooth_noise(rng, grid, spacing, 10.0)
    white = depth > 0.15 + 0.1 * on_sulcus + 0.04 * gyral_field
    tissue = np.where(white, _CODE["white_matter"], _CODE["grey_matter"]).astype(np.uint8)
    sulcus = (on_sulcus > 0.75) & (depth < 0.04 + 0.14 * on_sulcus)
    fissure = (np.abs(ax) < 1.3) & (depth < 0.45) & (az > -25.0)  # interhemispheric fissure, above the corpus callosum
    tissue[sulcus | fissure | (depth < 0.012)] = _CODE["csf"]

    # Deep grey nuclei (thalamus, basal ganglia) either side of the ventricles.
    for side in (-1.0, 1.0):
        nucleus = ((ax - side * 17.0 * size) / 9.0) ** 2 + ((ay + 4.0) / 15.0) ** 2 + ((az - 2.0) / 9.0) ** 2 < size**2
        tissue[nucleus] = _CODE["grey_matter"]

    # Lateral ventricles: bananas that bend outwards posteriorly; a slit-like third ventricle.
    ventricle_size = size * rng.uniform(0.8, 1.4)
    ventricles = np.zeros(grid, dtype=bool)
    for side in (-1.0, 1.0):
        bend = side * (6.0 + 0.004 * ay**2) * ventricle_size
        ventricles |= ((ax - bend) / (5.5 * ventricle_size)) ** 2 + ((ay - 2.0) / (30.0 * size)) ** 2 + (
            (az - 12.0) / (8.0 * size)
        ) ** 2 < 1.0
    ventricles |= (ax / 1.6) ** 2 + ((ay + 6.0) / (11.0 * size)) ** 2 + ((az + 2.0) / (8.0 * size)) ** 2 < 1.0
    tissue[ventricles] = _CODE["csf"]

    # Choroid plexus in the ventricular atria and a sparse vessel network (where two smooth
    # fields both cross zero: curves), plus the superior sagittal sinus along the top midline.
    # All enhance in T1ce only.
    plexus = np.zeros(grid, dtype=bool)
    for side in (-1.0, 1.0):
        plexus |= ((ax - side * 10.0 * ventricle_size) / 3.0) ** 2 + ((ay + 20.0 * size) / 5.0) ** 2 + (
            (az - 12.0) / 3.5
        ) ** 2 < 1.0
    vessel_a = _smooth_noise(rng, grid, spacing, 14.0)
    vessel_b = _smooth_noise(rng, grid, spacing, 14.0)
    vessels = (np.abs(vessel_a) < 0.07) & (np.abs(vessel_b) < 0.07) & (depth > 0.03)
    sinus = (np.abs(ax) < 2.5) & (depth < 0.035) & (az > 0.0)
    tissue[(plexus & ventricles) | vessels | sinus] = _CODE["vessel"]

    # Glioma, defined on the unpushed coordinates: irregular radii from smooth noise.
    shape_noise = _smooth_noise(rng, grid, spacing, max(4.0, 0.8 * core_radius))
    core_distance = distance / core_radius * (1.0 + 0.22 * shape_noise)
    oedema_noise = _smooth_noise(rng, grid, spacing, 10.0)
    oedema_distance = distance / (core_radius * oedema_factor) * (1.0 + 0.3 * oedema_noise)
    # Oedema spreads along white matter: it reaches further there than into grey matter.
    oedema = (oedema_distance < 1.0) & (white | (oedema_distance < 0.75))
    tissue[oedema & brain] = _CODE["oedema"]
    core = core_distance < 1.0
    enhancing_kind = rng.random() < 0.85  # the rest are non-enhancing (low-grade-like) tumours
    if enhancing_kind:
        rim_thickness = rng.uniform(0.35, 0.6) if not small else 1.0  # small lesions enhance solidly
        gap_noise = _smooth_noise(rng, grid, spacing, 8.0)
        rim = core & (core_distance >= 1.0 - rim_thickness) & (gap_noise < 1.2)  # rims are sometimes open
        tissue[core & brain] = _CODE["core"]
        tissue[rim & brain] = _CODE["enhancing"]
    else:
        tissue[core & brain] = _CODE["core"]
    tissue[~brain] = _CODE["background"]
    return tissue, brain
