"""Several trained models that write as one: `python MODEL.py --checkpoint a.pt b.pt c.pt`.

Each next character is drawn from the mean of the models' probabilities. Models trained from
different seeds make different mistakes, so their mean is surer where they agree and hedges where
they do not: its loss is never above the mean of theirs, and usually below the best of them
(docs/generation.md). The models must share a vocabulary; their shapes may differ.
"""

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class EnsembleCache:
    """One KV cache for each member, and the positions the ensemble has read."""

    members: list
    capacity: int  # the shortest member's context, which is the ensemble's
    length: int = 0


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs two models or more, got {len(members)}")
        super().__init__()
        self.members = nn.ModuleList(members)
        shortest = min(members, key=lambda m: m.config.block_size)
        # Generation reads its context length and cache rule here: the shortest member's context,
        # and a cache that rolls past it only where every member's cache rolls (rotary positions).
        self.config = replace(shortest.config, rope=all(m.config.rope for m in members))

    def new_kv_cache(self, batch_size: int, device: torch.device | str) -> EnsembleCache:
        caches = [member.new_kv_cache(batch_size, device) for member in self.members]
        return EnsembleCache(caches, self.config.block_size)

    def forward(self, idx, targets=None, kv_cache: EnsembleCache | None = None):
        """The log of the members' mean probabilities in the place of logits (their softmax is
        that mean again); the loss too when targets are given."""
        caches = kv_cache.members if kv_cache is not None else [None] * len(self.members)
        probabilities = torch.stack([
            member(idx, kv_cache=cache)[0].float().softmax(dim=-1)
            for member, cache in zip(self.members, caches, strict=True)
        ]).mean(dim=0)  # fmt: skip
        if kv_cache is not None:
            kv_cache.length += idx.shape[1]
        logits = probabilities.log()
        loss = None if targets is None else F.nll_loss(logits.flatten(0, 1), targets.flatten())
        return logits, loss
