"""The training engine shared by the recipes.

Names are resolved lazily so that ``ds3kit.train.checkpoint`` (used by inference) does not import the engine.
"""

import importlib

_EXPORTS = {
    "SMOKE_OVERRIDES": "ds3kit.train.config",
    "RunConfig": "ds3kit.train.config",
    "add_method_arguments": "ds3kit.train.config",
    "add_run_arguments": "ds3kit.train.config",
    "config_from_args": "ds3kit.train.config",
    "run_recipe": "ds3kit.train.recipe",
    "StepBatches": "ds3kit.train.trainer",
    "Trainer": "ds3kit.train.trainer",
    "format_table": "ds3kit.train.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ds3kit.train' has no attribute {name!r}")
