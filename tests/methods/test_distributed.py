"""Data parallelism: two gloo processes with half a batch each take the step one process takes with the whole batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ds3kit.methods.base import Method


class _Regression(Method):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 1))
        self.add_optimizer("net", self.net.parameters(), lr=0.1, betas=(0.5, 0.999))

    def training_step(self, paired, unpaired):
        loss = (self.net(paired["inputs"]) - paired["target"]).pow(2).mean()
        self.update("net", {"loss": loss})
        return {"loss": float(loss)}


def _data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(6, 5, generator=generator), torch.randn(6, 1, generator=generator)


def _worker(rank: int, world_size: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    method = _Regression()
    inputs, target = _data()
    half = inputs.shape[0] // world_size
    for _ in range(3):
        method.training_step(
            {"inputs": inputs[rank * half : (rank + 1) * half], "target": target[rank * half : (rank + 1) * half]}, None
        )
    if rank == 0:
        torch.save(method.net.state_dict(), result_file)
    dist.barrier()
    dist.destroy_process_group()


def test_two_processes_match_one_process_with_the_global_batch(tmp_path):
    result = tmp_path / "ddp.pt"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True)
    single = _Regression()
    inputs, target = _data()
    for _ in range(3):
        single.training_step({"inputs": inputs, "target": target}, None)
    distributed = torch.load(result, weights_only=True)
    for name, value in single.net.state_dict().items():
        torch.testing.assert_close(distributed[name], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(distributed["0.weight"], _Regression().net.state_dict()["0.weight"]), "weights must move"


def test_non_finite_term_is_named_before_the_weights_change():
    method = _Regression()
    before = {k: v.clone() for k, v in method.net.state_dict().items()}
    method.step = 11
    loss = method.net(torch.ones(2, 5)).mean() * float("inf")
    try:
        method.update("net", {"good": torch.tensor(1.0, requires_grad=True), "bad/term": loss})
    except RuntimeError as error:
        assert "non-finite loss at step 11: bad/term" in str(error)
    else:
        raise AssertionError("a non-finite loss must raise")
    for name, value in method.net.state_dict().items():
        assert torch.equal(value, before[name])


def _broadcast_worker(rank: int, world_size: int, init_file: str, result_file: str) -> None:
    from ds3kit.train.distributed import DistributedContext

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    # What the trainer broadcasts after a validation check: a calibration's knots, fitted on the main process only.
    tensors = [torch.full((4,), float(rank)), torch.arange(3.0) + 10 * rank]
    DistributedContext(rank, world_size).broadcast(tensors)
    torch.save(tensors, f"{result_file}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


def test_broadcast_gives_every_process_the_main_processs_values(tmp_path):
    from ds3kit.train.distributed import DistributedContext

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = tmp_path / "broadcast"
    mp.spawn(_broadcast_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True)
    for rank in (0, 1):
        first, second = torch.load(f"{result}.{rank}", weights_only=True)
        assert torch.equal(first, torch.zeros(4)) and torch.equal(second, torch.arange(3.0))
    alone = [torch.ones(2)]
    DistributedContext().broadcast(alone)  # without a process group: nothing to do, nothing changed
    assert torch.equal(alone[0], torch.ones(2))
