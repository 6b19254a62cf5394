import io
import random

import numpy as np
import pytest
import torch

from ds3kit.checkpoint import (
    GENERATOR_FORMAT,
    TRAINING_FORMAT,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ds3kit.errors import CheckpointError


def test_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 3, "model": {"w": torch.arange(4.0)}, "config": {"lr": 2e-4}}, kind=TRAINING_FORMAT)
    payload = torch.load(path, weights_only=True)  # what any user can do
    assert payload["format"] == TRAINING_FORMAT and payload["version"] == 1
    loaded = load_checkpoint(path, kind=TRAINING_FORMAT)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))


class _RunsCode:
    def __reduce__(self):
        return (_mark_executed, ())


EXECUTED = []


def _mark_executed():
    EXECUTED.append(True)
    return "boom"


def test_code_carrying_file_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": TRAINING_FORMAT, "version": 1, "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refused.*nothing from it was executed"):
        load_checkpoint(path, kind=TRAINING_FORMAT)
    assert EXECUTED == []


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a zip at all", "not a readable PyTorch checkpoint"),
        (None, "not a ds3kit checkpoint"),
    ],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"weights": torch.ones(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path, kind=TRAINING_FORMAT)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(1000)}}, kind=TRAINING_FORMAT)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(path, kind=TRAINING_FORMAT)


def test_wrong_kind_and_future_version(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {}, kind=GENERATOR_FORMAT)
    with pytest.raises(CheckpointError, match="expected a 'ds3kit.training' checkpoint, found 'ds3kit.generator'"):
        load_checkpoint(path, kind=TRAINING_FORMAT)
    buffer = io.BytesIO()
    torch.save({"format": GENERATOR_FORMAT, "version": 99}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="version 99 is newer"):
        load_checkpoint(path, kind=GENERATOR_FORMAT)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt", kind=TRAINING_FORMAT)


def test_rng_state_round_trip_through_a_safe_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"rng": capture_rng_state()}, kind=TRAINING_FORMAT)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(100)
    np.random.seed(100)
    torch.manual_seed(100)
    restore_rng_state(load_checkpoint(path, kind=TRAINING_FORMAT)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
