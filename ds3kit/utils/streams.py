"""Random streams of their own: draws that are a pure function of a few integers, apart from the global stream.

Two runs that share a part (DS3-Net's teacher and the paired-only model are the same network on the same batches)
must draw the same random numbers for it, whatever else each run draws. A part that runs inside
``random_stream(stream_seed(seed, name, step))`` draws from a generator seeded by those integers alone and leaves the
global stream where it was, so it neither takes numbers from its neighbours nor moves theirs. Being a function of the
step, such a stream also resumes exactly without any saved state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

#: Names of the streams, as the integers :func:`stream_seed` mixes in. The data streams' augmentation uses the
#: trainer's stream index (0 paired, 1 unpaired, 2 reference); these sit apart from them.
STUDENT_STREAM = 101
STUDENT_INIT_STREAM = 102


def stream_seed(*words: int) -> int:
    """A 63-bit seed mixed from non-negative integers (numpy's SeedSequence: nearby words give unrelated seeds)."""
    if not words or any(int(word) < 0 for word in words):
        raise ValueError(f"stream_seed needs one or more non-negative integers, got {words}")
    state = np.random.SeedSequence([int(word) for word in words]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


@contextmanager
def random_stream(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the block on torch's CPU generator (and ``device``'s, when it is a CUDA device) seeded with ``seed``;
    both generators are back where they were afterwards."""
    device = torch.device("cpu" if device is None else device)
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
