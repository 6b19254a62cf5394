"""The Triton patch_nce kernels against independent references (float64 definition, CUT's own formula).

On a machine without CUDA the kernels run under Triton's CPU interpreter (``TRITON_INTERPRET=1``, set below before
anything imports triton); with CUDA and ``TRITON_INTERPRET=0`` the same tests run the compiled kernels on the GPU.
The interpreter executes every program in numpy, so the shapes stay small; the 257-patch cases are marked slow.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton.jit decorates the kernels

import json  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton", reason="the Triton backend needs the 'triton' package")

from ds3kit.losses.patch_nce import patch_nce  # noqa: E402
from ds3kit.ops import configs  # noqa: E402
from ds3kit.ops import patch_nce as ops  # noqa: E402

pytestmark = pytest.mark.triton

INTERPRETED = os.environ["TRITON_INTERPRET"] == "1"
DEVICE = "cpu" if INTERPRETED or not torch.cuda.is_available() else "cuda"
if DEVICE == "cpu" and not INTERPRETED:
    pytest.skip(
        "compiled Triton kernels need CUDA; set TRITON_INTERPRET=1 to run them on the CPU", allow_module_level=True
    )


# ------------------------------------------------------------------------------------------------ references
def reference_fp64(query, key, temperature=0.07, weight=None):
    """Independent definition in float64: logits = q k^T / T, per-row logsumexp minus the diagonal."""
    q, k = query.double(), key.double()
    logits = q @ k.transpose(1, 2) / temperature
    losses = torch.logsumexp(logits, -1) - torch.diagonal(logits, dim1=-2, dim2=-1)
    return losses if weight is None else losses * weight.double()


def reference_same_dtype(query, key, temperature=0.07, weight=None):
    """The same definition computed by eager torch in the inputs' own dtype (the Cut-Cross-Entropy yardstick)."""
    logits = torch.bmm(query, key.transpose(1, 2)) / temperature
    losses = torch.logsumexp(logits, -1) - torch.diagonal(logits, dim1=-2, dim2=-1)
    return losses if weight is None else losses * weight.to(losses.dtype)


def cut_formula(query, key, temperature=0.07):
    """CUT's PatchNCELoss, float32, negatives from the same image (the -10 diagonal fill), per patch."""
    batch, n, _ = query.shape
    l_pos = (query * key).sum(-1, keepdim=True).reshape(batch * n, 1)
    l_neg = torch.bmm(query, key.transpose(1, 2))
    eye = torch.eye(n, dtype=torch.bool, device=query.device)[None]
    l_neg = l_neg.masked_fill(eye, -10.0).reshape(batch * n, n)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    target = torch.zeros(batch * n, dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target, reduction="none").reshape(batch, n)


def reduce(rows, reduction):
    return {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]


def unit_rows(*shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rows = F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)
    return rows.to(dtype).to(DEVICE)


def weights(batch, n, seed=3):
    return (torch.rand(batch, n, generator=torch.Generator().manual_seed(seed)) + 0.5).to(DEVICE)


def fp64_grads(query, key, weight, reduction, upstream, temperature=0.07):
    q64 = query.detach().double().requires_grad_()
    k64 = key.detach().double().requires_grad_()
    out = reduce(reference_fp64(q64, k64, temperature, weight), reduction)
    return out.detach(), torch.autograd.grad(out, (q64, k64), upstream.double())


@pytest.fixture(autouse=True)
def default_config():
    ops.set_kernel_config(None)
    yield
    ops.set_kernel_config(None)


# ------------------------------------------------------------------------------------------------ float32
SHAPES = [(1, 17, 3), (3, 41, 48), (2, 33, 64)]


@pytest.mark.parametrize("batch, n, dim", SHAPES + [pytest.param(3, 257, 64, marks=pytest.mark.slow)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_forward_and_gradients_match_fp64(batch, n, dim, reduction, weighted):
    query = unit_rows(batch, n, dim, seed=1).requires_grad_()
    key = unit_rows(batch, n, dim, seed=2).requires_grad_()
    weight = weights(batch, n) if weighted else None
    ours = ops.patch_nce_triton(query, key, weight=weight, reduction=reduction)
    assert ours.dtype == torch.float32
    assert ours.shape == ((batch, n) if reduction == "none" else ())

    upstream = torch.rand(ours.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE) + 0.5
    expected, (dq64, dk64) = fp64_grads(query, key, weight, reduction, upstream)
    torch.testing.assert_close(ours.double(), expected, rtol=2e-5, atol=2e-5)
    # CUT's own float32 formula (the loss the paper trained with).
    cut = cut_formula(query.detach(), key.detach())
    cut = cut if weight is None else cut * weight
    torch.testing.assert_close(ours, reduce(cut, reduction), rtol=2e-5, atol=2e-5)

    dq, dk = torch.autograd.grad(ours, (query, key), upstream)
    assert dq.dtype == dk.dtype == torch.float32
    torch.testing.assert_close(dq.double(), dq64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dk.double(), dk64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block_m, block_n", [(16, 32), (32, 16), (64, 64)])
def test_tiles_of_unequal_sides(block_m, block_n):
    # Query and key tiles of different sides, ragged in N (41): the key-gradient kernel walks query tiles of
    # block_m rows while it owns block_n keys.
    ops.set_kernel_config(ops.KernelConfig(block_m=block_m, block_n=block_n))
    query = unit_rows(2, 41, 24, seed=5).requires_grad_()
    key = unit_rows(2, 41, 24, seed=6).requires_grad_()
    weight = weights(2, 41)
    ours = ops.patch_nce_triton(query, key, weight=weight, reduction="none")
    upstream = torch.randn(2, 41, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    expected, (dq64, dk64) = fp64_grads(query, key, weight, "none", upstream)
    dq, dk = torch.autograd.grad(ours, (query, key), upstream)
    torch.testing.assert_close(ours.double(), expected, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(dq.double(), dq64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dk.double(), dk64, rtol=1e-4, atol=1e-5)


def test_small_temperature_needs_the_running_max():
    # Logits up to 1/T = 200: exp overflows float32 unless the log-sum-exp subtracts a maximum. Keys near their
    # queries, so that the positive dominates (the regime of a trained CUT).
    query = unit_rows(2, 17, 16, seed=8).requires_grad_()
    key = F.normalize(query.detach() + 0.2 * unit_rows(2, 17, 16, seed=9), dim=-1).requires_grad_()
    ours = ops.patch_nce_triton(query, key, temperature=0.005, reduction="none")
    upstream = torch.ones(2, 17, device=DEVICE)
    expected, (dq64, dk64) = fp64_grads(query, key, None, "none", upstream, temperature=0.005)
    assert torch.isfinite(ours).all()
    # float32 logits of size 200 carry ~2e-5 of rounding each.
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=2e-4)
    dq, dk = torch.autograd.grad(ours, (query, key), upstream)
    torch.testing.assert_close(dq.double(), dq64, rtol=1e-4, atol=5e-3)
    torch.testing.assert_close(dk.double(), dk64, rtol=1e-4, atol=5e-3)


def test_detached_key_gets_no_gradient_and_query_grad_is_unchanged():
    query = unit_rows(3, 41, 48, seed=10).requires_grad_()
    key = unit_rows(3, 41, 48, seed=11)  # detached, as CUT uses it
    weight = weights(3, 41)
    ours = ops.patch_nce_triton(query, key, weight=weight)
    ours.backward()
    assert key.grad is None
    _, (dq64, _) = fp64_grads(query, key, weight, "mean", torch.tensor(1.0, device=DEVICE))
    torch.testing.assert_close(query.grad.double(), dq64, rtol=1e-4, atol=1e-6)


def test_key_gradient_alone():
    query = unit_rows(1, 17, 3, seed=12)
    key = unit_rows(1, 17, 3, seed=13).requires_grad_()
    ops.patch_nce_triton(query, key, reduction="sum").backward()
    assert query.grad is None
    _, (_, dk64) = fp64_grads(query, key, None, "sum", torch.tensor(1.0, device=DEVICE))
    torch.testing.assert_close(key.grad.double(), dk64, rtol=1e-4, atol=1e-5)


def test_no_input_requires_grad():
    query, key = unit_rows(1, 17, 16, seed=14), unit_rows(1, 17, 16, seed=15)
    out = ops.patch_nce_triton(query, key)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out.double(), reference_fp64(query, key).mean(), rtol=2e-5, atol=2e-5)


def test_non_contiguous_inputs():
    query = unit_rows(2, 16, 41, seed=16).transpose(1, 2)  # (2, 41, 16), not contiguous
    key = unit_rows(2, 41, 16, seed=17)
    query = F.normalize(query, dim=-1).requires_grad_()
    ours = ops.patch_nce_triton(query, key, reduction="none")
    torch.testing.assert_close(ours.double(), reference_fp64(query.detach(), key), rtol=2e-5, atol=2e-5)
    ours.sum().backward()
    _, (dq64, _) = fp64_grads(query, key, None, "sum", torch.tensor(1.0, device=DEVICE))
    torch.testing.assert_close(query.grad.double(), dq64, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ half precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("batch, n, dim", [(1, 17, 16), (3, 41, 48), pytest.param(2, 257, 64, marks=pytest.mark.slow)])
def test_half_precision_no_worse_than_eager_torch(dtype, batch, n, dim):
    """Cut-Cross-Entropy's rule, element-wise: |ours - fp64| <= 2 |torch_same_dtype - fp64| + tol.

    tol is half an ulp of the largest exact value in the dtype: the rounding of the output itself, which eager
    torch may dodge on a lucky element.
    """
    query = unit_rows(batch, n, dim, dtype=dtype, seed=18).requires_grad_()
    key = unit_rows(batch, n, dim, dtype=dtype, seed=19).requires_grad_()
    weight = weights(batch, n)
    upstream = torch.randn(batch, n, generator=torch.Generator().manual_seed(20)).to(DEVICE)

    ours = ops.patch_nce_triton(query, key, weight=weight, reduction="none")
    assert ours.dtype == torch.float32
    ours_dq, ours_dk = torch.autograd.grad(ours, (query, key), upstream)
    assert ours_dq.dtype == ours_dk.dtype == dtype

    eager = reference_same_dtype(query, key, weight=weight)
    eager_dq, eager_dk = torch.autograd.grad(eager, (query, key), upstream.to(dtype))
    exact, (exact_dq, exact_dk) = fp64_grads(query, key, weight, "none", upstream)

    for name, mine, theirs, truth in (
        ("loss", ours, eager, exact),
        ("dq", ours_dq, eager_dq, exact_dq),
        ("dk", ours_dk, eager_dk, exact_dk),
    ):
        error = (mine.double() - truth).abs()
        bound = 2 * (theirs.double() - truth).abs() + torch.finfo(dtype).eps / 2 * truth.abs().max()
        worst = (error - bound).max().item()
        assert worst <= 0, f"{name}: error exceeds the bound by {worst:.3g} (max error {error.max().item():.3g})"


# ------------------------------------------------------------------------------------------------ dispatch
def test_module_level_agreement_with_streaming():
    query = unit_rows(3, 41, 48, seed=21).requires_grad_()
    key = unit_rows(3, 41, 48, seed=22).requires_grad_()
    weight = weights(3, 41)
    results = {}
    for backend in ("triton", "streaming"):
        q, k = query.detach().clone().requires_grad_(), key.detach().clone().requires_grad_()
        out = patch_nce(q, k, weight=weight, reduction="mean", backend=backend)
        out.backward()
        results[backend] = (out, q.grad, k.grad)
    for ours, theirs in zip(results["triton"], results["streaming"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_search_call_signature():
    # benchmarks/search.py times ops.PatchNCEFunction.apply(query, key, weight) with the remaining defaults.
    query = unit_rows(1, 13, 16, seed=23).requires_grad_()
    key, weight = unit_rows(1, 13, 16, seed=24), weights(1, 13)
    loss = ops.PatchNCEFunction.apply(query, key, weight)
    torch.testing.assert_close(
        loss.double(), reference_fp64(query.detach(), key, weight=weight).mean(), rtol=2e-5, atol=2e-5
    )
    loss.sum().backward()
    assert query.grad is not None


def test_interpreted_flag_is_how_the_kernels_were_decorated():
    # ops._INTERPRETED comes from ds3kit.ops.interpreter.interpreter_on() at import; it must say what triton.jit did.
    assert ops._INTERPRETED == (type(ops.KERNELS["forward"]).__name__ == "InterpretedFunction") == INTERPRETED


@pytest.mark.skipif(DEVICE != "cpu", reason="the CPU guard only matters without CUDA")
def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    query, key = unit_rows(1, 17, 16, seed=25), unit_rows(1, 17, 16, seed=26)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        patch_nce(query, key, backend="triton")
    # Kernels decorated without the interpreter (TRITON_INTERPRET unset at import) refuse CPU tensors too.
    monkeypatch.setattr(ops, "_INTERPRETED", False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ops.patch_nce_triton(query, key)


@pytest.mark.parametrize(
    "case, match",
    [
        ("float64", "float64"),
        ("mixed", "must share a dtype"),
        ("shape", "same shape"),
        ("empty", "at least one patch"),
        ("reduction", "reduction"),
        ("temperature", "temperature"),
        ("weight_shape", "weight must be"),
        ("weight_grad", "must not require grad"),
        ("dim", "D <="),
    ],
)
def test_bad_inputs(case, match):
    query, key = unit_rows(2, 17, 8, seed=27), unit_rows(2, 17, 8, seed=28)
    kwargs = {}
    if case == "float64":
        query, key = query.double(), key.double()
    elif case == "mixed":
        key = key.half()
    elif case == "shape":
        key = key[:, :16]
    elif case == "empty":
        query, key = query[:, :0], key[:, :0]
    elif case == "reduction":
        kwargs["reduction"] = "max"
    elif case == "temperature":
        kwargs["temperature"] = 0.0
    elif case == "weight_shape":
        kwargs["weight"] = torch.ones(2, 16, device=DEVICE)
    elif case == "weight_grad":
        kwargs["weight"] = torch.ones(2, 17, device=DEVICE, requires_grad=True)
    elif case == "dim":
        query, key = unit_rows(1, 2, ops.MAX_DIM + 1), unit_rows(1, 2, ops.MAX_DIM + 1)
    with pytest.raises(ValueError, match=match):
        ops.patch_nce_triton(query, key, **kwargs)


# ------------------------------------------------------------------------------------------------ KernelConfig
@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("DS3KIT_CACHE", str(tmp_path))
    monkeypatch.setattr(ops, "_gpu_name", lambda device: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(ops, "_capability", lambda device: (9, 0))
    ops.clear_kernel_config_cache()
    yield tmp_path / "kernels" / "patch_nce-nvidia-h100-80gb-hbm3.json"
    ops.clear_kernel_config_cache()


def test_kernel_config_loads_the_search_file(fake_gpu):
    assert ops.kernel_cache_path("NVIDIA H100 80GB HBM3") == fake_gpu
    table = configs.default_config((9, 0), torch.float32, 256)
    assert ops.get_kernel_config("cuda") == table  # no file yet: the per-GPU table
    ops.clear_kernel_config_cache()
    fake_gpu.parent.mkdir(parents=True)
    # What benchmarks/search.py writes: the best trial's parameters under "config", beside its bookkeeping.
    fake_gpu.write_text(
        json.dumps(
            {
                "kernel": "patch_nce",
                "device": "NVIDIA H100 80GB HBM3",
                "median_ms": 0.4,
                "config": {"block_m": 32, "block_n": 128, "num_warps": 8, "num_stages": 3},
            }
        )
    )
    expected = ops.KernelConfig(block_m=32, block_n=128, num_warps=8, num_stages=3)
    assert ops.get_kernel_config("cuda") == expected
    # Read once: a later change of the file is not seen until the cache is cleared.
    fake_gpu.write_text(json.dumps({"config": {"block_m": 16}}))
    assert ops.get_kernel_config("cuda:0") == expected
    ops.clear_kernel_config_cache()
    assert ops.get_kernel_config("cuda") == ops.KernelConfig(block_m=16)
    # An explicit override beats the file; None goes back to it.
    override = ops.KernelConfig(block_m=128, block_n=32)
    ops.set_kernel_config(override)
    assert ops.get_kernel_config("cuda") == override
    ops.set_kernel_config(None)
    assert ops.get_kernel_config("cuda") == ops.KernelConfig(block_m=16)
    # The CPU (interpreter) always gets the small tiles unless overridden.
    assert ops.get_kernel_config("cpu") == ops.INTERPRETER_CONFIG


def test_unusable_kernel_config_file_warns_and_falls_back(fake_gpu):
    fake_gpu.parent.mkdir(parents=True)
    fake_gpu.write_text(json.dumps({"config": {"block_m": 48}}))  # not a power of two
    table = configs.default_config((9, 0), torch.float32, 256)
    with pytest.warns(UserWarning, match="ignoring the patch_nce kernel config"):
        assert ops.get_kernel_config("cuda") == table
    ops.clear_kernel_config_cache()
    fake_gpu.write_text("{not json")
    with pytest.warns(UserWarning):
        assert ops.get_kernel_config("cuda") == table
    ops.clear_kernel_config_cache()
    fake_gpu.write_text(json.dumps({"config": {"block_m": 32, "block_k": 64}}))  # fields this version lacks: ignored
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.get_kernel_config("cuda") == ops.KernelConfig(block_m=32)


def test_tuned_file_applies_only_to_the_dtype_and_dim_it_was_tuned_for(fake_gpu):
    fake_gpu.parent.mkdir(parents=True)
    tuned = {"block_m": 32, "block_n": 128, "num_warps": 8, "num_stages": 3, "block_d": 64}
    fake_gpu.write_text(json.dumps({"config": tuned, "dtype": "bf16", "dim": 256}))
    assert ops.get_kernel_config("cuda", torch.bfloat16, 256) == ops.KernelConfig(**tuned)
    assert ops.get_kernel_config("cuda", torch.bfloat16, 200) == ops.KernelConfig(**tuned)  # same padded D
    assert ops.get_kernel_config("cuda", torch.float32, 256) == configs.default_config((9, 0), torch.float32, 256)
    assert ops.get_kernel_config("cuda", torch.bfloat16, 1024) == configs.default_config((9, 0), torch.bfloat16, 1024)


def test_kernel_config_rejects_bad_values():
    with pytest.raises(ValueError, match="power of two"):
        ops.KernelConfig(block_m=8)
    with pytest.raises(ValueError, match="num_warps"):
        ops.KernelConfig(num_warps=3)
    with pytest.raises(ValueError, match="block_d"):
        ops.KernelConfig(block_d=48)
    with pytest.raises(ValueError, match="KernelConfig or None"):
        ops.set_kernel_config({"block_m": 16})


# ------------------------------------------------------------------------------------------------ D in chunks
@pytest.mark.parametrize(
    "batch, n, dim, block_d",
    [
        (2, 41, 512, 128),
        (1, 23, 1024, 256),
        (2, 19, 200, 64),
        (1, 17, 48, 16),
    ],
)
def test_feature_chunks_match_fp64(batch, n, dim, block_d):
    # block_d < D: the forward sums each score tile over D chunks; each gradient program writes one chunk and
    # recomputes its scores. D = 200 and 48 leave a ragged last chunk.
    ops.set_kernel_config(ops.KernelConfig(block_m=16, block_n=32, block_d=block_d, num_warps=1, num_stages=1))
    query = unit_rows(batch, n, dim, seed=40).requires_grad_()
    key = unit_rows(batch, n, dim, seed=41).requires_grad_()
    weight = weights(batch, n)
    ours = ops.patch_nce_triton(query, key, weight=weight, reduction="none")
    upstream = torch.randn(batch, n, generator=torch.Generator().manual_seed(42)).to(DEVICE)
    expected, (dq64, dk64) = fp64_grads(query, key, weight, "none", upstream)
    dq, dk = torch.autograd.grad(ours, (query, key), upstream)
    torch.testing.assert_close(ours.double(), expected, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(dq.double(), dq64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dk.double(), dk64, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_odd_group_of_401_with_chunks():
    ops.set_kernel_config(ops.KernelConfig(block_m=32, block_n=64, block_d=32, num_warps=1, num_stages=1))
    query = unit_rows(1, 401, 96, seed=43).requires_grad_()
    key = unit_rows(1, 401, 96, seed=44).requires_grad_()
    weight = weights(1, 401)
    ours = ops.patch_nce_triton(query, key, weight=weight)
    expected, (dq64, dk64) = fp64_grads(query, key, weight, "mean", torch.tensor(1.0, device=DEVICE))
    dq, dk = torch.autograd.grad(ours, (query, key))
    torch.testing.assert_close(ours.double(), expected, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(dq.double(), dq64, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(dk.double(), dk64, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_chunks_no_worse_than_eager_torch(dtype):
    ops.set_kernel_config(ops.KernelConfig(block_m=16, block_n=16, block_d=128, num_warps=1, num_stages=1))
    query = unit_rows(1, 21, 512, dtype=dtype, seed=45).requires_grad_()
    key = unit_rows(1, 21, 512, dtype=dtype, seed=46).requires_grad_()
    upstream = torch.randn(1, 21, generator=torch.Generator().manual_seed(47)).to(DEVICE)
    ours = ops.patch_nce_triton(query, key, reduction="none")
    ours_dq, ours_dk = torch.autograd.grad(ours, (query, key), upstream)
    eager = reference_same_dtype(query, key)
    eager_dq, eager_dk = torch.autograd.grad(eager, (query, key), upstream.to(dtype))
    exact, (exact_dq, exact_dk) = fp64_grads(query, key, None, "none", upstream)
    for name, mine, theirs, truth in (
        ("loss", ours, eager, exact),
        ("dq", ours_dq, eager_dq, exact_dq),
        ("dk", ours_dk, eager_dk, exact_dk),
    ):
        error = (mine.double() - truth).abs()
        bound = 2 * (theirs.double() - truth).abs() + torch.finfo(dtype).eps / 2 * truth.abs().max()
        assert (error <= bound).all(), f"{name}: max error {error.max().item():.3g}"


# ------------------------------------------------------------------------------------------------ fallback
class _FakeDevice:
    """Stands in for a GPU's launch check: a kernel whose tiles need more than ``limit`` bytes of shared memory
    raises Triton's OutOfResources (as a compiled launch does), others run (interpreted)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.launched: list[tuple[str, int, int, int]] = []

    @staticmethod
    def needs(params: dict) -> int:
        return 4 * params["BLOCK_D"] * (params["BLOCK_M"] + params["BLOCK_N"])

    def wrap(self, name, kernel):
        device = self

        class Launcher:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    required = device.needs(kwargs)
                    if required > device.limit:
                        raise ops.OutOfResources(required, device.limit, "shared memory")
                    device.launched.append((name, kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["BLOCK_D"]))
                    return kernel[grid](*args, **kwargs)

                return launch

        return Launcher()


@pytest.fixture
def fake_device(monkeypatch):
    def install(limit):
        device = _FakeDevice(limit)
        monkeypatch.setattr(ops, "KERNELS", {name: device.wrap(name, kernel) for name, kernel in ops.KERNELS.items()})
        return device

    ops.clear_kernel_config_cache()
    yield install
    ops.clear_kernel_config_cache()


def test_config_that_does_not_fit_falls_back_to_a_smaller_one_with_one_warning(fake_device):
    device = fake_device(limit=4 * 64 * (32 + 32))  # 32 x 32 tiles with 64-wide chunks fit, 128 x 128 do not
    ops.set_kernel_config(ops.KernelConfig(block_m=128, block_n=128, num_warps=4, num_stages=2))
    query = unit_rows(2, 41, 96, seed=50).requires_grad_()
    key = unit_rows(2, 41, 96, seed=51).requires_grad_()
    weight = weights(2, 41)
    with pytest.warns(RuntimeWarning, match="does not launch") as caught:
        ours = ops.patch_nce_triton(query, key, weight=weight)
        dq, dk = torch.autograd.grad(ours, (query, key))
        ops.patch_nce_triton(query, key, weight=weight)  # a second call: the failed config is not retried
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert {entry[1:] for entry in device.launched} == {(32, 32, 64)}
    expected, (dq64, dk64) = fp64_grads(query, key, weight, "mean", torch.tensor(1.0, device=DEVICE))
    torch.testing.assert_close(ours.double(), expected, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(dq.double(), dq64, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(dk.double(), dk64, rtol=1e-4, atol=1e-6)


def test_no_config_fits_runs_the_streaming_path_with_one_warning(fake_device):
    device = fake_device(limit=0)  # nothing launches
    query = unit_rows(2, 41, 24, seed=52).requires_grad_()
    key = unit_rows(2, 41, 24, seed=53).requires_grad_()
    weight = weights(2, 41)
    with pytest.warns(RuntimeWarning, match="streaming") as caught:
        ours = ops.patch_nce_triton(query, key, weight=weight, reduction="sum")
        dq, dk = torch.autograd.grad(ours, (query, key))
        patch_nce(query, key, weight=weight, backend="triton")
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert device.launched == []
    expected, (dq64, dk64) = fp64_grads(query, key, weight, "sum", torch.tensor(1.0, device=DEVICE))
    torch.testing.assert_close(ours.double(), expected, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(dq.double(), dq64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dk.double(), dk64, rtol=1e-4, atol=1e-5)


def test_backward_kernel_that_does_not_fit_gets_the_streaming_gradient(fake_device):
    # The forward launches (its tiles are smaller than the fake limit), the key-gradient kernel never does.
    device = fake_device(limit=10**9)
    real_wrap = device.wrap

    def refuse_dk(name, kernel):
        if name == "dk":

            class Refuse:
                def __getitem__(self, grid):
                    def launch(*args, **kwargs):
                        raise ops.OutOfResources(1, 0, "shared memory")

                    return launch

            return Refuse()
        return real_wrap(name, kernel)

    ops.KERNELS = {name: refuse_dk(name, kernel) for name, kernel in ops.KERNELS.items()}
    query = unit_rows(1, 33, 40, seed=54).requires_grad_()
    key = unit_rows(1, 33, 40, seed=55).requires_grad_()
    with pytest.warns(RuntimeWarning, match="dk kernel launches.*streaming"):
        ours = ops.patch_nce_triton(query, key, reduction="none")
        upstream = torch.randn(1, 33, generator=torch.Generator().manual_seed(56)).to(DEVICE)
        dq, dk = torch.autograd.grad(ours, (query, key), upstream)
    expected, (dq64, dk64) = fp64_grads(query, key, None, "none", upstream)
    torch.testing.assert_close(dq.double(), dq64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dk.double(), dk64, rtol=1e-4, atol=1e-5)
    assert {entry[0] for entry in device.launched} == {"forward", "dq"}
