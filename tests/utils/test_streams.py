"""Random streams of their own: seeded by integers alone, and invisible to the global stream around them."""

import pytest
import torch

from ds3kit.augment import MRIAugmentation
from ds3kit.train.batches import prepare_batch
from ds3kit.utils.streams import random_stream, stream_seed


def test_stream_seed_is_a_pure_function_of_its_words_and_tells_neighbours_apart():
    assert stream_seed(0, 1, 2) == stream_seed(0, 1, 2)
    seeds = {
        stream_seed(seed, rank, stream, step)
        for seed in range(3)
        for rank in range(2)
        for stream in range(3)
        for step in range(50)
    }
    assert len(seeds) == 3 * 2 * 3 * 50
    assert all(0 <= seed < 2**63 for seed in seeds)
    # Order matters: (stream 1, step 2) is not (stream 2, step 1).
    assert stream_seed(0, 1, 2) != stream_seed(0, 2, 1)


@pytest.mark.parametrize("words", [(), (-1,), (0, -3)])
def test_stream_seed_refuses_negative_or_missing_words(words):
    with pytest.raises(ValueError, match="non-negative"):
        stream_seed(*words)


def test_a_random_stream_draws_from_its_seed_and_leaves_the_global_stream_where_it_was():
    torch.manual_seed(123)
    expected = torch.rand(5)  # what the global stream gives next, untouched

    torch.manual_seed(123)
    with random_stream(7):
        inside = torch.rand(3)
    after = torch.rand(5)
    assert after.equal(expected)
    reference = torch.Generator().manual_seed(7)
    assert inside.equal(torch.rand(3, generator=reference))


def test_seeded_augmentation_does_not_depend_on_what_the_global_stream_drew_before():
    augment = MRIAugmentation()
    batch = {
        "inputs": torch.rand(2, 3, 32, 32),
        "target": torch.rand(2, 1, 32, 32),
        "brain_mask": torch.ones(2, 1, 32, 32),
    }
    torch.manual_seed(0)
    first = prepare_batch(batch, torch.device("cpu"), augment=augment, seed=42)
    torch.manual_seed(1)
    torch.rand(1000)
    second = prepare_batch(batch, torch.device("cpu"), augment=augment, seed=42)
    other = prepare_batch(batch, torch.device("cpu"), augment=augment, seed=43)
    assert all(first[key].equal(second[key]) for key in batch)
    assert not first["inputs"].equal(other["inputs"])
