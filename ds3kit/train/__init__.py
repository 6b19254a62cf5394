"""The training engine shared by the recipes: run configuration, step-indexed batches, the schedule, the trainer,
the final report."""

from ds3kit.train.batches import StepBatches, prepare_batch
from ds3kit.train.config import (
    SMOKE_OVERRIDES,
    RunConfig,
    add_method_arguments,
    add_run_arguments,
    config_from_args,
    parse_recipe_args,
)
from ds3kit.train.recipe import run_recipe
from ds3kit.train.report import format_table, write_final_report
from ds3kit.train.schedule import LinearDecay
from ds3kit.train.trainer import Trainer

__all__ = [
    "SMOKE_OVERRIDES",
    "LinearDecay",
    "RunConfig",
    "StepBatches",
    "Trainer",
    "add_method_arguments",
    "add_run_arguments",
    "config_from_args",
    "parse_recipe_args",
    "format_table",
    "prepare_batch",
    "run_recipe",
    "write_final_report",
]
