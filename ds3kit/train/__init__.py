"""The training engine shared by the recipes: run configuration, step-indexed batches, the trainer."""

from ds3kit.train.config import SMOKE_OVERRIDES, RunConfig, add_method_arguments, add_run_arguments, config_from_args
from ds3kit.train.recipe import run_recipe
from ds3kit.train.trainer import StepBatches, Trainer, format_table

__all__ = [
    "SMOKE_OVERRIDES",
    "RunConfig",
    "StepBatches",
    "Trainer",
    "add_method_arguments",
    "add_run_arguments",
    "config_from_args",
    "format_table",
    "run_recipe",
]
