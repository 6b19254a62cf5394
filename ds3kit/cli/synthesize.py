"""``ds3kit synthesize``: T1ce from a real session's T1, T2 and FLAIR, written on the T1 grid."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ds3kit.errors import InputError
from ds3kit.utils.flips import FLIPS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synthesize",
        help="synthesize a T1ce volume from T1, T2 and FLAIR NIfTI files",
        description="Brings T2 and FLAIR onto the T1 grid through their affines, normalises each modality as in "
        "training, runs the generator over the axial slices, and writes T1ce (normalised [0, 1] units, float32) "
        "on the T1 grid with the T1 affine. The output appears only when complete.",
    )
    parser.add_argument("--t1", required=True, type=Path)
    parser.add_argument("--t2", required=True, type=Path)
    parser.add_argument("--flair", required=True, type=Path)
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="a ds3kit generator checkpoint (e.g. student.pt)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output NIfTI path (.nii or .nii.gz)")
    parser.add_argument("--mask", type=Path, default=None, help="brain mask on the T1 grid (default: estimated)")
    parser.add_argument(
        "--difficulty",
        type=Path,
        default=None,
        metavar="OUT",
        help="also write the reliability map (.nii or .nii.gz) on the T1 grid: per voxel 1 - realness of the "
        "checkpoint's discriminator on the synthesis, in [0, 1] (1 = looks unlike real T1ce), 0 outside the brain; "
        "needs a checkpoint that stores its discriminator (docs/metrics.md, 'Reliability map')",
    )
    parser.add_argument(
        "--flips",
        choices=tuple(FLIPS),
        default="all",
        help="test-time flip averaging: the mean of the synthesis on the flipped slices, each flipped back; 'all' "
        "(the four in-plane flips, four passes per slice, what the recipes' test scores use), 'lr' (left-right "
        "only) or 'none' (one pass) (default: all)",
    )
    parser.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="write the network's output as it is, without the intensity calibration the checkpoint carries "
        "(fitted on its run's validation subjects; docs/models.md, 'Intensity calibration')",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: CUDA when present)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per forward pass (default: about one 240 x 240 slice's pixels per batch on CPU, 16 on GPU)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so `ds3kit --help` stays fast.
    import torch

    from ds3kit.data import load_session, save_volume
    from ds3kit.inference import load_generator, synthesize_volume

    for flag, path in (("--out", args.out), ("--difficulty", args.difficulty)):
        if path is None:
            continue
        if not str(path).endswith((".nii", ".nii.gz")):
            raise InputError(f"{flag} {path}: expected a .nii or .nii.gz path")
        if not path.parent.is_dir():
            raise InputError(f"{flag} {path}: output directory {path.parent} does not exist")
    if args.difficulty is not None and args.difficulty.resolve() == args.out.resolve():
        raise InputError(f"--difficulty {args.difficulty}: the same path as --out")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {args.device}: CUDA is not available on this machine")

    started = time.perf_counter()
    generator, metadata = load_generator(args.checkpoint, device=device)
    discriminator = None
    if args.difficulty is not None:  # checked before any synthesis: a checkpoint without D^S writes nothing
        from ds3kit.checkpoint import discriminator_gan_mode, load_discriminator

        discriminator = load_discriminator(args.checkpoint, device=device)
        if discriminator is None:
            raise InputError(
                f"--difficulty: {args.checkpoint} holds no discriminator, so it cannot draw the reliability map "
                "(the checkpoint predates ds3kit storing one, or its run was not trained with one); nothing written"
            )
        gan_mode = discriminator_gan_mode(args.checkpoint)
    fitted_with = (metadata.get("calibration") or {}).get("flips")
    if args.calibrate and generator.calibration.fitted and fitted_with not in (None, args.flips):
        print(
            f"note: {args.checkpoint}'s intensity calibration was fitted after --flips {fitted_with}, and this "
            f"synthesis runs --flips {args.flips}",
            file=sys.stderr,
        )
    session = load_session(args.t1, args.t2, args.flair, mask=args.mask)
    prediction = synthesize_volume(
        generator,
        session.inputs,
        brain_mask=session.brain_mask,
        batch_size=args.batch_size,
        device=device,
        progress=args.progress,
        flips=args.flips,
        calibrate=args.calibrate,
    )
    reliability = None
    if discriminator is not None:
        from ds3kit.reliability import reliability_volume

        # Computed before either file is written: a failure here leaves no half of the output behind.
        reliability = reliability_volume(
            prediction,
            discriminator,
            session.inputs,
            session.brain_mask,
            gan_mode=gan_mode,
            batch_size=args.batch_size,
            device=device,
        )
    save_volume(args.out, prediction, session.affine, session.header)
    if reliability is not None:
        save_volume(args.difficulty, reliability, session.affine, session.header)
    elapsed = time.perf_counter() - started
    slices = prediction.shape[-1]
    print(
        f"wrote {args.out} {tuple(prediction.shape)} on the T1 grid; {slices} slices in {elapsed:.1f} s "
        f"({slices / elapsed:.1f} slices/s) with {metadata.get('method', '?')}/{metadata.get('role', '?')}",
        file=sys.stderr,
    )
    if reliability is not None:
        print(
            f"wrote {args.difficulty}: the reliability map (1 - realness of the discriminator, [0, 1])", file=sys.stderr
        )
    return 0
