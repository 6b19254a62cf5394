"""patch_nce (reference and streaming backends) and PatchNCELoss against independent references."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from ds3kit.losses import PatchNCELoss, patch_nce

# The package re-exports the function under the submodule's name, so fetch the module itself.
patch_nce_module = importlib.import_module("ds3kit.losses.patch_nce")
# The streaming backend's tiles live beside its autograd Function.
streaming_module = importlib.import_module("ds3kit.ops.patch_nce_streaming")


def reference_fp64(query, key, temperature=0.07, weight=None):
    """Independent definition, float64: per-row logsumexp over keys minus the positive."""
    q, k = query.double(), key.double()
    logits = q @ k.transpose(1, 2) / temperature
    losses = torch.logsumexp(logits, -1) - torch.diagonal(logits, dim1=-2, dim2=-1)
    return losses if weight is None else losses * weight.double()


def cut_formula(query, key, temperature=0.07):
    """CUT's PatchNCELoss with negatives from the same image (its -10 diagonal fill), per patch."""
    batch, n, dim = query.shape
    l_pos = (query * key).sum(-1, keepdim=True).reshape(batch * n, 1)
    l_neg = torch.bmm(query, key.transpose(1, 2))
    l_neg = l_neg.masked_fill(torch.eye(n, dtype=torch.bool)[None], -10.0).reshape(batch * n, n)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(batch * n, dtype=torch.long), reduction="none").reshape(batch, n)


def unit_rows(*shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1).to(dtype)


@pytest.fixture
def small_tiles(monkeypatch):
    # Tiles smaller than N so the streaming path really streams (several query and key tiles, ragged last tile).
    monkeypatch.setattr(streaming_module, "QUERY_TILE", 64)
    monkeypatch.setattr(streaming_module, "KEY_TILE", 48)


@pytest.mark.parametrize("backend", ["reference", "streaming"])
@pytest.mark.parametrize("batch, n, dim", [(1, 17, 3), (3, 257, 48), (2, 1031, 256)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_forward_and_gradients_match_fp64(backend, batch, n, dim, reduction, small_tiles):
    query = unit_rows(batch, n, dim, seed=1).requires_grad_()
    key = unit_rows(batch, n, dim, seed=2).requires_grad_()
    weight = torch.rand(batch, n, generator=torch.Generator().manual_seed(3)) + 0.5
    ours = patch_nce(query, key, weight=weight, reduction=reduction, backend=backend)
    expected_rows = reference_fp64(query.detach(), key.detach(), weight=weight)
    expected = {"mean": expected_rows.mean(), "sum": expected_rows.sum(), "none": expected_rows}[reduction]
    torch.testing.assert_close(ours.double(), expected, rtol=2e-5, atol=2e-5)

    upstream = torch.rand_like(ours)
    grads = torch.autograd.grad(ours, (query, key), upstream)
    q64, k64 = query.detach().double().requires_grad_(), key.detach().double().requires_grad_()
    rows = reference_fp64(q64, k64, weight=weight)
    out64 = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
    expected_grads = torch.autograd.grad(out64, (q64, k64), upstream.double())
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6 * max(1.0, float(want.abs().max())))


def test_equals_cut_formula_in_float32(small_tiles):
    query, key = unit_rows(2, 257, 64, seed=4), unit_rows(2, 257, 64, seed=5)
    torch.testing.assert_close(patch_nce(query, key, reduction="none", backend="streaming"), cut_formula(query, key))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_no_worse_than_eager_torch(dtype, small_tiles):
    query, key = unit_rows(2, 257, 48, dtype=dtype, seed=6), unit_rows(2, 257, 48, dtype=dtype, seed=7)
    exact = reference_fp64(query, key)
    # Eager torch in the same dtype: logits computed in that dtype (what autocast would give).
    logits = torch.bmm(query, key.transpose(1, 2)).float() / 0.07
    eager = torch.logsumexp(logits, -1) - torch.diagonal(logits, dim1=-2, dim2=-1)
    ours = patch_nce(query, key, reduction="none", backend="streaming").double()
    assert ((ours - exact).abs() <= 2 * (eager.double() - exact).abs() + 1e-3).all()


def test_streaming_gradcheck_float64(small_tiles, monkeypatch):
    monkeypatch.setattr(streaming_module, "QUERY_TILE", 5)
    monkeypatch.setattr(streaming_module, "KEY_TILE", 4)
    weight = torch.rand(2, 11, dtype=torch.float64)
    for reduction in ("mean", "sum", "none"):
        query = unit_rows(2, 11, 6, dtype=torch.float64, seed=8).requires_grad_()
        key = unit_rows(2, 11, 6, dtype=torch.float64, seed=9).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda q, k, reduction=reduction: patch_nce(q, k, weight=weight, reduction=reduction, backend="streaming"),
            (query, key),
        )


def test_key_without_grad_gets_none_and_query_still_right():
    query = unit_rows(2, 33, 8, seed=10).requires_grad_()
    key = unit_rows(2, 33, 8, seed=11)
    loss = patch_nce(query, key, backend="streaming")
    loss.backward()
    q64 = query.detach().double().requires_grad_()
    reference_fp64(q64, key).mean().backward()
    torch.testing.assert_close(query.grad.double(), q64.grad, rtol=1e-4, atol=1e-7)
    assert key.grad is None


def test_unscaled_and_scaled_upstream_for_scalar_outputs():
    query = unit_rows(1, 40, 8, seed=12).requires_grad_()
    key = unit_rows(1, 40, 8, seed=13)
    (patch_nce(query, key, backend="streaming") * 3.0).backward()
    scaled = query.grad.clone()
    query.grad = None
    patch_nce(query, key, backend="streaming").backward()
    torch.testing.assert_close(scaled, 3.0 * query.grad)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(query=torch.rand(3, 4), key=torch.rand(3, 4)), r"query must be \(B, N, D\)"),
        (dict(query=torch.rand(1, 4, 3), key=torch.rand(1, 5, 3)), "same shape"),
        (dict(reduction="avg"), "reduction must be one of"),
        (dict(backend="cuda"), "backend must be one of"),
        (dict(weight=torch.rand(1, 3)), r"weight must be \(B, N\)"),
        (dict(weight=torch.rand(1, 4, requires_grad=True)), "must not require grad"),
        (dict(temperature=0.0), "temperature must be > 0"),
    ],
)
def test_errors_name_the_problem(kwargs, message):
    arguments = dict(query=unit_rows(1, 4, 3), key=unit_rows(1, 4, 3))
    arguments.update(kwargs)
    query, key = arguments.pop("query"), arguments.pop("key")
    with pytest.raises(ValueError, match=message):
        patch_nce(query, key, **arguments)


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        patch_nce(unit_rows(1, 4, 3), unit_rows(1, 4, 3), backend="triton")


# ---------------------------------------------------------------------------------------------- the module


def features(seed, channels=(5, 7), sizes=((9, 11), (5, 6)), batch=2, grad=False):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=generator, requires_grad=grad) for c, (h, w) in zip(channels, sizes)]


def test_sampling_is_reproducible_and_shared_by_query_and_key():
    loss = PatchNCELoss([5, 7], num_patches=16)
    query, key = features(0, grad=True), features(1)
    first = loss(query, key, generator=torch.Generator().manual_seed(5))
    second = loss(query, key, generator=torch.Generator().manual_seed(5))
    third = loss(query, key, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, second) and not torch.equal(first, third)
    # Same features for query and key: every positive is perfect, so the loss is below the uniform log N.
    same = loss(query, [f.detach() for f in query], generator=torch.Generator().manual_seed(5))
    assert float(same.detach()) < float(torch.log(torch.tensor(16.0)))


def test_weights_land_at_the_sampled_locations(monkeypatch):
    loss = PatchNCELoss([4], num_patches=6)
    query, key = features(2, channels=(4,), sizes=((8, 8),)), features(3, channels=(4,), sizes=((8, 8),))
    difficulty = torch.ones(2, 1, 8, 8)
    difficulty[:, :, 3, 5] = 7.0  # flat index 29 at the layer's (8, 8) size
    seen = {}

    def spy(q, k, *, temperature, weight, backend):
        seen["weight"] = weight
        return patch_nce(q, k, temperature=temperature, weight=weight, backend=backend)

    monkeypatch.setattr(patch_nce_module, "patch_nce", spy)
    generator = torch.Generator().manual_seed(0)
    locations, _ = loss.sample(query[0].shape, 6, difficulty, torch.Generator().manual_seed(0), torch.device("cpu"))
    loss(query, key, difficulty, generator=generator)
    expected = torch.where(locations == 29, 7.0, 1.0)
    torch.testing.assert_close(seen["weight"], expected)


def test_difficulty_sampling_prefers_difficult_locations():
    loss = PatchNCELoss([4], num_patches=4, sampling="difficulty")
    difficulty = torch.full((1, 1, 10, 10), 1e-6)
    difficulty[0, 0, :2, :2] = 1.0  # flat 0, 1, 10, 11
    locations, weights = loss.sample(
        torch.Size((1, 4, 10, 10)), 4, difficulty, torch.Generator().manual_seed(1), torch.device("cpu")
    )
    assert set(locations[0].tolist()) == {0, 1, 10, 11} and weights is None


def test_key_is_detached_heads_learn_and_one_call_for_all_layers(monkeypatch):
    loss = PatchNCELoss([5, 7], num_patches=8)
    query, key = features(4, grad=True), features(5, grad=True)
    calls = []
    real = patch_nce_module.patch_nce

    def counting(q, k, **kwargs):
        calls.append(q.shape)
        return real(q, k, **kwargs)

    monkeypatch.setattr(patch_nce_module, "patch_nce", counting)
    loss(query, key).backward()
    assert calls == [torch.Size([4, 8, 256])], "two layers x batch 2 stacked into one call"
    assert all(k.grad is None for k in key) and all(q.grad is not None for q in query)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())


def test_module_errors():
    with pytest.raises(ValueError, match="sampling must be one of"):
        PatchNCELoss([3], sampling="random")
    loss = PatchNCELoss([5, 7])
    with pytest.raises(ValueError, match="expected 2 feature maps"):
        loss(features(0)[:1], features(1)[:1])


@pytest.mark.parametrize("temperature", [0.07, 0.005])
def test_fixed_and_running_maximum_paths(temperature, small_tiles):
    # T = 0.07 on unit rows lets the streaming path shift by the fixed bound 1/T; T = 0.005 (bound 200) would
    # underflow that way, so the running row maximum takes over. Both must match float64.
    query, key = unit_rows(2, 300, 16, seed=14).requires_grad_(), unit_rows(2, 300, 16, seed=15)
    ours = patch_nce(query, key, temperature=temperature, reduction="none", backend="streaming")
    torch.testing.assert_close(ours.double(), reference_fp64(query.detach(), key, temperature), rtol=1e-5, atol=1e-4)
    ours.sum().backward()
    q64 = query.detach().double().requires_grad_()
    reference_fp64(q64, key, temperature).sum().backward()
    q32 = query.detach().clone().requires_grad_()
    patch_nce(q32, key, temperature=temperature, reduction="none", backend="reference").sum().backward()
    # Cut-Cross-Entropy's rule: no further from float64 than eager torch in float32 (scores reach 1/T = 200 here).
    ours_error = (query.grad.double() - q64.grad).abs()
    eager_error = (q32.grad.double() - q64.grad).abs()
    assert (ours_error <= 2 * eager_error + 1e-5 * q64.grad.abs().max()).all()
