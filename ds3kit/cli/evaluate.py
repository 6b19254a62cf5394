"""``ds3kit evaluate``: SSIM, PSNR and MSE of a synthesized T1ce against the real one, whole volume, brain, tumour.

Intensity units (``--scaling``, see ``docs/metrics.md``): metrics are only meaningful when both volumes are in the
same units, so ONE map is used for both. By default (``auto``) the real T1ce is put on ds3kit's training scale (the
brain mean minus / plus 3 sd -> [0, 1], 0 outside the brain, exactly what training and
``evaluate_generator`` do); a prediction that already lies in [0, 1] is taken to be on that scale (what
``ds3kit synthesize`` writes) and used as is, any other prediction is taken to be in the target's scanner units and
gets the target's map. The prediction never gets a map fitted on itself: that would hide a global intensity error.
When both files already lie in [0, 1], both are used as they are.

With a ``--checkpoint`` that stores its discriminator, the report also holds ``reliability``: the Pearson correlation
of the reliability map (``ds3kit.reliability``) and of the edge-map baseline with the absolute error, in the brain
and the tumour.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

_SCALINGS = ("auto", "target", "none")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a synthesized T1ce against the real one (one JSON line on stdout)",
        description="Prints one JSON line: ssim, psnr, mse over the whole 3-D volume, and brain_* / tumour_* inside "
        "the brain (--mask, else estimated from the target as in training) and the tumour (--seg > 0; keys left out "
        "when the segmentation has no tumour). A prediction on another grid is resampled onto the target's grid "
        "through the affines (trilinear), with a note on stderr. --scaling auto (default): the target is normalised "
        "as in training (brain mean +- 3 sd -> [0, 1], 0 outside); a prediction already in "
        "[0, 1] is used as is (ds3kit synthesize writes that scale), any other gets the target's map; when both "
        "files are already in [0, 1] both are used as is. --scaling target: the target's map for both (both in "
        "scanner units). --scaling none: both as is (set --data-range). An infinite PSNR (identical volumes) is "
        "written as null. With a --checkpoint that stores its discriminator (and --t1, --t2, --flair), 'reliability' "
        "gives the Pearson correlation of its reliability map and of the edge-map baseline with |pred - target| in "
        "the brain and the tumour.",
    )
    parser.add_argument("--pred", required=True, type=Path, help="synthesized T1ce (NIfTI)")
    parser.add_argument("--target", required=True, type=Path, help="real T1ce (NIfTI), the reference grid")
    parser.add_argument(
        "--seg", type=Path, default=None, help="segmentation voxel-aligned with the target; tumour = label > 0"
    )
    parser.add_argument(
        "--mask", type=Path, default=None, help="brain mask voxel-aligned with the target (> 0 = brain)"
    )
    parser.add_argument("--data-range", type=float, default=1.0, help="intensity span for PSNR and SSIM (default 1)")
    parser.add_argument(
        "--scaling", choices=_SCALINGS, default="auto", help="intensity units, see above (default auto)"
    )
    baselines = parser.add_argument_group(
        "baselines", "score the trivial predictors beside --pred, on the same voxels (docs/metrics.md)"
    )
    baselines.add_argument("--t1", type=Path, default=None, help="the T1 the prediction was made from: adds copy-T1")
    baselines.add_argument("--t2", type=Path, default=None, help="its T2 (with --flair and --checkpoint: adds linear)")
    baselines.add_argument("--flair", type=Path, default=None, help="its FLAIR")
    baselines.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="the generator checkpoint whose run fitted the linear baseline (its metadata holds it); "
        "when it stores its discriminator, the reliability map's correlation with |error| "
        "is reported too (docs/metrics.md, 'Reliability map')",
    )
    baselines.add_argument(
        "--segmenter",
        type=Path,
        default=None,
        help="a recipes/segmenter.py checkpoint: adds dice_et/dice_tc/dice_wt for the prediction, "
        "copy-T1 (floor) and the real T1ce (ceiling); needs --seg, --t1, --t2, --flair",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so `ds3kit --help` stays fast.
    import torch

    from ds3kit.data import brain_mask, load_volume, resample_to_reference, same_grid
    from ds3kit.errors import InputError
    from ds3kit.metrics import region_metrics

    if not (math.isfinite(args.data_range) and args.data_range > 0):
        raise InputError(f"--data-range must be a finite number > 0, got {args.data_range}")

    target = load_volume(args.target)
    pred = load_volume(args.pred, allow_constant=True)  # an all-zero prediction is bad, not unreadable
    as_given = pred
    resampled = not same_grid(pred, target)
    if resampled:
        print(
            f"ds3kit evaluate: {args.pred} (shape {pred.shape}) lies on another grid than {args.target} "
            f"(shape {target.shape}); resampled onto the target's grid through the affines (trilinear)",
            file=sys.stderr,
        )
        pred = resample_to_reference(pred, target, order=1)

    def region(path: Path | None, what: str) -> np.ndarray | None:
        if path is None:
            return None
        volume = load_volume(path, allow_constant=True)
        if volume.shape != target.shape:
            raise InputError(f"{path}: {what} shape {volume.shape} differs from the target's {target.shape}")
        return volume.data > 0

    brain = region(args.mask, "mask")
    if brain is None:
        brain = brain_mask([target.data])
    elif not brain.any():
        raise InputError(f"{args.mask}: the brain mask is empty (no voxel > 0)")
    tumour = region(args.seg, "segmentation")

    truth, prediction, scaled = _scale(target.data, pred.data, brain, args.scaling)

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))[None, None]

    metrics = region_metrics(
        tensor(prediction),
        tensor(truth),
        brain_mask=tensor(brain),
        tumour_mask=None if tumour is None or not tumour.any() else tensor(tumour),
        data_range=args.data_range,
    )
    baselines = {}
    for name, volume in _baseline_volumes(args).items():
        if not same_grid(volume, target):
            volume = resample_to_reference(volume, target, order=1)
        scores = region_metrics(
            tensor(np.where(brain, volume.data, np.float32(0.0))),
            tensor(truth),
            brain_mask=tensor(brain),
            tumour_mask=None if tumour is None or not tumour.any() else tensor(tumour),
            data_range=args.data_range,
        )
        baselines[name] = {key: value if math.isfinite(value) else None for key, value in scores.items()}
    report = {
        "pred": str(args.pred),
        "target": str(args.target),
        "resampled": resampled,
        "scaling": scaled,
        "data_range": args.data_range,
        "brain_voxels": int(brain.sum()),
        "tumour_voxels": None if tumour is None else int(tumour.sum()),
        # Strict JSON has no Infinity: an infinite PSNR (identical volumes) is written as null.
        **{key: value if math.isfinite(value) else None for key, value in metrics.items()},
    }
    if args.segmenter is not None:
        dice = _dice_rows(args, pred)
        report.update(dice.pop("prediction"))
        for name, scores in dice.items():
            baselines.setdefault(name, {}).update(scores)
    if baselines:
        report["baselines"] = baselines
        floor = baselines["copy-T1"].get("brain_psnr")
        if floor is not None and metrics.get("brain_psnr") is not None:
            report["beats_copy_t1"] = bool(metrics["brain_psnr"] > floor)
    reliability = _reliability_rows(args, as_given, target, prediction, truth, brain, tumour)
    if reliability is not None:
        report["reliability"] = reliability
    print(json.dumps(report, allow_nan=False))
    return 0


def _dice_rows(args: argparse.Namespace, pred) -> dict[str, dict[str, float]]:
    """Dice of the segmenter run with the prediction, with T1 (copy-T1) and with the real T1ce in place of T1ce."""
    from ds3kit.data import load_session
    from ds3kit.errors import InputError
    from ds3kit.segment import check_reads_t1ce, load_segmenter, reference_t1ce, session_dice

    missing = [name for name in ("seg", "t1", "t2", "flair") if getattr(args, name) is None]
    if missing:
        raise InputError(f"--segmenter needs --{', --'.join(missing)} (it segments T1, T1ce, T2, FLAIR against --seg)")
    segmenter, metadata = load_segmenter(args.segmenter)
    try:
        check_reads_t1ce(metadata)
    except ValueError as error:
        raise InputError(f"--segmenter {args.segmenter}: {error}") from None
    session = load_session(args.t1, args.t2, args.flair, t1ce=args.target, seg=args.seg)
    synthesis, (low, high) = _synthesis_on_t1_grid(pred, session)
    if synthesis is None:
        raise InputError(
            f"{args.pred}: --segmenter needs the prediction in ds3kit's [0, 1] scale (what ds3kit "
            f"synthesize writes), got values in [{low:.3g}, {high:.3g}]"
        )
    return {
        "prediction": session_dice(segmenter, session, synthesis),
        "copy-T1": session_dice(segmenter, session, reference_t1ce(session, "copy_t1")),
        "real T1ce (segmenter)": session_dice(segmenter, session, reference_t1ce(session, "real_t1ce")),
    }


def _synthesis_on_t1_grid(pred, session) -> tuple[np.ndarray | None, tuple[float, float]]:
    """The prediction on the session's T1 grid, 0 outside its brain, and its value range; None (with the range) when
    it is not in ds3kit's [0, 1] scale (what ds3kit synthesize writes, and what the networks were trained on)."""
    from ds3kit.data import Volume, resample_to_reference, same_grid

    reference = Volume(session.inputs[0], session.affine, session.header)
    on_t1_grid = pred if same_grid(pred, reference) else resample_to_reference(pred, reference, order=1)
    synthesis = on_t1_grid.data
    low, high = float(synthesis.min()), float(synthesis.max())
    if low < 0 or high > 1:
        return None, (low, high)
    return np.where(session.brain_mask, synthesis, np.float32(0.0)), (low, high)


def _reliability_rows(
    args: argparse.Namespace,
    pred,
    target,
    prediction: np.ndarray,
    truth: np.ndarray,
    brain: np.ndarray,
    tumour: np.ndarray | None,
) -> dict | None:
    """The reliability map's and the edge map's Pearson correlation with |error| in the brain (and the tumour).

    None when there is no ``--checkpoint`` or it stores no discriminator. ``pred`` is the prediction as read; ``prediction``
    and ``truth`` are on the target's grid in the units the metrics use. Both maps are made on the T1 grid (the
    discriminator judges slices of the session, as in training) and brought onto the target's grid like the
    prediction.
    """
    if args.checkpoint is None:
        return None
    from ds3kit.checkpoint import discriminator_gan_mode, load_discriminator

    discriminator = load_discriminator(args.checkpoint)
    if discriminator is None:
        return None
    from ds3kit.data import Volume, load_session, resample_to_reference, same_grid
    from ds3kit.reliability import edge_map, error_correlation, reliability_volume

    session = load_session(args.t1, args.t2, args.flair)
    synthesis, (low, high) = _synthesis_on_t1_grid(pred, session)
    if synthesis is None:
        print(
            f"ds3kit evaluate: {args.pred} holds values in [{low:.3g}, {high:.3g}], not ds3kit's [0, 1] scale that "
            "the discriminator judges; the reliability map is left out",
            file=sys.stderr,
        )
        return None
    maps = {
        "discriminator": reliability_volume(
            synthesis,
            discriminator,
            session.inputs,
            session.brain_mask,
            gan_mode=discriminator_gan_mode(args.checkpoint),
        ),
        "edge_map": edge_map(synthesis, session.brain_mask),
    }
    regions = {"brain": brain}
    if tumour is not None and tumour.any():
        regions["tumour"] = tumour
    rows: dict = {}
    for name, volume in maps.items():
        on_target = Volume(volume, session.affine, session.header)
        if not same_grid(on_target, target):
            on_target = resample_to_reference(on_target, target, order=1)
        rows[name] = {
            region: error_correlation(on_target.data, prediction, truth, mask) for region, mask in regions.items()
        }
    rows["beats_edge_map"] = bool(rows["discriminator"]["brain"] > rows["edge_map"]["brain"])
    return rows


def _baseline_volumes(args: argparse.Namespace) -> dict:
    """copy-T1 (and linear) on the T1 grid, normalised as in training, as Volumes to resample onto the target."""
    from ds3kit.baselines import COPY_T1, LINEAR, LinearBaseline, copy_t1
    from ds3kit.data import Volume, load_session, load_volume
    from ds3kit.errors import InputError

    given = {name: getattr(args, name) for name in ("t1", "t2", "flair", "checkpoint") if getattr(args, name)}
    if not given:
        return {}
    if "t1" not in given:
        raise InputError(f"--{', --'.join(given)} given without --t1: the baselines are made from the inputs")
    if ("t2" in given) != ("flair" in given):
        raise InputError("--t2 and --flair go together (the brain mask and normalisation use all three inputs)")
    if "checkpoint" in given and "t2" not in given:
        raise InputError("--checkpoint (the linear baseline) needs --t2 and --flair as well")
    linear = None
    if "checkpoint" in given:
        from ds3kit.checkpoint import load_discriminator
        from ds3kit.inference import load_generator

        _, metadata = load_generator(args.checkpoint)
        fitted = metadata.get("linear_baseline")
        if fitted is None and load_discriminator(args.checkpoint) is None:
            raise InputError(
                f"{args.checkpoint}: the checkpoint records no linear baseline (written by an older ds3kit, "
                "or by a run without paired subjects) and no discriminator"
            )
        if fitted is None:  # the checkpoint still serves: its discriminator draws the reliability map
            print(
                f"ds3kit evaluate: {args.checkpoint} records no linear baseline; that row is left out", file=sys.stderr
            )
        else:
            linear = LinearBaseline(weights=tuple(fitted["weights"]), intercept=float(fitted["intercept"]))
    t1 = load_volume(args.t1)
    others = (args.t2, args.flair) if "t2" in given else (t1, t1)  # copy-T1 alone needs only T1
    session = load_session(t1, *others)
    volumes = {COPY_T1: Volume(copy_t1(session), session.affine, session.header)}
    if linear is not None:
        volumes[LINEAR] = Volume(linear(session), session.affine, session.header)
    return volumes


def _scale(target: np.ndarray, pred: np.ndarray, brain: np.ndarray, scaling: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Both volumes in one set of units. Returns (target, pred, what was done), the last one of:
    ``"none"`` (both as is), ``"target"`` (target normalised, prediction as is), ``"target_map_on_both"``."""
    from ds3kit.data import fit_intensity_scaling

    def in_unit_range(data: np.ndarray) -> bool:
        return bool(data.min() >= 0.0 and data.max() <= 1.0)

    if scaling == "none" or (scaling == "auto" and in_unit_range(target) and in_unit_range(pred)):
        return target, pred, "none"
    mapping = fit_intensity_scaling(target, brain)
    # As in training (ds3kit.data.Session): [0, 1] from the brain's mean and spread, 0 outside it. The map's 0 is
    # not scanner 0 (the mean minus 3 sd is usually negative), so the prediction is cut to the brain the same way.
    truth = np.where(brain, mapping.normalize(target), np.float32(0.0))
    if scaling == "auto" and in_unit_range(pred):
        return truth, pred, "target"
    return truth, np.where(brain, mapping.normalize(pred), np.float32(0.0)), "target_map_on_both"
