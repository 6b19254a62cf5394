"""``ds3kit kernels check``: ahead-of-time compilation for GPU targets on a CPU-only machine; the config table;
the roofline counts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ds3kit.ops import configs, roofline

pytest.importorskip("triton", reason="the check compiles Triton kernels")
REPO = Path(__file__).resolve().parents[2]


def _check(tmp_path: Path, *arguments: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    # A fresh process without the interpreter: the kernels must be decorated as compiled ones.
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    out = tmp_path / "check.json"
    command = [
        sys.executable,
        "-m",
        "ds3kit",
        "kernels",
        "check",
        "--json",
        str(out),
        "--cubin-dir",
        str(tmp_path / "cubins"),
        "--jobs",
        "1",
        *arguments,
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    return result, json.loads(out.read_text()) if out.is_file() else []


def test_check_compiles_the_dispatched_variants_and_they_fit(tmp_path):
    result, entries = _check(tmp_path, "--arch", "sm_86", "--dim", "256", "--dtype", "bf16")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [e["kernel"] for e in entries] == ["forward", "dq", "dk"]
    expected = configs.default_config((8, 6), torch.bfloat16, 256).short()
    for entry in entries:
        assert set(entry) >= {
            "arch",
            "dtype",
            "dim",
            "kernel",
            "config",
            "registers",
            "stack_bytes",
            "shared_bytes",
            "limit_bytes",
            "fits",
            "cubin",
        }
        assert (entry["arch"], entry["dtype"], entry["dim"], entry["config"]) == ("sm_86", "bf16", 256, expected)
        assert entry["fits"] and entry["stack_bytes"] == 0 and 0 < entry["registers"] <= 255
        assert 0 < entry["shared_bytes"] <= entry["limit_bytes"] == 99 * 1024
        cubin = (tmp_path / "cubins" / entry["cubin"]).read_bytes()
        assert cubin[:4] == b"\x7fELF"  # a real cubin for the target
    assert "3 of 3 variants fit" in result.stdout


def test_check_fails_for_a_forced_config_that_does_not_fit(tmp_path):
    # The table's sm_86 bf16 D = 256 tiles with four pipeline stages instead of two: each extra stage buffers
    # another key tile, 130+ KiB of shared memory against the 99 KiB of an RTX 30 / 40.
    result, entries = _check(
        tmp_path,
        "--arch",
        "sm_86",
        "--dim",
        "256",
        "--dtype",
        "bf16",
        "--config",
        "block_m=64",
        "block_n=64",
        "num_warps=8",
        "num_stages=4",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert [e["fits"] for e in entries] == [False, False, False]
    assert all(e["config"] == "64x64xD w8 s4" for e in entries)
    assert all(e["shared_bytes"] > e["limit_bytes"] == 99 * 1024 for e in entries)
    assert "NO" in result.stdout and "0 of 3 variants fit" in result.stdout


def test_check_rejects_an_unknown_arch(tmp_path):
    result, _ = _check(tmp_path, "--arch", "sm_61", "--dim", "64")
    assert result.returncode == 2 and "arch must be one of" in result.stderr


# ------------------------------------------------------------------------------------------------ table
@pytest.mark.parametrize("arch", configs.ARCHS)
def test_table_covers_every_arch_dtype_and_dim(arch):
    capability = configs.arch_to_capability(arch)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for dim in (1, 3, 48, 64, 100, 128, 256, 257, 512, 1000, 1024):
            config = configs.default_config(capability, dtype, dim)
            assert isinstance(config, configs.KernelConfig)


def test_unlisted_gpus_get_a_row_that_fits_their_shared_memory():
    # An RTX 50 (sm_120, 99 KiB) must not get the H100's 227 KiB row; an A100-class Orin (sm_87) gets sm_80's.
    assert configs._table_arch((12, 0)) == "sm_89"
    assert configs._table_arch((8, 7)) == "sm_80"
    assert configs._table_arch((7, 0)) == "sm_75"
    assert configs.shared_memory_limit((8, 9)) == 99 * 1024


def test_smaller_configs_shrink():
    first = configs.KernelConfig(block_m=128, block_n=128, num_warps=8, num_stages=3)
    chain = configs.smaller_configs(first, 256)
    assert chain and all(c.block_m <= 32 and c.block_n <= 32 and c.block_d <= 64 and c.num_stages == 1 for c in chain)


# ------------------------------------------------------------------------------------------------ roofline
def test_roofline_counts():
    batch, n, dim = 3, 1000, 96
    forward = roofline.fused_work("forward", batch, n, dim, "bf16")
    assert forward.flops == 2 * batch * n * n * dim  # one (N x D) @ (D x N) product per group
    assert forward.bytes == 2 * batch * n * dim * 2 + 12 * batch * n
    dq = roofline.fused_work("dq", batch, n, dim, "fp32", chunks=3)
    assert dq.flops == (3 + 1) * 2 * batch * n * n * dim  # three score recomputes and one accumulation
    # A compute-bound case: the time is FLOPs over the peak.
    seconds = forward.seconds(roofline.A100, "bf16")
    assert seconds == pytest.approx(
        max(forward.flops / 312e12, forward.exps / roofline.A100.exp_per_second, forward.bytes / 2.039e12)
    )
    table = roofline.roofline_markdown()
    assert table.count("| 16384 | forward |") == 3  # one row per precision


def test_kernel_search_keeps_only_configs_that_fit(tmp_path):
    # benchmarks/search.py's filter (benchmarks/_search_objectives.py), in a fresh process (compiled kernels): HEAD's
    # old 64 x 64 whole-D tiles do not fit a T4 at D = 256, the table's row does.
    script = (
        "import _search_objectives as search\n"
        "from ds3kit.ops.configs import KernelConfig, default_config\n"
        "import torch\n"
        "old = KernelConfig(block_m=64, block_n=64, num_warps=4, num_stages=2)\n"
        "row = default_config((7, 5), torch.float16, 256)\n"
        "print(search.kernel_config_fits(old, (7, 5), 64 * 1024, 'fp16', 256),"
        " search.kernel_config_fits(row, (7, 5), 64 * 1024, 'fp16', 256))\n"
    )
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO / "benchmarks")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]
