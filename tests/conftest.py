"""Fixtures shared across the test packages."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks gain nothing from intra-op threads, and a busy CPU makes their spin-waits very slow."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
