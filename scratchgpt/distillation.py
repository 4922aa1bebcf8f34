"""Distillation (--teacher): a run also learns a trained model's predictions (or an ensemble's),
beside the text's next characters. The teacher's whole distribution says which other characters
were nearly right, which the one character of the text does not."""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from scratchgpt import checkpoint
from scratchgpt.cli import UserError


@dataclass
class Teacher:
    """The trained model a run learns from, and how much: bigram.micro_batch_loss mixes its
    predictions into each micro-batch's loss."""

    model: nn.Module
    weight: float  # the teacher's share of the loss
    temperature: float  # above 1, both distributions are flattened: near-misses count more

    def mixed_loss(self, loss: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(1 - weight) x the text's loss + weight x T² x KL(teacher || model), both at temperature
        T; T² keeps the gradients' size the same whatever T is (Hinton et al., 2015)."""
        with torch.no_grad():
            taught, _ = self.model(x)
        t = self.temperature
        ours = F.log_softmax(logits.float() / t, dim=-1).flatten(0, 1)
        theirs = F.log_softmax(taught.float() / t, dim=-1).flatten(0, 1)
        kl = F.kl_div(ours, theirs, log_target=True, reduction="batchmean")
        return (1 - self.weight) * loss + self.weight * t * t * kl


def load_teacher(
    config, vocab: list[str], device: torch.device, model_types: dict
) -> Teacher | None:
    """--teacher's checkpoints (config: a bigram.TrainConfig) as one model, several as their
    ensemble, which must know the run's characters by the same ids; None without --teacher."""
    if not config.teacher:
        return None
    paths = [Path(path) for path in config.teacher]
    model, taught = checkpoint.load_models(
        paths,
        model_types,
        device,
        missing=lambda path: f"--teacher: there is no checkpoint at {path}",
    )
    if taught != vocab:
        raise UserError(
            f"--teacher {' '.join(config.teacher)} knows other characters than {config.data} "
            "has: a teacher must be trained on the same text"
        )
    model.requires_grad_(False)
    return Teacher(model, config.distill_weight, config.distill_temperature)
