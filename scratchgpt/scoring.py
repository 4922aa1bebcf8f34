"""How well a model predicts a split: the mean loss over eval_iters random batches, the same ones
at every evaluation (estimate_loss, what training prints), and over every character, each scored
once (exhaustive_val_loss, the figure to compare runs by); in nats, or in bits per character."""

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from scratchgpt.dataloader import get_batch
from scratchgpt.machine import autocast

LN2 = math.log(2)  # nats per bit: a loss in nats over LN2 is bits per character
EXHAUSTIVE_MAX_CHARS = 2_000_000  # a Reddit-sized split is scored on its first 2M characters


@torch.no_grad()
def estimate_loss(
    model: nn.Module, splits: dict, config, device: torch.device, dtype: torch.dtype
) -> dict:
    """Mean loss over eval_iters batches per split, the same batches each time so evals compare."""
    model.eval()
    losses = {}
    for split, data in splits.items():
        generator = torch.Generator().manual_seed(config.seed + 1)
        total = 0.0
        for _ in range(config.eval_iters):
            x, y = get_batch(data, config, generator)
            with autocast(device, dtype):
                _, loss = model(x.to(device), y.to(device))
            total += loss.item()
        losses[split] = total / config.eval_iters
    model.train()
    return losses


@torch.no_grad()
def exhaustive_val_loss(
    model: nn.Module, data: np.ndarray, block_size: int, device: torch.device, dtype: torch.dtype
) -> float:
    """Every validation character scored once, in consecutive windows of block_size: the same
    mean context as estimate_loss's random windows (each restarts its context), without their
    sampling noise. The figure to compare runs by."""
    data = data[: EXHAUSTIVE_MAX_CHARS + 1]
    total, count, rows = 0.0, 0, 64
    model.eval()
    for start in range(0, len(data) - 1, rows * block_size):
        chunk = torch.from_numpy(data[start : start + rows * block_size + 1].astype(np.int64))
        x, y = chunk[:-1], chunk[1:]
        full = len(x) // block_size * block_size
        # Whole windows as one batch, then the split's last, shorter window on its own.
        for xs, ys in ((x[:full].view(-1, block_size), y[:full].view(-1, block_size)),
                       (x[full:][None], y[full:][None])):  # fmt: skip
            if ys.numel() == 0:
                continue
            with autocast(device, dtype):
                logits, _ = model(xs.to(device))
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), ys.to(device).flatten(), reduction="sum"
            )
            total, count = total + loss.item(), count + ys.numel()
    model.train()
    return total / count
