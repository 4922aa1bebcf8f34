"""The batches training and evaluation read (scratchgpt/dataloader.py)."""

from types import SimpleNamespace

import numpy as np
import torch

from scratchgpt.dataloader import get_batch

SHAPE = SimpleNamespace(block_size=8, batch_size=5)
DATA = np.arange(100, dtype=np.uint8)  # each token is its position: a window shows where it starts


def test_targets_are_the_inputs_window_shifted_by_one():
    x, y = get_batch(DATA, SHAPE, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x - x[:, :1], torch.arange(8).expand(5, 8))  # consecutive tokens
    assert int(x[:, 0].max()) + 8 < len(DATA)  # every window has its last target


def test_the_same_seed_draws_the_same_batch_and_another_seed_another():
    first = get_batch(DATA, SHAPE, torch.Generator().manual_seed(1))
    again = get_batch(DATA, SHAPE, torch.Generator().manual_seed(1))
    other = get_batch(DATA, SHAPE, torch.Generator().manual_seed(2))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
