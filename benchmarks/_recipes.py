"""What the benchmarks reuse of the recipes and the engine: a recipe's ``build`` loaded by path, and a DS3-Net
training iteration set up exactly as :class:`ds3kit.train.Trainer` runs it, minus the loop around it.

Recipes are scripts, not a package, so ``recipes/<name>.py`` is imported by path.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


#: Every recipe by name: the one map tests, benchmarks and searches load recipes through.
RECIPES: dict[str, Path] = {path.stem: path for path in sorted((REPO / "recipes").glob("*.py"))}


@functools.cache
def load_recipe(name: str) -> ModuleType:
    """Import ``recipes/<name>.py`` (its ``build(config, total_steps)`` is the method factory the trainer uses).

    Recipes are scripts a user runs (``python recipes/ds3net.py``), not a package; this imports one by its path.
    """
    if name not in RECIPES:
        raise FileNotFoundError(f"no recipe {name!r}: known recipes are {', '.join(RECIPES)}")
    spec = importlib.util.spec_from_file_location(f"ds3kit_recipe_{name}", RECIPES[name])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class StepProfile:
    """The size of a benchmarked training step: what a user trains on this kind of device."""

    preset: str
    image_size: int
    batch_size: int
    cohort_shape: tuple[int, int, int]
    cohort_cases: int = 4


# CPU: the RunConfig defaults (the "small" preset at 96 x 96, batch 4), which a 2-core CPU trains in hours.
# CUDA: the "large" preset on native 240 x 240 BraTS slices. CI (--benchmark-disable) only checks the code path
# still runs, so it gets the smoke size.
PROFILES = {
    "cpu": StepProfile("small", 96, 4, (96, 96, 48)),
    "cuda": StepProfile("large", 240, 8, (240, 240, 24)),
    "smoke": StepProfile("tiny", 48, 2, (48, 48, 16)),
}


def step_profile(device: torch.device, *, disabled: bool) -> StepProfile:
    return PROFILES["smoke" if disabled else ("cuda" if device.type == "cuda" else "cpu")]


def phantom_cohort(profile: StepProfile) -> list[Path]:
    """Case folders of a small phantom cohort at the profile's shape (cached like the recipes' default data)."""
    from ds3kit.data import default_cohort, list_cases

    return list_cases(default_cohort(cases=profile.cohort_cases, shape=profile.cohort_shape))


def slice_streams(cases: list[Path], config: Any) -> tuple[Any, Any]:
    """The trainer's paired and unpaired step-indexed streams over half of ``cases`` each."""
    from ds3kit.data import SliceDataset
    from ds3kit.train import StepBatches
    from ds3kit.train.distributed import DistributedContext

    half = max(1, len(cases) // 2)
    context = DistributedContext()
    paired = SliceDataset(cases[:half], with_target=True, image_size=config.image_size)
    unpaired = SliceDataset(cases[half:] or cases[:half], with_target=False, image_size=config.image_size)
    return (
        StepBatches(paired, batch_size=config.batch_size, seed=config.seed, stream=0, context=context),
        StepBatches(unpaired, batch_size=config.batch_size, seed=config.seed, stream=1, context=context),
    )


class TrainStep:
    """One DS3-Net iteration (teacher, student, both discriminators, every loss) on fixed device-resident batches.

    Built like the trainer builds it: ``recipes/ds3net.py``'s ``build(config, total_steps)``, moved to the device,
    channels_last on CUDA, bf16 autocast where the trainer uses it (CUDA, CPUs with native bf16). ``method.step``
    is set past the teacher's warm-up (and inside the difficulty ramp) so the student runs as well.
    """

    def __init__(
        self,
        device: torch.device,
        profile: StepProfile,
        *,
        total_steps: int = 100,
        method_options: Mapping[str, Any] | None = None,
    ) -> None:
        from ds3kit.train import RunConfig

        self.device = device
        self.profile = profile
        self.config = RunConfig(
            preset=profile.preset,
            image_size=profile.image_size,
            batch_size=profile.batch_size,
            device=str(device),
            steps=total_steps,
            method_options=dict(method_options or {}),
        )
        self.streams = slice_streams(phantom_cohort(profile), self.config)
        torch.manual_seed(0)
        method = load_recipe("ds3net").build(self.config, total_steps).to(device)
        self.channels_last = device.type == "cuda" and self.config.channels_last
        if self.channels_last:
            method = method.to(memory_format=torch.channels_last)
        method.train()
        method.step = method.warmup_steps + 1
        assert method.step < total_steps
        self.method = method
        self.paired, self.unpaired = (self.batch(stream, 0) for stream in self.streams)
        from ds3kit.train.trainer import bf16_autocast_pays

        self.autocast = self.config.amp and bf16_autocast_pays(device)

    @property
    def dtype(self) -> str:
        return "bfloat16 autocast" if self.autocast else "float32"

    @property
    def images_per_step(self) -> int:
        """Slices one iteration consumes: a paired and an unpaired batch."""
        return 2 * self.config.batch_size

    def batch(self, stream: Any, step: int) -> dict[str, torch.Tensor]:
        """Step ``step``'s batch of ``stream`` as the trainer prepares it (no augmentation: the step is timed alone)."""
        from ds3kit.train import prepare_batch

        return prepare_batch(stream(step), self.device, channels_last=self.channels_last)

    def __call__(self) -> dict[str, float]:
        from ds3kit.train.trainer import training_autocast

        with training_autocast(self.device, self.autocast):
            return self.method.training_step(self.paired, self.unpaired)

    def shapes(self) -> dict[str, Any]:
        return {
            "preset": self.profile.preset,
            "paired": {key: list(value.shape) for key, value in self.paired.items()},
            "unpaired": {key: list(value.shape) for key, value in self.unpaired.items()},
            "method_step": self.method.step,
            "total_steps": self.config.steps,
            "options": dataclasses.asdict(self.method.options),
        }
