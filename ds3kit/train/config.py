"""Run configuration shared by every recipe, and the command-line flags that set it."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ds3kit.models.encoders import check_encoder_size
from ds3kit.utils.flips import FLIPS

SELECTIONS = ("best-val", "last", "average")
#: The data settings of the unpaired pool: inputs only (the paper), or also real T1ce of other unpaired subjects.
UNPAIRED_T1CE = ("none", "other-subjects")


# The settings that make two runs of one length different trainings (the length is checked on its own): a run
# resumes only with these unchanged, and the quality study reuses a finished run only when they match its arm's.
TRAINING_SETTINGS = (
    "seed",
    "paired_fraction",
    "batch_size",
    "image_size",
    "lr",
    "method_options",
    "augment",
    "augment_intensity",
    "tumour_repeats",
    "unpaired_tumour_repeats",
    "unpaired_t1ce",
    "phantom_cases",
    "preset",
    "encoder",
    "generator_output",
    "base_channels",
    "num_levels",
)


@dataclass
class RunConfig:
    """What a training run needs besides the method's own options.

    ``steps`` counts optimiser steps of the whole run (for DS3-Net: teacher warm-up plus joint training).
    ``batch_size`` is per process; under torchrun the global batch is ``batch_size * world_size``.
    """

    data: str | None = None  # a BraTS-layout root; None = the built-in phantom cohort
    cache_dir: str | None = (
        None  # the preprocessed cache; None = $DS3KIT_CACHE/preprocessed or ~/.cache/ds3kit/preprocessed
    )
    preprocess_workers: int = 1  # processes preprocessing cases missing from the cache
    data_workers: int | None = None  # DataLoader reader processes; None = 0 on CPU, min(4, cores // 2) on CUDA
    out: str = "runs/ds3net"
    paired_fraction: float = 0.05
    steps: int = 1200
    epochs: float | None = None  # if set, overrides steps: passes over the paired (or unpaired) training slices
    batch_size: int = 4
    image_size: int | None = 96
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lr_decay_fraction: float = 0.5  # linear decay to zero over this last fraction of the steps (pix2pix)
    device: str | None = None  # None: CUDA when present
    seed: int = 0
    preset: str = "small"
    encoder: str = "builtin"
    generator_output: str = "residual"  # "residual": a learned mix of the inputs plus a correction; or "sigmoid"
    base_channels: int | None = None  # generator width (first level's channels per modality); None: the preset's
    num_levels: int | None = None  # generator depth (encoder levels); None: the preset's
    augment: bool = True
    augment_intensity: bool = True  # the augmentation's random gamma, bias field and noise on the inputs
    tumour_repeats: int = 2  # paired stream: each tumour slice listed 1 + N times per epoch (0: uniform)
    unpaired_tumour_repeats: int = 0  # the same for the unpaired stream (DS3-Net's student); 0: every slice once
    unpaired_t1ce: str = "none"  # "other-subjects": half the unpaired subjects lend real T1ce, the others inputs
    val_every: int = 100
    # Which weights ship: "best-val" (the step of best validation brain PSNR), "last", or "average" (the uniform average
    # of the weights at every validation check in the learning-rate decay, where the network has trained).
    select: str = "best-val"
    log_every: int = 10
    checkpoint_every: int = 250
    stop_after_steps: int | None = None
    resume: bool = False
    amp: bool = True  # bf16 autocast: on CUDA, and on CPUs with native bf16 (trainer.bf16_autocast_pays)
    channels_last: bool = True  # CUDA only
    compile: bool = False
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    phantom_cases: int = 40
    phantom_shape: tuple[int, int, int] = (96, 96, 48)
    eval_batch_size: int | None = None  # None: ds3kit.inference.default_batch_size
    # Test-time flip averaging of the final test evaluation and its predictions (ds3kit.utils.flips.FLIPS); validation,
    # which picks the step that ships, scores single passes.
    test_flips: str = "all"
    # Fit each shipped generator's intensity calibration on the validation subjects (docs/models.md).
    calibrate: bool = True
    max_test_subjects: int | None = None
    segmenter: str | None = None  # a recipes/segmenter.py checkpoint: adds ET/TC/WT Dice to the final report
    num_threads: int | None = None
    progress: bool = True
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {self.select!r}")
        if self.unpaired_t1ce not in UNPAIRED_T1CE:
            raise ValueError(f"unpaired_t1ce must be one of {UNPAIRED_T1CE}, got {self.unpaired_t1ce!r}")
        if self.test_flips not in FLIPS:
            raise ValueError(f"test_flips must be one of {tuple(FLIPS)}, got {self.test_flips!r}")
        for name in ("tumour_repeats", "unpaired_tumour_repeats"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 (0: every slice once), got {getattr(self, name)}")
        if not self.seed >= 0:
            # numpy's generators, which split the cohort, take non-negative seeds only.
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.generator_output not in ("residual", "sigmoid"):
            raise ValueError(f"generator_output must be 'residual' or 'sigmoid', got {self.generator_output!r}")
        # The encoders' own rule, checked before the cohort is read rather than after.
        check_encoder_size(self.encoder, base_channels=self.base_channels, num_levels=self.num_levels)

    def generator_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`ds3kit.models.build_generator` for this run: preset, encoder, head, and
        the width / depth overrides where they are set."""
        kwargs: dict[str, Any] = dict(preset=self.preset, encoder=self.encoder, output=self.generator_output)
        for key in ("base_channels", "num_levels"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def differences(
        self, stored: dict[str, Any], option_defaults: Mapping[str, Any] | None = None
    ) -> dict[str, tuple[Any, Any]]:
        """``{setting: (stored value, this config's value)}`` for the :data:`TRAINING_SETTINGS` where ``stored`` (a
        run's saved :meth:`to_dict`) differs from this config; settings ``stored`` predates are not compared.

        With ``option_defaults`` (the method options dataclass's defaults) the method options compare as the options
        the method ran with: a key one side lacks counts as its default, so a run trained before an option existed
        matches a config that sets that option to its default, and differs from one that sets another value."""
        differences = {}
        for key in TRAINING_SETTINGS:
            if key not in stored:
                continue
            old, new = stored[key], getattr(self, key)
            if key == "method_options" and option_defaults is not None:
                old, new = {**option_defaults, **(old or {})}, {**option_defaults, **(new or {})}
            if old != new:
                differences[key] = (stored[key], getattr(self, key))
        return differences

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in values.items() if key in known}
        for key in ("betas", "phantom_shape"):
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])
        return cls(**values)


# The tiny configuration CI runs: at least 6 optimiser steps, well under 2 minutes on 2 CPU cores.
SMOKE_OVERRIDES: dict[str, Any] = {
    "steps": 8,
    "batch_size": 2,
    "image_size": 48,
    "preset": "tiny",
    "val_every": 4,
    "log_every": 2,
    "checkpoint_every": 4,
    "phantom_cases": 10,
    "phantom_shape": (48, 48, 16),
    "max_test_subjects": 2,
}


# Flag name -> RunConfig field, for every flag whose value maps one to one.
_FLAGS: dict[str, tuple[str, type, str]] = {
    "data": ("--data", str, "BraTS-layout root folder (default: the phantom cohort, generated on first use)"),
    "cache_dir": ("--cache-dir", str, "preprocessed cache folder (see `ds3kit preprocess`)"),
    "preprocess_workers": ("--preprocess-workers", int, "processes preprocessing uncached cases"),
    "data_workers": ("--data-workers", int, "DataLoader worker processes (default: 0 on CPU, up to 4 on CUDA)"),
    "out": ("--out", str, "run directory"),
    "paired_fraction": ("--paired-fraction", float, "fraction of training subjects with T1ce"),
    "steps": ("--steps", int, "optimiser steps of the whole run"),
    "epochs": ("--epochs", float, "passes over the training slices (overrides --steps)"),
    "batch_size": ("--batch-size", int, "per-process batch size"),
    "image_size": ("--image-size", int, "training slices are centre-cropped / zero-padded to this size"),
    "lr": ("--lr", float, "Adam learning rate"),
    "device": ("--device", str, "cpu, cuda, cuda:1 ... (default: CUDA when present)"),
    "seed": ("--seed", int, "seed of the split, the initialisation and the sampling"),
    "preset": ("--preset", str, "network size preset: tiny, small, large"),
    "base_channels": (
        "--base-channels",
        int,
        "generator width: first-level channels per modality (default: the preset's)",
    ),
    "num_levels": ("--num-levels", int, "generator depth: encoder levels (default: the preset's)"),
    "encoder": ("--encoder", str, "modality encoders: 'builtin' or 'timm:<model name>'"),
    "generator_output": (
        "--generator-output",
        str,
        "generator head: 'residual' (inputs' mix + correction) or 'sigmoid' (docs/models.md)",
    ),
    "unpaired_t1ce": (
        "--unpaired-t1ce",
        str,
        "what the unpaired pool holds: 'none' (inputs only, the paper) or 'other-subjects' (half of "
        "the unpaired subjects lend real T1ce, unaligned with the inputs of the other half)",
    ),
    "tumour_repeats": (
        "--tumour-repeats",
        int,
        "paired stream: list each slice holding tumour 1 + N times per epoch (0: every slice once)",
    ),
    "unpaired_tumour_repeats": (
        "--unpaired-tumour-repeats",
        int,
        "unpaired stream (the student's inputs): list each slice holding tumour 1 + N times per epoch (needs the "
        "unpaired subjects' seg; 0: every slice once)",
    ),
    "val_every": ("--val-every", int, "validate every N steps"),
    "select": (
        "--select",
        str,
        "weights that ship: 'best-val' (best validation brain PSNR), 'last', or 'average' (the mean of the weights at "
        "every validation check in the learning-rate decay)",
    ),
    "checkpoint_every": ("--checkpoint-every", int, "write a resumable checkpoint every N steps"),
    "stop_after_steps": ("--stop-after-steps", int, "stop cleanly after N steps, leaving a resumable run"),
    "phantom_cases": ("--phantom-cases", int, "subjects in the phantom cohort"),
    "max_test_subjects": ("--max-test-subjects", int, "evaluate on at most N held-out subjects"),
    "test_flips": (
        "--test-flips",
        str,
        "test-time flip averaging of the final test evaluation: 'none', 'lr' (left-right) or 'all' (the four "
        "in-plane flips)",
    ),
    "segmenter": ("--segmenter", str, "segmenter checkpoint (recipes/segmenter.py): adds ET/TC/WT Dice per model"),
}


def add_run_arguments(parser: argparse.ArgumentParser, defaults: RunConfig | None = None) -> None:
    """The flags every recipe accepts. ``defaults`` lets a recipe change a default (pix2pix: 100 % paired)."""
    d = defaults or RunConfig()
    for name, (flag, kind, help_text) in _FLAGS.items():
        # default None: config_from_args tells "not given" (smoke settings apply) from "given".
        parser.add_argument(flag, dest=name, type=kind, default=None, help=f"{help_text} (default: {getattr(d, name)})")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="no kornia augmentation")
    parser.add_argument(
        "--no-augment-intensity",
        dest="augment_intensity",
        action="store_false",
        help="augmentation warps only: no random gamma, bias field or noise on the inputs",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks")
    parser.add_argument(
        "--no-amp", dest="amp", action="store_false", help="no bf16 autocast (on CUDA, and on CPUs with native bf16)"
    )
    parser.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="ship the networks' output as it is: no intensity calibration fitted on the validation subjects",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--smoke", action="store_true", help="tiny configuration for CI (8 steps, small phantom)")


def config_from_args(args: argparse.Namespace, defaults: RunConfig | None = None) -> RunConfig:
    """Build a :class:`RunConfig` from parsed flags: explicit flags win over ``--smoke``, which wins over defaults."""
    config = dataclasses.replace(defaults) if defaults is not None else RunConfig()
    if args.smoke:
        config = dataclasses.replace(config, **SMOKE_OVERRIDES, out=config.out + "-smoke")
    given = {name: getattr(args, name) for name in _FLAGS if getattr(args, name) is not None}
    return dataclasses.replace(
        config,
        **given,
        augment=args.augment,
        augment_intensity=args.augment_intensity,
        resume=args.resume,
        compile=args.compile,
        amp=args.amp,
        calibrate=args.calibrate,
        progress=args.progress,
        method_options={**config.method_options, **_method_options(args)},
    )


def parse_recipe_args(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    defaults: RunConfig,
    options_type: type,
) -> RunConfig:
    """A recipe's command line as a :class:`RunConfig`, its method options checked by ``options_type``: a value out of
    range is a usage error naming the flag's field (argparse's exit status 2), before any data is read."""
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, defaults)
        options_type(**config.method_options)
    except ValueError as error:
        parser.error(str(error))
    return config


_METHOD_PREFIX = "method__"


def option_defaults(options_type: type) -> dict[str, Any]:
    """The defaults of a method options dataclass (``DS3NetOptions``, ``CUTOptions``, a recipe's own), by field:
    what :meth:`RunConfig.differences` fills a run's method options with before comparing them."""
    return {option.name: option.default for option in dataclasses.fields(options_type)}


def add_method_arguments(
    parser: argparse.ArgumentParser, options_type: type, defaults: dict[str, Any] | None = None
) -> None:
    """One flag per field of a method's options dataclass (``lambda_pixel`` -> ``--lambda-pixel``;
    booleans get ``--use-nce / --no-use-nce``). Unset flags keep the dataclass default. The help line of each
    comes from the dataclass's ``HELP`` mapping, where it has one. ``defaults`` are the recipe's own values of
    some options (``RunConfig.method_options``), shown in the help instead of the dataclass's."""
    group = parser.add_argument_group(f"method options ({options_type.__name__}; see docs/method.md)")
    descriptions: dict[str, str] = getattr(options_type, "HELP", {})
    for option in dataclasses.fields(options_type):
        flag = "--" + option.name.replace("_", "-")
        dest = _METHOD_PREFIX + option.name
        meaning = descriptions.get(option.name, "")
        default = (defaults or {}).get(option.name, option.default)
        help_text = f"{meaning} (default: {default})" if meaning else f"(default: {default})"
        if isinstance(option.default, bool):
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = type(option.default)
            metavar = {float: "X", int: "N", str: "NAME"}.get(kind, "VALUE")
            group.add_argument(flag, dest=dest, type=kind, default=None, metavar=metavar, help=help_text)


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key[len(_METHOD_PREFIX) :]: value
        for key, value in vars(args).items()
        if key.startswith(_METHOD_PREFIX) and value is not None
    }
