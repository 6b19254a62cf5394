"""Options shared by the benchmark modules."""

import os
from pathlib import Path


def pytest_addoption(parser):
    parser.addoption(
        "--profile",
        metavar="DIR",
        default=None,
        help="write torch.profiler Chrome traces (train step, patch_nce, synthesis) to DIR",
    )


def pytest_configure(config):
    folder = config.getoption("--profile")
    if folder:
        os.environ["DS3KIT_PROFILE_DIR"] = str(Path(folder).resolve())
