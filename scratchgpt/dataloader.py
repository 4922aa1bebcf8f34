"""The batches training and evaluation read: random windows of a split of the corpus, drawn
from a seeded generator, so that the same seed gives the same batches (get_batch)."""

import numpy as np
import torch


def get_batch(
    data: np.ndarray, config, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of block_size + 1 tokens: inputs are the first block_size, targets the
    last block_size (the same window shifted by one)."""
    starts = torch.randint(len(data) - config.block_size, (config.batch_size,), generator=generator)
    windows = starts.numpy()[:, None] + np.arange(config.block_size + 1)
    batch = torch.from_numpy(data[windows].astype(np.int64))
    return batch[:, :-1], batch[:, 1:]
