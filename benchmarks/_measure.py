"""Shared measurement helpers of the benchmarks: device names, synchronised timing, FLOPs, the machine's own peaks,
peak memory, and torch.profiler traces.

Every benchmark reports its achieved FLOP/s as a fraction of peaks measured on the same machine in the same
process (:func:`machine_peaks`): a large sgemm and a convolution of a shape the generator runs. A fraction of a
datasheet number would mix up "our code is slow" with "this CPU is slower than its datasheet".
"""

from __future__ import annotations

import functools
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

# Shapes of the peak measurements, per device type. The convolution is the generator's most common one at the
# resolution it trains on: a 3x3, stride-1 convolution at the full-resolution decoder width ("small" preset on CPU:
# 32 channels at 96 x 96; "large" preset on GPU: 128 channels at 240 x 240).
MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}
CONV_SHAPE = {  # (batch, in_channels, out_channels, height, width, kernel)
    "cpu": (4, 32, 32, 96, 96, 3),
    "cuda": (16, 128, 128, 240, 240, 3),
}


def device_name(device: torch.device | str) -> str:
    """A human name of the device: the GPU's name, or the CPU model and the threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels, so that a host clock measures the work and not its launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timed:
    """Wrap ``fn`` so that every call is timed (synchronised on CUDA); ``durations`` keeps the seconds of each call.

    pytest-benchmark's own statistics are not available under ``--benchmark-disable``; the wrapper gives the same
    numbers in both modes, so ``extra_info`` is always filled.
    """

    def __init__(self, fn: Callable[[], Any], device: torch.device | str) -> None:
        self.fn = fn
        self.device = torch.device(device)
        self.durations: list[float] = []

    def __call__(self) -> Any:
        synchronize(self.device)
        start = time.perf_counter()
        result = self.fn()
        synchronize(self.device)
        self.durations.append(time.perf_counter() - start)
        return result

    @property
    def best(self) -> float:
        return min(self.durations)

    @property
    def median(self) -> float:
        return statistics.median(self.durations)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (forward and any backward it runs), by torch.utils.flop_counter.

    Only the ops with a registered formula count (matmuls, convolutions, attention): element-wise work such as
    normalisation, activations and the optimiser is not in the figure, so FLOP/s here means "useful" FLOP/s.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _best_rate(
    fn: Callable[[], Any], flops: float, device: torch.device, *, min_time: float, min_repeats: int
) -> float:
    fn()  # warm-up: allocator, oneDNN primitive / cuDNN algorithm selection
    synchronize(device)
    best = float("inf")
    repeats, started = 0, time.perf_counter()
    while repeats < min_repeats or time.perf_counter() - started < min_time:
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
        repeats += 1
    return flops / best


@functools.cache
def machine_peaks(device: str, dtype: str = "float32") -> dict[str, Any]:
    """The best FLOP/s this process reaches on ``device`` for a large matmul and for a generator-like convolution.

    Measured once per process (cached): every benchmark of a session divides by the same numbers. On CUDA the
    matmul and the convolution run in ``dtype`` (bf16 for the autocast benchmarks); on CPU always float32.
    """
    dev = torch.device(device)
    kind = "cuda" if dev.type == "cuda" else "cpu"
    torch_dtype = getattr(torch, dtype) if kind == "cuda" else torch.float32
    n = MATMUL_SIZE[kind]
    a = torch.randn(n, n, device=dev, dtype=torch_dtype)
    b = torch.randn(n, n, device=dev, dtype=torch_dtype)
    # Long enough that a busy neighbour on a shared machine cannot hide the best rate (it is a maximum).
    min_time = 2.0 if kind == "cpu" else 0.5
    matmul = _best_rate(functools.partial(torch.mm, a, b), 2.0 * n**3, dev, min_time=min_time, min_repeats=3)
    del a, b
    batch, cin, cout, h, w, k = CONV_SHAPE[kind]
    conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2, bias=False).to(dev, torch_dtype)
    x = torch.randn(batch, cin, h, w, device=dev, dtype=torch_dtype)
    if kind == "cuda":
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        conv_flops = 2.0 * batch * cout * h * w * cin * k * k
        convolution = _best_rate(lambda: conv(x), conv_flops, dev, min_time=min_time, min_repeats=3)
    return {
        "matmul_peak_flops": matmul,
        "matmul_shape": [n, n, n],
        "conv_peak_flops": convolution,
        "conv_shape": {"batch": batch, "in": cin, "out": cout, "height": h, "width": w, "kernel": k},
        "peak_dtype": str(torch_dtype).removeprefix("torch."),
    }


# --------------------------------------------------------------------------------------------------- peak memory
def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a block: CUDA ``max_memory_allocated``; on CPU the peak resident set size (RSS).

    On CPU the peak is the larger of the kernel's high-water mark (``VmHWM``, reset through
    ``/proc/self/clear_refs`` where allowed) and a 1 ms sampling thread, both relative to nothing: ``peak_bytes``
    is the process's peak RSS during the block, ``baseline_bytes`` its RSS when the block began.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self._stop = threading.Event()
        self._sampled = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
            return self
        self._hwm_reset = _reset_hwm()
        self.baseline_bytes = _rss_bytes()
        self._sampled = self.baseline_bytes
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._sampled = max(self._sampled, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()
        peak = max(self._sampled, _rss_bytes())
        if self._hwm_reset:
            peak = max(peak, _vm_hwm())
        self.peak_bytes = peak

    @property
    def kind(self) -> str:
        return "cuda_max_memory_allocated" if self.device.type == "cuda" else "cpu_peak_rss"


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------------------------------- reporting
def throughput_info(
    *,
    device: torch.device | str,
    dtype: str,
    flops: float,
    seconds: float,
    median_seconds: float | None = None,
    memory: PeakMemory | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``extra_info`` fields every benchmark records (see docs/benchmarks.md).

    ``seconds`` is the best round: the peaks are best rates too, and on a shared machine the best round is the one
    least disturbed by neighbours. The median round's rate is recorded beside it.
    """
    dev = torch.device(device)
    peaks = machine_peaks(str(dev), dtype if dev.type == "cuda" else "float32")
    achieved = flops / seconds
    typical = flops / median_seconds if median_seconds else None
    info: dict[str, Any] = {
        "device": device_name(dev),
        "dtype": dtype,
        "torch": torch.__version__,
        "flops": int(flops),
        "seconds": seconds,
        "median_seconds": median_seconds,
        "achieved_flops_per_s": achieved,
        "achieved_flops_per_s_median": typical,
        "matmul_peak_flops_per_s": peaks["matmul_peak_flops"],
        "conv_peak_flops_per_s": peaks["conv_peak_flops"],
        "fraction_of_matmul_peak": achieved / peaks["matmul_peak_flops"],
        "fraction_of_conv_peak": achieved / peaks["conv_peak_flops"],
        "fraction_of_conv_peak_median": None if typical is None else typical / peaks["conv_peak_flops"],
        "peak_conv_shape": peaks["conv_shape"],
        # Neighbours on a shared machine make every rate noisy; the load says how busy it was.
        "load_average_1min": os.getloadavg()[0],
    }
    if memory is not None:
        info.update(
            peak_memory_bytes=memory.peak_bytes,
            baseline_memory_bytes=memory.baseline_bytes,
            peak_memory_kind=memory.kind,
        )
    info.update(extra)
    return info


# --------------------------------------------------------------------------------------------------- profiles
def profile_dir() -> Path | None:
    """Where ``--profile DIR`` asked for traces (benchmarks/conftest.py sets ``DS3KIT_PROFILE_DIR``), or None."""
    value = os.environ.get("DS3KIT_PROFILE_DIR")
    return Path(value) if value else None


def write_profile(
    name: str,
    fn: Callable[[], Any],
    device: torch.device | str,
    *,
    steps: int = 2,
    folder: Path | None = None,
    row_limit: int = 30,
) -> Path | None:
    """Run ``fn`` ``steps`` times (after one warm-up) under torch.profiler; write a Chrome trace and a table.

    Writes ``<folder>/<name>.trace.json`` (open in chrome://tracing or https://ui.perfetto.dev) and
    ``<folder>/<name>.txt`` (ops by self time). Returns the trace path, or None when no folder was asked for.
    """
    folder = folder or profile_dir()
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    fn()
    synchronize(dev)
    with torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=True) as prof:
        for _ in range(steps):
            with torch.profiler.record_function(name):
                fn()
            synchronize(dev)
    trace = folder / f"{name}.trace.json"
    prof.export_chrome_trace(str(trace))
    sort_by = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=row_limit)
    (folder / f"{name}.txt").write_text(table + "\n")
    return trace
