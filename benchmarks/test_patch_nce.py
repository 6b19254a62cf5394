"""``patch_nce`` group: the patchwise contrastive loss alone, one provider against another, time and peak memory.

Providers: ``cut_eager`` (CUT's PatchNCELoss formula: l_pos, bmm l_neg with a -10 diagonal, cat, cross-entropy; the
baseline), ``reference`` (ds3kit's eager definition), ``streaming`` (the tiled CPU path) and ``triton`` (the fused
kernels; CUDA only). Modes: ``forward`` (no graph), ``backward`` (the backward of a forward run outside the timer)
and ``full`` (forward + backward). The key is detached in every mode, as CUT uses it.

FLOPs are the algorithm's, the same for every provider (the convention of fused-attention benchmarks): forward
2 B N^2 D (the scores), backward 2 B N^2 D (P K for the query gradient; recomputed scores are not counted), full
the sum. Peak extra memory is the peak during the timed rounds minus the memory in use before them (CUDA
max_memory_allocated; on CPU the process's peak RSS, see ``_measure.PeakMemory``).

Under ``--benchmark-disable`` (CI) only N = 256 runs, so the bodies are checked in seconds.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.nn.functional as F
from _measure import PeakMemory, Timed, profile_dir, synchronize, throughput_info, write_profile

from ds3kit.losses.patch_nce import patch_nce

PROVIDERS = ["cut_eager", "reference", "streaming", "triton"]
MODES = ["forward", "backward", "full"]
PATCHES = [256, 1024, 4096, 16384]
BATCHES = [1, 8]
DIM = 256  # CUT's MLP head width
TEMPERATURE = 0.07
# On CPU a case of more than this many full-mode FLOPs would take more than ~30 s a round on a few cores
# (B = 1, N = 16384 is 2.7e11: in; B = 8, N = 16384: out).
CPU_MAX_FLOPS = 3e11

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


def cut_patch_nce(query: torch.Tensor, key: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """CUT's PatchNCELoss (negatives from the same image), mean over patches: the eager baseline."""
    batch, n, _ = query.shape
    l_pos = (query * key).sum(-1, keepdim=True).reshape(batch * n, 1)
    l_neg = torch.bmm(query, key.transpose(1, 2))
    eye = torch.eye(n, dtype=torch.bool, device=query.device)[None]
    l_neg = l_neg.masked_fill(eye, -10.0).reshape(batch * n, n)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    target = torch.zeros(batch * n, dtype=torch.long, device=query.device)
    return F.cross_entropy(logits.float(), target)


def loss_fn(provider: str):
    if provider == "cut_eager":
        return cut_patch_nce
    return lambda query, key: patch_nce(query, key, temperature=TEMPERATURE, backend=provider)


def algorithm_flops(mode: str, batch: int, n: int, dim: int) -> float:
    one_product = 2.0 * batch * n * n * dim
    return {"forward": one_product, "backward": one_product, "full": 2 * one_product}[mode]


@pytest.mark.benchmark(group="patch_nce")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("n", PATCHES, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("device", DEVICES)
def test_patch_nce(benchmark, device: str, dtype: str, n: int, batch: int, provider: str, mode: str) -> None:
    dev = torch.device(device)
    if benchmark.disabled and n != PATCHES[0]:
        pytest.skip("--benchmark-disable checks each code path once, at the smallest N")
    if dev.type == "cpu" and dtype != "float32":
        pytest.skip("on CPU only float32 is measured (bfloat16 matmuls are emulated there)")
    if provider == "triton":
        if dev.type != "cuda":
            pytest.skip("the Triton provider is measured on CUDA only (the CPU interpreter times numpy)")
        if os.environ.get("TRITON_INTERPRET") == "1":
            pytest.skip("TRITON_INTERPRET=1 would time the interpreter; run without it to measure the kernels")
    if dev.type == "cpu" and algorithm_flops("full", batch, n, DIM) > CPU_MAX_FLOPS:
        pytest.skip(f"B={batch}, N={n} would take more than ~30 s a round on this CPU")
    if dev.type == "cpu" and provider in ("cut_eager", "reference") and batch * n * n * 4 > 2**31:
        pytest.skip(f"the eager (B, N, N) logits would need {batch * n * n * 4 / 2**30:.0f} GiB and more on CPU")

    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(batch, n, DIM, generator=generator), dim=-1).to(dev, torch_dtype)
    key = F.normalize(torch.randn(batch, n, DIM, generator=generator), dim=-1).to(dev, torch_dtype)  # detached
    loss = loss_fn(provider)

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return loss(query, key)

    def full() -> torch.Tensor:
        q = query.detach().requires_grad_(True)
        value = loss(q, key)
        value.backward()
        return value

    def setup_backward():
        q = query.detach().requires_grad_(True)
        return (loss(q, key),), {}

    flops = algorithm_flops(mode, batch, n, DIM)
    heavy = flops > (2e10 if dev.type == "cpu" else 2e12)
    # With the key detached and a scalar loss, the streaming path produces the query gradient in its forward pass
    # and backward only scales it: no product runs there, so no FLOPs are credited to it (read "full" instead).
    gradient_in_forward = provider == "streaming" and mode == "backward"
    if gradient_in_forward:
        flops = 0.0
    rounds = 1 if benchmark.disabled else (2 if heavy else (5 if dev.type == "cpu" else 20))
    if mode == "backward":
        timed = Timed(lambda: None, dev)  # only its statistics: the graph to run backward through is an argument

        def target(value: torch.Tensor) -> None:
            synchronize(dev)
            started = time.perf_counter()
            value.backward()
            synchronize(dev)
            timed.durations.append(time.perf_counter() - started)

        target(*setup_backward()[0])  # warm-up
        timed.durations.clear()
        with PeakMemory(dev) as memory:
            benchmark.pedantic(target, setup=setup_backward, rounds=rounds, iterations=1)
        result = None
    else:
        timed = Timed(forward if mode == "forward" else full, dev)
        timed()  # warm-up: allocator, oneDNN primitives, Triton compilation
        timed.durations.clear()
        with PeakMemory(dev) as memory:
            result = benchmark.pedantic(
                timed, rounds=rounds, iterations=1, warmup_rounds=0 if dev.type == "cpu" or heavy else 3
            )
    if result is not None:
        assert torch.isfinite(result)
    extra_bytes = memory.peak_bytes - memory.baseline_bytes
    benchmark.extra_info.update(
        throughput_info(
            device=dev,
            dtype=dtype,
            flops=flops,
            seconds=timed.best,
            median_seconds=timed.median,
            memory=memory,
            provider=provider,
            mode=mode,
            shapes={"batch": batch, "patches": n, "dim": DIM},
            gradient_in_forward=gradient_in_forward,
            gflops_per_s=flops / timed.best / 1e9,
            peak_extra_memory_bytes=extra_bytes,
            rounds=len(timed.durations),
            key_detached=True,
            temperature=TEMPERATURE,
        )
    )
    if profile_dir() is not None and mode == "full" and n == 1024 and batch == 1:
        write_profile(f"patch_nce_op-{provider}-{device}", full, dev)
