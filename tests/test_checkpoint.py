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


# ----------------------------------------------------------------------------- the discriminator beside the generator
def _generator_and_discriminator(in_channels: int):
    from ds3kit.models import build_discriminator, build_generator

    torch.manual_seed(0)
    return build_generator("tiny"), build_discriminator("tiny", in_channels=in_channels, norm="batch")


@pytest.mark.parametrize("in_channels, gan_mode", [(4, "lsgan"), (1, "hinge")])
def test_discriminator_round_trip_with_weights_only(tmp_path, in_channels, gan_mode):
    from ds3kit.checkpoint import discriminator_gan_mode, load_discriminator, load_generator, save_generator
    from ds3kit.models import PatchDiscriminator

    generator, discriminator = _generator_and_discriminator(in_channels)
    with torch.no_grad():  # batch norm running statistics are buffers: they must travel too
        discriminator.model[3].running_mean.uniform_(-1, 1)
    path = tmp_path / "student.pt"
    save_generator(path, generator, discriminator=discriminator, gan_mode=gan_mode, method="test", role="student")
    payload = torch.load(path, weights_only=True)  # what any user can do
    assert payload["discriminator"]["config"] == discriminator.config()
    assert payload["discriminator"]["gan_mode"] == gan_mode and "gan_mode" not in payload["metadata"]
    loaded = load_discriminator(path)
    assert isinstance(loaded, PatchDiscriminator) and not loaded.training and loaded.in_channels == in_channels
    assert discriminator_gan_mode(path) == gan_mode
    expected = discriminator.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())
    discriminator.eval()
    x = torch.rand(2, in_channels, 24, 24)
    torch.testing.assert_close(loaded(x), discriminator(x), rtol=0, atol=0)
    _, metadata = load_generator(path)
    assert metadata == {"method": "test", "role": "student"}


def test_checkpoint_without_a_discriminator_still_loads(tmp_path):
    from ds3kit.checkpoint import discriminator_gan_mode, load_discriminator, load_generator, save_generator

    generator, _ = _generator_and_discriminator(4)
    path = tmp_path / "g.pt"
    save_generator(path, generator, role="student")
    assert load_discriminator(path) is None and discriminator_gan_mode(path) is None
    # As an older ds3kit wrote it: the envelope, config, weights and metadata, no "discriminator" key at all.
    old = tmp_path / "old.pt"
    payload = torch.load(path, weights_only=True)
    assert "discriminator" not in payload
    torch.save(payload, old)
    assert load_discriminator(old) is None
    assert load_generator(old)[1] == {"role": "student"}


@pytest.mark.parametrize(
    "entry, message",
    [
        ("weights", "malformed discriminator entry: expected a mapping, got str"),
        ({"config": {}, "gan_mode": "lsgan"}, "malformed discriminator entry: missing state_dict"),
        ({"config": [], "state_dict": {}, "gan_mode": "lsgan"}, "config and state_dict must be mappings"),
        ({"config": {}, "state_dict": {}, "gan_mode": "wgan"}, "gan_mode must be one of"),
        ({"config": {"widht": 3}, "state_dict": {}, "gan_mode": "lsgan"}, "cannot rebuild the discriminator"),
        ({"config": {"num_layers": 0}, "state_dict": {}, "gan_mode": "lsgan"}, "cannot rebuild the discriminator"),
        ("OTHER_WIDTH", "discriminator weights do not fit its architecture"),
    ],
)
def test_malformed_discriminator_entry(tmp_path, entry, message):
    from ds3kit.checkpoint import load_discriminator, load_generator, save_generator

    generator, discriminator = _generator_and_discriminator(4)
    path = tmp_path / "g.pt"
    save_generator(path, generator, discriminator=discriminator)
    payload = torch.load(path, weights_only=True)
    if entry == "OTHER_WIDTH":
        payload["discriminator"]["config"]["base_channels"] *= 2
    else:
        payload["discriminator"] = entry
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        load_discriminator(path)
    load_generator(path)  # synthesis alone never reads the entry


def test_save_generator_checks_the_discriminator(tmp_path):
    from ds3kit.checkpoint import save_generator

    generator, discriminator = _generator_and_discriminator(4)
    with pytest.raises(ValueError, match="must be a PatchDiscriminator"):
        save_generator(tmp_path / "g.pt", generator, discriminator=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="gan_mode must be one of"):
        save_generator(tmp_path / "g.pt", generator, discriminator=discriminator, gan_mode="wgan")
    assert not (tmp_path / "g.pt").exists()


def test_a_network_trained_on_another_normalisation_is_refused(tmp_path):
    from ds3kit.checkpoint import load_generator, save_generator
    from ds3kit.data.normalize import NORMALIZATION
    from ds3kit.segment import Segmenter, load_segmenter, save_segmenter

    generator, _ = _generator_and_discriminator(4)
    path = tmp_path / "g.pt"
    save_generator(path, generator, role="student")
    payload = torch.load(path, weights_only=True)
    assert payload["normalization"] == NORMALIZATION == "zscore"
    load_generator(path)
    # As ds3kit wrote it before the rule was recorded (trained on percentiles), and a rule this version does not use.
    for name, stored in (("old.pt", None), ("other.pt", "percentile")):
        changed = dict(payload)
        changed.pop("normalization")
        if stored is not None:
            changed["normalization"] = stored
        torch.save(changed, tmp_path / name)
        with pytest.raises(CheckpointError, match="normalised by the 'percentile' rule.*retrain"):
            load_generator(tmp_path / name)
    segmenter_path = tmp_path / "s.pt"
    save_segmenter(segmenter_path, Segmenter())
    segmenter_payload = torch.load(segmenter_path, weights_only=True)
    load_segmenter(segmenter_path)
    segmenter_payload.pop("normalization")
    torch.save(segmenter_payload, segmenter_path)
    with pytest.raises(CheckpointError, match="'percentile' rule"):
        load_segmenter(segmenter_path)
