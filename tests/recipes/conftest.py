from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    from ds3kit.data import write_phantom_cohort

    root = tmp_path_factory.mktemp("cohort")
    write_phantom_cohort(root, cases=10, shape=(48, 48, 16), seed=0, progress=False)
    return root
