"""Unit tests of the training engine's pieces: step-indexed batches, the schedule, the final table, selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ds3kit.methods.base import Method
from ds3kit.train import RunConfig
from ds3kit.train.batches import StepBatches
from ds3kit.train.schedule import LinearDecay


class _Context:
    world_size = 1
    rank = 0


class _Slices:
    """A stand-in dataset: item i is a 1 x 4 x 4 slice whose value is i; items 1 and 4 hold tumour."""

    tumour = {1, 4}

    def __len__(self) -> int:
        return 7

    def __getitem__(self, index: int) -> dict:
        mask = torch.full((1, 4, 4), float(index in self.tumour))
        return {"inputs": torch.full((1, 4, 4), float(index)), "tumour_mask": mask, "case_index": 0}


def _items(batches: StepBatches, steps: int) -> list[int]:
    return [int(v) for step in range(steps) for v in batches(step)["inputs"][:, 0, 0, 0]]


def test_step_batches_are_a_pure_function_of_seed_and_step():
    first = StepBatches(_Slices(), batch_size=3, seed=5, stream=0, context=_Context())
    second = StepBatches(_Slices(), batch_size=3, seed=5, stream=0, context=_Context())
    assert _items(first, 6) == _items(second, 6)
    # Random access (a resumed run) gives what a straight run gives.
    assert [int(v) for v in second(4)["inputs"][:, 0, 0, 0]] == _items(first, 6)[12:15]
    other = StepBatches(_Slices(), batch_size=3, seed=6, stream=0, context=_Context())
    assert _items(other, 6) != _items(first, 6)


def test_each_epoch_visits_every_slice_once_without_repeats():
    batches = StepBatches(_Slices(), batch_size=7, seed=0, stream=0, context=_Context())
    for step in range(3):
        assert sorted(int(v) for v in batches(step)["inputs"][:, 0, 0, 0]) == list(range(7))


def test_tumour_repeats_list_tumour_slices_more_often_per_epoch():
    batches = StepBatches(_Slices(), batch_size=11, seed=0, stream=0, context=_Context(), tumour_repeats=2)
    assert len(batches.entries) == 7 + 2 * 2
    epoch = sorted(int(v) for v in batches(0)["inputs"][:, 0, 0, 0])  # one batch = one whole epoch
    assert epoch.count(1) == epoch.count(4) == 3
    assert all(epoch.count(i) == 1 for i in (0, 2, 3, 5, 6))
    with pytest.raises(ValueError, match="tumour_repeats must be >= 0"):
        StepBatches(_Slices(), batch_size=1, seed=0, stream=0, context=_Context(), tumour_repeats=-1)


def test_each_stream_takes_its_own_tumour_repeats():
    from ds3kit.methods import CUT, DS3Net
    from ds3kit.train.trainer import stream_tumour_repeats

    config = RunConfig(tumour_repeats=2, unpaired_tumour_repeats=3)
    assert [stream_tumour_repeats(config, stream, DS3Net) for stream in ("paired", "unpaired", "reference")] == [
        2,
        3,
        0,
    ]
    # Unpaired translation splits the subjects in halves of its own: neither half is the paired stream.
    assert [stream_tumour_repeats(config, stream, CUT) for stream in ("paired", "unpaired")] == [0, 0]
    assert RunConfig().unpaired_tumour_repeats == 0  # off unless asked


def test_ranks_split_one_global_batch():
    class Rank1(_Context):
        world_size = 2
        rank = 1

    class Rank0(Rank1):
        rank = 0

    single = StepBatches(_Slices(), batch_size=4, seed=3, stream=1, context=_Context())
    halves = [StepBatches(_Slices(), batch_size=2, seed=3, stream=1, context=c) for c in (Rank0, Rank1)]
    for step in range(3):
        together = [int(v) for h in halves for v in h(step)["inputs"][:, 0, 0, 0]]
        assert together == [int(v) for v in single(step)["inputs"][:, 0, 0, 0]]


def test_linear_decay_holds_then_falls_to_zero():
    schedule = LinearDecay(total=10, fraction=0.5)
    assert [schedule.factor(s) for s in (0, 4)] == [1.0, 1.0]
    assert schedule.factor(5) == 1.0 and schedule.factor(10) == 0.0
    assert schedule.factor(7) == pytest.approx(0.6)


def test_run_config_refuses_unknown_choices():
    with pytest.raises(ValueError, match="select must be one of"):
        RunConfig(select="first")
    with pytest.raises(ValueError, match="generator_output must be"):
        RunConfig(generator_output="tanh")
    with pytest.raises(ValueError, match="unpaired_t1ce must be one of"):
        RunConfig(unpaired_t1ce="same-subjects")
    with pytest.raises(ValueError, match="test_flips must be one of"):
        RunConfig(test_flips="ud")
    with pytest.raises(ValueError, match=r"tumour_repeats must be >= 0 \(0: every slice once\), got -1"):
        RunConfig(tumour_repeats=-1)
    with pytest.raises(ValueError, match=r"unpaired_tumour_repeats must be >= 0 \(0: every slice once\), got -2"):
        RunConfig(unpaired_tumour_repeats=-2)
    with pytest.raises(ValueError, match="base_channels must be >= 1"):
        RunConfig(base_channels=0)
    with pytest.raises(ValueError, match="num_levels must be >= 1"):
        RunConfig(num_levels=0)
    with pytest.raises(ValueError, match="timm encoder needs num_levels >= 2"):
        RunConfig(encoder="timm:resnet18", num_levels=1)


@pytest.mark.parametrize("options", ["DS3NetOptions", "CUTOptions"])
def test_every_method_option_has_a_help_line(options):
    import argparse
    import dataclasses

    import ds3kit.methods as methods
    from ds3kit.train import add_method_arguments

    options_type = getattr(methods, options)
    assert set(options_type.HELP) == {f.name for f in dataclasses.fields(options_type)}
    parser = argparse.ArgumentParser()
    add_method_arguments(parser, options_type)
    text = parser.format_help()
    assert "METHOD__" not in text  # a readable metavar, not the dest
    assert options_type.HELP["nce_patches"].split()[0] in text


# ------------------------------------------------------------------------------------------- the batch seam
def test_prepare_batch_moves_augments_then_sets_the_layout():
    from ds3kit.train import prepare_batch

    batch = {"inputs": torch.rand(2, 3, 4, 5), "case_index": torch.tensor([0, 1])}
    seen = []

    def augment(b):
        seen.append({k: v.clone() for k, v in b.items()})
        return {**b, "inputs": b["inputs"] + 1.0}

    out = prepare_batch(batch, torch.device("cpu"), augment=augment, channels_last=True)
    assert len(seen) == 1 and torch.equal(seen[0]["inputs"], batch["inputs"])  # augmented once, after the move
    torch.testing.assert_close(out["inputs"], batch["inputs"] + 1.0)
    assert out["inputs"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out["case_index"], batch["case_index"])  # not 4-D: left as it is
    plain = prepare_batch(batch, torch.device("cpu"))
    assert set(plain) == set(batch) and plain is not batch
    assert plain["inputs"].is_contiguous()


def test_the_benchmark_step_prepares_batches_as_the_trainer_does():
    from _recipes import TrainStep

    from ds3kit.train import prepare_batch

    step = TrainStep.__new__(TrainStep)  # only the batch preparation: no method, no cohort
    step.device, step.channels_last = torch.device("cpu"), True
    stream = StepBatches(_Slices(), batch_size=3, seed=0, stream=0, context=_Context())
    got = step.batch(stream, 2)
    expected = prepare_batch(stream(2), torch.device("cpu"), channels_last=True)
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]) and got[key].stride() == expected[key].stride()


# --------------------------------------------------------------------------------------------- the schedule
def test_linear_decay_state_restores_the_same_decay():
    first = LinearDecay(total=10, fraction=0.5)
    other = LinearDecay(total=40, fraction=0.1)
    other.load_state_dict(first.state_dict())
    assert [other.factor(s) for s in range(12)] == [first.factor(s) for s in range(12)]
    with pytest.raises(ValueError, match="linear_decay"):
        other.load_state_dict({"kind": "cosine", "total": 10, "decay_start": 5})


class _Tiny(Method):
    """The smallest method a trainer takes: one generator, one optimiser, the unpaired stream."""

    uses_unpaired = True

    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.Conv2d(3, 1, 1)
        self.add_optimizer("generator", self.generator.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def generators(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}


def _build(config: RunConfig, total_steps: int) -> _Tiny:
    return _Tiny()


def test_a_resumed_trainer_continues_the_checkpoints_decay(tmp_path):
    from ds3kit.train import Trainer

    trainer = Trainer(RunConfig(out=str(tmp_path), steps=20, lr_decay_fraction=0.5), _build, name="tiny")
    method = _Tiny()
    saved = LinearDecay(total=20, fraction=0.5)
    path = tmp_path / "last.pt"
    trainer._save(path, 7, method, saved)
    # Resumed with another --lr-decay-fraction: the decay it started with goes on.
    resumed = LinearDecay(total=20, fraction=0.9)
    assert trainer._restore(path, method, resumed) == 7
    assert [resumed.factor(s) for s in range(7, 21)] == [saved.factor(s) for s in range(7, 21)]


def test_resuming_with_another_length_is_refused_by_name(tmp_path):
    from ds3kit.errors import InputError
    from ds3kit.train import Trainer

    trainer = Trainer(RunConfig(out=str(tmp_path), steps=20), _build, name="tiny")
    path = tmp_path / "last.pt"
    trainer._save(path, 7, _Tiny(), LinearDecay(total=20, fraction=0.5))
    with pytest.raises(InputError, match="started for 20 steps, this one asks for 60"):
        trainer._restore(path, _Tiny(), LinearDecay(total=60, fraction=0.5))


def test_resuming_with_other_training_settings_is_refused_by_name(tmp_path):
    from ds3kit.errors import InputError
    from ds3kit.train import Trainer

    path = tmp_path / "last.pt"
    Trainer(RunConfig(out=str(tmp_path), tumour_repeats=0), _build, name="tiny")._save(
        path, 7, _Tiny(), LinearDecay(total=20, fraction=0.5)
    )
    later = Trainer(RunConfig(out=str(tmp_path), tumour_repeats=2, lr=1e-3), _build, name="tiny")
    with pytest.raises(InputError, match=r"lr 0.0002 \(asked 0.001\), tumour_repeats 0 \(asked 2\)"):
        later._restore(path, _Tiny(), LinearDecay(total=20, fraction=0.5))
    # What does not change the training (where it runs, how often it logs) may differ.
    same = Trainer(RunConfig(out=str(tmp_path), tumour_repeats=0, log_every=1, device="cpu"), _build, name="tiny")
    assert same._restore(path, _Tiny(), LinearDecay(total=20, fraction=0.5)) == 7
    # A checkpoint older than a setting is not refused for it.
    assert RunConfig(tumour_repeats=2).differences({"seed": 0}) == {}


def test_method_options_compare_as_the_options_the_method_ran_with():
    from ds3kit.methods import DS3NetOptions
    from ds3kit.train.config import option_defaults

    defaults = option_defaults(DS3NetOptions)
    assert defaults["student_enhancing_weight"] == 1.0 and "HELP" not in defaults
    older = RunConfig(method_options={"tumour_weight": 5.0}).to_dict()  # trained before an option existed
    pinned = RunConfig(method_options={"tumour_weight": 5.0, "student_enhancing_weight": 1.0})
    assert pinned.differences(older, defaults) == {}
    # Without the defaults, or with another value than the default, the options differ.
    assert set(pinned.differences(older)) == {"method_options"}
    other = RunConfig(method_options={"tumour_weight": 5.0, "student_enhancing_weight": 4.0})
    assert other.differences(older, defaults) == {
        "method_options": ({"tumour_weight": 5.0}, {"tumour_weight": 5.0, "student_enhancing_weight": 4.0})
    }


def test_resuming_a_run_trained_on_another_normalisation_is_refused(tmp_path):
    from ds3kit.checkpoint import TRAINING_FORMAT, load_checkpoint
    from ds3kit.errors import CheckpointError
    from ds3kit.train import Trainer

    trainer = Trainer(RunConfig(out=str(tmp_path), steps=20), _build, name="tiny")
    path = tmp_path / "last.pt"
    trainer._save(path, 7, _Tiny(), LinearDecay(total=20, fraction=0.5))
    payload = load_checkpoint(path, kind=TRAINING_FORMAT)
    del payload["normalization"]  # a run saved before the rule was recorded: trained on percentiles
    torch.save(payload, path)  # as that ds3kit wrote it (save_checkpoint would record today's rule)
    with pytest.raises(CheckpointError, match="'percentile' rule"):
        trainer._restore(path, _Tiny(), LinearDecay(total=20, fraction=0.5))


# ------------------------------------------------------------------------------------- the method it builds
def test_the_trainer_reads_the_method_class_from_the_factory_without_building_it():
    from ds3kit.train import Trainer
    from ds3kit.train.trainer import method_type

    built = []

    def unannotated(config, total_steps):
        built.append(total_steps)
        return _Tiny()

    with pytest.raises(TypeError, match="must annotate the Method subclass"):
        Trainer(RunConfig(), unannotated, name="tiny")

    def counting(config: RunConfig, total_steps: int) -> _Tiny:
        built.append(total_steps)
        return _Tiny()

    trainer = Trainer(RunConfig(), counting, name="tiny")
    assert trainer.method_type is _Tiny and method_type(_build) is _Tiny and not built


@pytest.mark.parametrize("recipe", ["ds3net", "cut", "pix2pix", "paired_only"])
def test_recipes_declare_their_method_class_and_name_their_discriminators(recipe):
    from _recipes import load_recipe

    from ds3kit.models import PatchDiscriminator
    from ds3kit.train.trainer import method_type

    build = load_recipe(recipe).build
    method = build(RunConfig(preset="tiny"), 10)
    assert type(method) is method_type(build)
    found = {id(m) for m in method.modules() if isinstance(m, PatchDiscriminator)}
    assert found and {id(m) for m in method.discriminators().values()} == found
    assert set(method.discriminators()) <= set(method.generators())  # keyed by the role each one judges


@pytest.mark.parametrize("recipe", ["ds3net", "cut", "pix2pix", "paired_only"])
def test_width_and_depth_flags_override_the_preset_in_every_generator(recipe):
    import argparse

    from _recipes import load_recipe

    from ds3kit.models import Generator
    from ds3kit.train import add_run_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    config = config_from_args(parser.parse_args(["--preset", "tiny", "--base-channels", "6", "--num-levels", "4"]))
    method = load_recipe(recipe).build(config, 10)
    generators = [m for m in method.generators().values() if isinstance(m, Generator)]
    assert generators
    for generator in generators:
        built = generator.config()
        assert (built["base_channels"], built["num_levels"]) == (6, 4)
        assert built["fusion_blocks"] == 1  # the rest is the preset's
    # Unset, the preset decides; and a run of another width is another training.
    assert RunConfig(preset="tiny").generator_kwargs() == dict(preset="tiny", encoder="builtin", output="residual")
    assert RunConfig(base_channels=8).differences(RunConfig().to_dict()) == {"base_channels": (None, 8)}


def test_every_trainer_attribute_is_set_in_init():
    import ast
    import inspect

    from ds3kit.train import Trainer
    from ds3kit.train import trainer as trainer_module

    made = set(vars(Trainer(RunConfig(), _build, name="tiny")))
    tree = ast.parse(inspect.getsource(trainer_module.Trainer))
    assigned = {
        target.attr
        for node in ast.walk(tree)
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
    }
    assert assigned <= made, f"set outside __init__: {sorted(assigned - made)}"


def test_no_augment_intensity_keeps_the_warps_and_drops_the_intensity_changes():
    import argparse

    from ds3kit.train import add_run_arguments, config_from_args
    from ds3kit.train.trainer import training_augmentation

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    default = training_augmentation(config_from_args(parser.parse_args([])))
    warps_only = training_augmentation(config_from_args(parser.parse_args(["--no-augment-intensity"])))
    assert default.geometric and default.intensity
    assert warps_only.geometric and not warps_only.intensity
    assert training_augmentation(config_from_args(parser.parse_args(["--no-augment"]))) is None

    batch = {"inputs": torch.rand(4, 3, 16, 16), "target": torch.rand(4, 1, 16, 16)}
    warps_only.p_geometric = 0.0  # nothing warped: with the intensity part off the inputs must come back as they were
    torch.manual_seed(0)
    assert torch.equal(warps_only(batch)["inputs"], batch["inputs"])
    default.p_geometric = 0.0
    torch.manual_seed(0)
    assert not torch.equal(default(batch)["inputs"], batch["inputs"])


@pytest.mark.filterwarnings("ignore:CUDA is not available")
@pytest.mark.parametrize("native_bf16", [True, False])
def test_training_autocast_uses_bf16_on_cuda_and_on_cpus_with_native_bf16(monkeypatch, native_bf16):
    from ds3kit.train import trainer

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native_bf16)
    cpu = trainer.training_autocast(torch.device("cpu"), amp=True)
    if native_bf16:
        assert isinstance(cpu, torch.autocast) and cpu.fast_dtype == torch.bfloat16 and cpu.device == "cpu"
        with cpu:
            assert nn.Conv2d(1, 1, 1)(torch.rand(1, 1, 2, 2)).dtype == torch.bfloat16
    else:  # emulated bf16 would be slower than float32
        assert not isinstance(cpu, torch.autocast)
    assert not isinstance(trainer.training_autocast(torch.device("cpu"), amp=False), torch.autocast)
    cuda = trainer.training_autocast(torch.device("cuda"), amp=True)
    assert isinstance(cuda, torch.autocast) and cuda.fast_dtype == torch.bfloat16 and cuda.device == "cuda"
    assert not isinstance(trainer.training_autocast(torch.device("cuda"), amp=False), torch.autocast)


def test_running_mean_is_the_uniform_mean_of_the_weights_and_keeps_the_latest_counter():
    from ds3kit.train.trainer import _running_mean

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    seen, average = [], None
    for step in (600, 700, 800, 900):
        with torch.no_grad():
            for param in module.parameters():
                param.add_(torch.randn_like(param))
        module[1].num_batches_tracked += step
        seen.append({k: v.detach().clone() for k, v in module.state_dict().items()})
        average = _running_mean(average, step, module)
    assert average["steps"] == [600, 700, 800, 900]
    for name, value in average["state"].items():
        if value.is_floating_point():
            expected = torch.stack([state[name].double() for state in seen]).mean(0)
            torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
            assert value.dtype == seen[-1][name].dtype
        else:
            assert torch.equal(value, seen[-1][name])


def test_the_weight_average_resumes_from_the_training_checkpoint(tmp_path):
    from ds3kit.train import Trainer
    from ds3kit.train.trainer import _running_mean

    config = RunConfig(out=str(tmp_path), steps=20, select="average")
    trainer = Trainer(config, _build, name="tiny")
    method = _Tiny()
    trainer.average = {"generator": _running_mean(_running_mean(None, 10, method.generator), 12, method.generator)}
    path = tmp_path / "last.pt"
    trainer._save(path, 12, method, LinearDecay(total=20, fraction=0.5))
    resumed = Trainer(config, _build, name="tiny")
    assert resumed._restore(path, _Tiny(), LinearDecay(total=20, fraction=0.5)) == 12
    assert resumed.average["generator"]["steps"] == [10, 12]
    for name, value in trainer.average["generator"]["state"].items():
        assert torch.equal(resumed.average["generator"]["state"][name], value)
