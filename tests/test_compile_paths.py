"""The trainer's CUDA-only paths, exercised on the CPU where torch allows it.

bf16 autocast and channels_last through a full DS3-Net step (the trainer turns both on for CUDA), torch.compile of
the generator, and patch_nce as a custom op (``torch.ops.ds3kit.patch_nce_rows``) so that a compiled module with
the loss has no graph break.
"""

import pytest
import torch
import torch.nn.functional as F

from ds3kit.losses.patch_nce import patch_nce
from ds3kit.methods import DS3Net, DS3NetOptions
from ds3kit.models import build_discriminator, build_generator

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def unit_rows(*shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1).to(dtype)


def reference_fp64(query, key, temperature=0.07, weight=None):
    logits = query.double() @ key.double().transpose(1, 2) / temperature
    losses = torch.logsumexp(logits, -1) - torch.diagonal(logits, dim1=-2, dim2=-1)
    return losses if weight is None else losses * weight.double()


# ------------------------------------------------------------------------------------------------ custom op
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_custom_op_passes_opcheck(dtype, weighted):
    query = unit_rows(2, 41, 24, dtype=dtype, seed=1).requires_grad_()
    key = unit_rows(2, 41, 24, dtype=dtype, seed=2).requires_grad_()
    weight = torch.rand(2, 41, generator=torch.Generator().manual_seed(3), dtype=dtype) if weighted else None
    # Schema, fake (meta) implementation, autograd registration and the dispatcher's own checks.
    torch.library.opcheck(torch.ops.ds3kit.patch_nce_rows, (query, key, weight, 0.07, "streaming"))
    rows, lse = torch.ops.ds3kit.patch_nce_rows(query, key, weight, 0.07, "streaming")
    torch.testing.assert_close(
        rows.double(), reference_fp64(query.detach(), key.detach(), weight=weight), rtol=2e-5, atol=2e-5
    )
    assert not lse.requires_grad


def test_custom_op_gradients_pass_gradcheck():
    query = unit_rows(1, 17, 6, dtype=torch.float64, seed=4).requires_grad_()
    key = unit_rows(1, 17, 6, dtype=torch.float64, seed=5).requires_grad_()
    weight = torch.rand(1, 17, generator=torch.Generator().manual_seed(6), dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(
        lambda q, k: torch.ops.ds3kit.patch_nce_rows(q, k, weight, 0.07, "streaming")[0], (query, key)
    )


class _HeadAndLoss(torch.nn.Module):
    """What PatchNCELoss does per layer: an MLP head on both sides, L2 rows, the loss with the key detached."""

    def __init__(self, channels: int = 12, dim: int = 20):
        super().__init__()
        self.head = torch.nn.Sequential(torch.nn.Linear(channels, dim), torch.nn.ReLU(), torch.nn.Linear(dim, dim))

    def forward(self, query_features, key_features, weight):
        query = F.normalize(self.head(query_features), dim=-1)
        key = F.normalize(self.head(key_features), dim=-1).detach()
        return patch_nce(query, key, weight=weight, backend="streaming")


def test_compiled_module_with_patch_nce_has_no_graph_break():
    torch.manual_seed(7)
    module = _HeadAndLoss()
    features = torch.randn(3, 41, 12), torch.randn(3, 41, 12)
    weight = torch.rand(3, 41) + 0.5
    eager_loss = module(*features, weight)
    eager_grads = torch.autograd.grad(eager_loss, list(module.parameters()))

    torch._dynamo.reset()
    counts = torch._dynamo.utils.counters
    counts.clear()
    compiled = torch.compile(module, fullgraph=True)  # a graph break is an error under fullgraph
    loss = compiled(*features, weight)
    grads = torch.autograd.grad(loss, list(module.parameters()))
    assert sum(counts["graph_break"].values()) == 0
    assert counts["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------ generator
@pytest.mark.slow
def test_compiled_generator_matches_eager():
    torch.manual_seed(8)
    generator = build_generator("tiny").eval()
    inputs = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = generator(inputs)
        torch._dynamo.reset()
        got = torch.compile(generator)(inputs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ DS3-Net step
def _method() -> DS3Net:
    torch.manual_seed(9)
    return DS3Net(
        teacher=build_generator("tiny"),
        student=build_generator("tiny"),
        teacher_discriminator=build_discriminator("tiny"),
        student_discriminator=build_discriminator("tiny"),
        options=DS3NetOptions(nce_patches=16, teacher_warmup_fraction=0.0),
        total_steps=4,
        lr=1e-3,
        betas=(0.5, 0.999),
    )


def _batches() -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(10)
    coords = torch.arange(32, dtype=torch.float32) - 15.5
    mask = (coords[:, None] ** 2 + coords[None, :] ** 2 <= 110).expand(2, 1, 32, 32).clone()
    paired = {
        "inputs": torch.rand(2, 3, 32, 32, generator=generator) * mask,
        "target": torch.rand(2, 1, 32, 32, generator=generator) * mask,
        "brain_mask": mask,
    }
    unpaired = {"inputs": (0.2 + 0.6 * torch.rand(2, 3, 32, 32, generator=generator)) * mask, "brain_mask": mask}
    return paired, unpaired


def test_ds3net_step_under_bf16_autocast_and_channels_last():
    # What the trainer does on CUDA (method and batches channels_last, the step under bf16 autocast), on the CPU.
    method = _method().to(memory_format=torch.channels_last)
    before = {name: value.detach().clone() for name, value in method.state_dict().items()}
    paired, unpaired = _batches()
    channels_last = {
        k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in paired.items()
    }
    unpaired = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in unpaired.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student = method.student(channels_last["inputs"])
        assert student.dtype == torch.bfloat16  # autocast really ran the convolutions in bf16
        terms = method.training_step(channels_last, unpaired)
    assert terms and all(torch.isfinite(torch.tensor(value)) for value in terms.values()), terms
    assert any(name.startswith("teacher") for name in terms) and any("student" in name for name in terms), terms
    after = method.state_dict()
    changed = [
        name for name, value in after.items() if value.is_floating_point() and not torch.equal(value, before[name])
    ]
    for role in ("teacher.generator.", "student.", "student_discriminator."):
        assert any(name.startswith(role) for name in changed), f"no weight of {role} changed"
    # Parameters stay float32 (autocast casts per op) and the convolutions' weights keep channels_last.
    conv = next(m for m in method.student.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.dtype == torch.float32
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
