"""``synthesis`` group: one 240 x 240 x 155 session end to end through ``ds3kit synthesize``.

The timed call is ``ds3kit.cli.main(["synthesize", ...])``: load the checkpoint, read and normalise T1 / T2 /
FLAIR, run the generator over the axial slices that hold brain (the command skips the others), mask, write the
NIfTI. FLOPs are the generator's (one slice counted with torch.utils.flop_counter, times the slices computed);
reading, normalising and writing add time but no counted FLOPs, so the fraction of peak is that of the whole
command. ``slices_per_s`` counts all 155 slices of the volume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _measure import PeakMemory, Timed, count_flops, throughput_info, write_profile

SESSION_SHAPE = (240, 240, 155)  # BraTS: 1 mm isotropic, 155 axial slices
# None: the command's default (1 slice of 240 x 240 per batch on CPU, 16 on GPU), then fixed sizes to compare.
BATCH_SIZES = [pytest.param(None, id="default"), pytest.param(4, id="4"), pytest.param(16, id="16")]

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


@pytest.fixture(scope="module")
def session_files(tmp_path_factory) -> dict[str, Path]:
    """A phantom session at the BraTS shape, written as T1 / T2 / FLAIR NIfTI files."""
    from ds3kit.data import make_phantom_case, phantom_affine, save_volume

    folder = tmp_path_factory.mktemp("session")
    case = make_phantom_case(SESSION_SHAPE, seed=3)
    affine = phantom_affine(SESSION_SHAPE)
    files = {}
    for modality in ("t1", "t2", "flair"):
        files[modality] = folder / f"bench_{modality}.nii.gz"
        save_volume(files[modality], case[modality], affine)
    return files


@pytest.mark.benchmark(group="synthesis")
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("device", DEVICES)
def test_synthesize_session(benchmark, session_files, tmp_path, device: str, batch_size: int | None) -> None:
    from ds3kit.cli import main
    from ds3kit.inference import default_batch_size, save_generator
    from ds3kit.models import build_generator

    if benchmark.disabled and batch_size is not None:
        pytest.skip("--benchmark-disable checks the code path once, at the default batch size")
    dev = torch.device(device)
    default = default_batch_size(dev, SESSION_SHAPE[:2])
    if batch_size == default:
        pytest.skip(f"batch size {batch_size} is this device's default, timed as [{device}-default]")
    # What a user runs: the preset trained on that kind of device (CI: the tiny one, the code path is the same).
    preset = "tiny" if benchmark.disabled else ("large" if dev.type == "cuda" else "small")
    torch.manual_seed(0)
    generator = build_generator(preset).eval()
    checkpoint = tmp_path / f"{preset}.pt"
    save_generator(checkpoint, generator, method="benchmark", role="random-init")
    out = tmp_path / "t1ce.nii.gz"
    argv = [
        "synthesize",
        "--t1",
        str(session_files["t1"]),
        "--t2",
        str(session_files["t2"]),
        "--flair",
        str(session_files["flair"]),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--device",
        device,
        "--no-progress",
    ]
    if batch_size is not None:
        argv += ["--batch-size", str(batch_size)]

    def synthesize() -> int:
        return main(argv)

    from ds3kit.data import load_session

    brain = load_session(session_files["t1"], session_files["t2"], session_files["flair"]).brain_mask
    computed_slices = int(brain.any(axis=(0, 1)).sum())
    with torch.no_grad():
        flops = count_flops(lambda: generator(torch.rand(1, 3, *SESSION_SHAPE[:2]))) * computed_slices
    timed = Timed(synthesize, dev)
    # The default is the figure with a target: three rounds (best and median kept); one round per comparison size.
    rounds = 1 if benchmark.disabled else (3 if batch_size is None or dev.type == "cuda" else 1)
    with PeakMemory(dev) as memory:
        code = benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0 if dev.type == "cpu" else 1)
    assert code == 0
    import nibabel

    written = nibabel.load(out)
    assert written.shape == SESSION_SHAPE and np.isfinite(np.asarray(written.dataobj)).all()
    benchmark.extra_info.update(
        throughput_info(
            device=dev,
            dtype="float32",
            flops=flops,
            seconds=timed.best,
            median_seconds=timed.median,
            memory=memory,
            seconds_per_volume=timed.best,
            seconds_per_volume_median=timed.median,
            slices_per_s=SESSION_SHAPE[2] / timed.best,
            rounds=len(timed.durations),
            computed_slices=computed_slices,
            shapes={"volume": list(SESSION_SHAPE), "batch_size": batch_size or default, "preset": preset},
        )
    )
    if batch_size is None:
        write_profile(f"synthesis-{device}", synthesize, dev, steps=1)
