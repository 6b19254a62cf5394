"""``ds3kit evaluate``: SSIM, PSNR and MSE of a synthesized T1ce against the real one, whole image, brain, tumour."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a synthesized T1ce against the real one (one JSON line)",
        description="Prints one JSON line: ssim, psnr, mse over the whole volume, and brain_* / tumour_* inside the "
        "brain mask (--mask, else estimated from the target) and the tumour (--seg > 0). The target is normalised "
        "as in training (robust percentiles inside the brain -> [0, 1]); so is the prediction unless it already "
        "lies in [0, 1] (ds3kit synthesize writes that scale). A prediction on another grid is resampled onto the "
        "target's grid through the affines.",
    )
    parser.add_argument("--pred", required=True, type=Path)
    parser.add_argument("--target", required=True, type=Path)
    parser.add_argument("--seg", type=Path, default=None, help="segmentation on the target grid (tumour = label > 0)")
    parser.add_argument("--mask", type=Path, default=None, help="brain mask on the target grid")
    parser.add_argument("--data-range", type=float, default=1.0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ds3kit.data import brain_mask, fit_intensity_scaling, load_volume, resample_to_reference, same_grid
    from ds3kit.errors import InputError
    from ds3kit.metrics import region_metrics

    target = load_volume(args.target)
    pred = load_volume(args.pred)
    resampled = not same_grid(pred, target)
    if resampled:
        print(f"ds3kit evaluate: {args.pred} lies on another grid; resampled onto {args.target}'s", file=sys.stderr)
        pred = resample_to_reference(pred, target)

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
    tumour = region(args.seg, "segmentation")

    truth = fit_intensity_scaling(target.data, brain).normalize(target.data)
    prediction = pred.data
    if prediction.min() < 0 or prediction.max() > 1:
        prediction = fit_intensity_scaling(prediction, brain).normalize(prediction)

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))[None, None]

    metrics = region_metrics(
        tensor(prediction), tensor(truth), brain_mask=tensor(brain),
        tumour_mask=None if tumour is None or not tumour.any() else tensor(tumour), data_range=args.data_range,
    )
    print(json.dumps({"pred": str(args.pred), "target": str(args.target), "resampled": resampled, **metrics}))
    return 0
