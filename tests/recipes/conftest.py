import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_recipe(name: str):
    """Import recipes/<name>.py by path (recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    from ds3kit.data import write_phantom_cohort

    root = tmp_path_factory.mktemp("cohort")
    write_phantom_cohort(root, cases=10, shape=(48, 48, 16), seed=0, progress=False)
    return root
