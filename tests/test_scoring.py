"""The score to compare models by (scratchgpt/scoring.py): every validation character once."""

import numpy as np
import pytest
import torch

import bigram
from scratchgpt import scoring


@pytest.mark.parametrize("length", [100, 64 * 16 * 2 + 37])  # one batch; several and a tail
def test_exhaustive_val_loss_scores_every_character_once(length):
    torch.manual_seed(0)
    config = bigram.GPTConfig(vocab_size=7, block_size=16, n_layer=1, n_head=2, n_embd=8)
    model = bigram.GPTLanguageModel(config).eval()
    data = np.random.default_rng(0).integers(0, 7, length).astype(np.uint8)
    total, count = 0.0, 0
    for start in range(0, length - 1, 16):  # window by window, the context restarting at each
        x = torch.from_numpy(data[start : start + 16].astype(np.int64))[None]
        y = torch.from_numpy(data[start + 1 : start + 17].astype(np.int64))[None]
        x = x[:, : y.shape[1]]
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(model(x)[0][0], y[0], reduction="sum")
        total, count = total + loss.item(), count + y.numel()
    assert count == length - 1
    exhaustive = scoring.exhaustive_val_loss(model, data, 16, "cpu", torch.float32)
    assert exhaustive == pytest.approx(total / count, rel=1e-5)
