"""Checkpoints: written atomically, versioned, and loaded with ``torch.load(weights_only=True)``.

Two kinds share one envelope ``{"format": ..., "version": ..., ...}``:

- ``ds3kit.generator``: one generator, enough to synthesize (``config`` rebuilds the architecture);
  :func:`save_generator` / :func:`load_generator`.
- ``ds3kit.training``: everything needed to resume a run exactly (models, optimisers, schedulers,
  RNG states, step, run configuration).

This module sits below everything that reads or writes checkpoints (the trainer, synthesis, evaluation, the
segmenter) and imports none of them.

Everything stored is a tensor or a plain Python container of str/int/float/bool/None, so the safe
unpickler accepts it. A file that would run code when unpickled is refused before any of it runs.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ds3kit.errors import CheckpointError
from ds3kit.models import Generator
from ds3kit.utils.atomic import atomic_path

FORMAT_VERSION = 1
GENERATOR_FORMAT = "ds3kit.generator"
TRAINING_FORMAT = "ds3kit.training"


def save_checkpoint(path: str | Path, payload: dict[str, Any], *, kind: str) -> None:
    """Write ``payload`` under the ds3kit envelope to ``path`` atomically (temp file, fsync, rename)."""
    envelope = {"format": kind, "version": FORMAT_VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(envelope, tmp)


def load_checkpoint(path: str | Path, *, kind: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a ds3kit checkpoint of the given kind with the safe (weights-only) unpickler.

    Raises:
        CheckpointError: the file is missing, corrupt, unsafe (would execute code), not a ds3kit
            checkpoint, of another kind, or of a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (not a torch.save zip archive)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line),
                      "unsupported content")
        raise CheckpointError(
            f"{path}: refused: the file holds objects the safe loader does not allow (it could run code when "
            f"unpickled; nothing from it was executed): {reason}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"{path}: not a ds3kit checkpoint (no 'format' field)")
    if payload["format"] != kind:
        raise CheckpointError(f"{path}: expected a {kind!r} checkpoint, found {payload['format']!r}")
    if int(payload.get("version", -1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload['version']} is newer than this ds3kit ({FORMAT_VERSION})"
        )
    return payload


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and plain containers."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "algorithm": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "position": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_as_tuple(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["algorithm"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    # random.setstate wants nested tuples; a round trip may hand back lists.
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(item) for item in value)
    return value


def save_generator(path: str | Path, generator: Generator, **metadata: Any) -> None:
    """Write a generator checkpoint (architecture config + weights + ``metadata``) atomically."""
    state = {name: tensor.detach().cpu() for name, tensor in generator.state_dict().items()}
    save_checkpoint(path, {"config": generator.config(), "state_dict": state, "metadata": metadata}, kind=GENERATOR_FORMAT)


def load_generator(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    """Rebuild a generator from a checkpoint written by :func:`save_generator`; returns it (eval mode) and its metadata.

    Raises:
        CheckpointError: not a ds3kit generator checkpoint, or weights that do not fit the stored architecture.
    """
    payload = load_checkpoint(path, kind=GENERATOR_FORMAT)
    try:
        # Checkpoints written before the residual head existed hold sigmoid generators.
        generator = Generator(**{"output": "sigmoid", **payload["config"]})
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: cannot rebuild the generator from its config: {error}") from None
    try:
        generator.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        summary = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the generator architecture: {summary}") from None
    return generator.to(device).eval(), dict(payload.get("metadata", {}))
