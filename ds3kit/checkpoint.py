"""Checkpoints: written atomically, versioned, and loaded with ``torch.load(weights_only=True)``.

Two kinds share one envelope ``{"format": ..., "version": ..., ...}``:

- ``ds3kit.generator``: one generator, enough to synthesize (``config`` rebuilds the architecture);
  :func:`save_generator` / :func:`load_generator`. It may also carry the discriminator that judged that
  generator (key ``"discriminator"``: ``config``, ``state_dict`` and the ``gan_mode`` its scores are read in), the
  source of the reliability map (:mod:`ds3kit.reliability`); :func:`load_discriminator` rebuilds it. Checkpoints
  written before that key existed load as before, with no discriminator.
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

from ds3kit.data.normalize import NORMALIZATION
from ds3kit.errors import CheckpointError
from ds3kit.models import Generator, PatchDiscriminator
from ds3kit.utils.atomic import atomic_path

FORMAT_VERSION = 1
GENERATOR_FORMAT = "ds3kit.generator"
TRAINING_FORMAT = "ds3kit.training"


def save_checkpoint(path: str | Path, payload: dict[str, Any], *, kind: str) -> None:
    """Write ``payload`` under the ds3kit envelope to ``path`` atomically (temp file, fsync, rename).

    The envelope records the intensity normalisation the sessions were read with (``"normalization"``): every kind
    holds networks trained on normalised sessions, and :func:`load_checkpoint` refuses another rule.
    """
    envelope = {"format": kind, "version": FORMAT_VERSION, **payload, "normalization": NORMALIZATION}
    with atomic_path(path) as tmp:
        torch.save(envelope, tmp)


def load_checkpoint(path: str | Path, *, kind: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a ds3kit checkpoint of the given kind with the safe (weights-only) unpickler.

    Raises:
        CheckpointError: the file is missing, corrupt, unsafe (would execute code), not a ds3kit
            checkpoint, of another kind, of a newer format version, or trained on another intensity normalisation.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (not a torch.save zip archive)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = next(
            (line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line),
            "unsupported content",
        )
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
    _check_normalization(path, payload)
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


def save_generator(
    path: str | Path,
    generator: Generator,
    *,
    discriminator: PatchDiscriminator | None = None,
    gan_mode: str = "lsgan",
    **metadata: Any,
) -> None:
    """Write a generator checkpoint (architecture config + weights + ``metadata``) atomically.

    Args:
        discriminator: the :class:`~ds3kit.models.PatchDiscriminator` that judged this generator in training
            (DS3-Net's student: D^S), stored beside it (config + weights) so the checkpoint can draw the
            reliability map; None stores none.
        gan_mode: the GAN objective that discriminator was trained with (``"lsgan"``, ``"bce"``, ``"hinge"``):
            how its raw scores are read as realness. Stored only with a discriminator.
        metadata: plain values (str/int/float/bool/None and containers of them), returned by :func:`load_generator`.
    """
    payload: dict[str, Any] = {
        "config": generator.config(),
        "state_dict": _cpu_state(generator),
        "metadata": metadata,
    }
    if discriminator is not None:
        from ds3kit.losses.adversarial import GAN_MODES  # here: the losses package is not needed to synthesize

        if not isinstance(discriminator, PatchDiscriminator):
            raise ValueError(
                f"discriminator must be a PatchDiscriminator (or None), got {type(discriminator).__name__}"
            )
        if gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {gan_mode!r}")
        payload["discriminator"] = {
            "config": discriminator.config(),
            "state_dict": _cpu_state(discriminator),
            "gan_mode": gan_mode,
        }
    save_checkpoint(path, payload, kind=GENERATOR_FORMAT)


def _check_normalization(path: str | Path, payload: dict[str, Any]) -> None:
    """Refuse a network trained on intensities normalised by another rule than the one sessions are read with.

    Its inputs would be on another scale, so its output would be wrong without any error. Checkpoints written before
    the rule was recorded (ds3kit before 2026-12-03) were trained on the ``"percentile"`` rule.
    """
    trained_on = payload.get("normalization", "percentile")
    if trained_on != NORMALIZATION:
        raise CheckpointError(
            f"{path}: trained on intensities normalised by the {trained_on!r} rule, but this ds3kit normalises "
            f"sessions by {NORMALIZATION!r} (docs/data.md, 'Intensity normalisation'): retrain it with this version"
        )


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}


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
    _load_weights(path, generator, payload["state_dict"], "weights do not fit the generator architecture")
    return generator.to(device).eval(), dict(payload.get("metadata", {}))


def _load_weights(path: str | Path, module: torch.nn.Module, state: Any, problem: str) -> None:
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        summary = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: {problem}: {summary}") from None


def load_discriminator(path: str | Path, *, device: str | torch.device = "cpu") -> PatchDiscriminator | None:
    """The discriminator stored beside the generator by :func:`save_generator` (eval mode), or None when the
    checkpoint holds none (written before ds3kit stored one, or by a run without a discriminator).

    Its GAN mode: :func:`discriminator_gan_mode`.

    Raises:
        CheckpointError: not a ds3kit generator checkpoint, or a ``"discriminator"`` entry that is malformed (not a
            mapping of ``config``, ``state_dict`` and ``gan_mode``) or whose weights do not fit its config.
    """
    entry = _discriminator_entry(path, load_checkpoint(path, kind=GENERATOR_FORMAT))
    if entry is None:
        return None
    try:
        discriminator = PatchDiscriminator(**entry["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot rebuild the discriminator from its config: {error}") from None
    _load_weights(path, discriminator, entry["state_dict"], "discriminator weights do not fit its architecture")
    return discriminator.to(device).eval()


def discriminator_gan_mode(path: str | Path) -> str | None:
    """The GAN mode (``"lsgan"``, ``"bce"``, ``"hinge"``) of the stored discriminator's scores; None without one.

    Raises:
        CheckpointError: as :func:`load_discriminator`.
    """
    entry = _discriminator_entry(path, load_checkpoint(path, kind=GENERATOR_FORMAT))
    return None if entry is None else entry["gan_mode"]


def _discriminator_entry(path: str | Path, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The checked ``"discriminator"`` entry of a generator checkpoint's payload, or None."""
    from ds3kit.losses.adversarial import GAN_MODES

    entry = payload.get("discriminator")
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: malformed discriminator entry: expected a mapping, got {type(entry).__name__}")
    missing = [key for key in ("config", "state_dict", "gan_mode") if key not in entry]
    if missing:
        raise CheckpointError(f"{path}: malformed discriminator entry: missing {', '.join(missing)}")
    if not isinstance(entry["config"], dict) or not isinstance(entry["state_dict"], dict):
        raise CheckpointError(
            f"{path}: malformed discriminator entry: config and state_dict must be mappings, got "
            f"{type(entry['config']).__name__} and {type(entry['state_dict']).__name__}"
        )
    if entry["gan_mode"] not in GAN_MODES:
        raise CheckpointError(
            f"{path}: malformed discriminator entry: gan_mode must be one of {GAN_MODES}, got {entry['gan_mode']!r}"
        )
    return entry
