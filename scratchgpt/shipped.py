"""The model shipped with ScratchGPT, so that `python MODEL.py` writes Shakespeare right after a
clone: where it lies, and how a training checkpoint becomes such a file.

pretrained/shakespeare.pt is a checkpoint with the weights and nothing for --resume: the
settings, the vocabulary, the weights in float16 (half of float32's bytes, with three more
significant bits than bf16) and the step and loss it was saved at. It is torch's weights-only
format, read by checkpoint.load_checkpoint like every checkpoint, without running code: one format
and one loader for every model, and no package beyond torch. (safetensors holds tensors only, so
the vocabulary and the settings would need a second format beside it.) Its card,
pretrained/README.md, says how it was trained and what it scores.

    python -m scratchgpt.shipped checkpoints/run.pt checkpoints/run-weights.pt

writes such a file from a training checkpoint; replacing the shipped one is a commit, by hand.
"""

import sys
from pathlib import Path

import torch

from scratchgpt import checkpoint, files
from scratchgpt.cli import UserError

MODEL_PATH = files.SHIPPED_DIR / "shakespeare.pt"
CARD_PATH = files.SHIPPED_DIR / "README.md"
FLOAT16_MAX = torch.finfo(torch.float16).max


def weights_only(saved: dict, path: Path) -> dict:
    """The part of a checkpoint (load_checkpoint's) that generates and fine-tunes, with its
    floating-point weights in float16."""
    weights = {}
    for name, tensor in saved["model"].items():
        if tensor.is_floating_point():
            if tensor.abs().max().item() > FLOAT16_MAX:
                raise UserError(f"{path}: {name} holds values beyond float16's range")
            tensor = tensor.to(torch.float16)
        weights[name] = tensor.clone()  # its own storage: a view would save the whole tensor
    return {key: saved[key] for key in checkpoint.REQUIRED_KEYS} | {"model": weights}


def export(source: Path, target: Path) -> None:
    """Write the weights-only file of the checkpoint source to target, a new file."""
    files.check_output(target, "the weights-only file", {"the checkpoint": source})
    if target.exists() or target.is_symlink():
        raise UserError(f"{target} exists: give the name of a new file")
    state = weights_only(checkpoint.load_checkpoint(source), source)
    checkpoint.save_checkpoint(state, target, replace=False)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m scratchgpt.shipped CHECKPOINT NEW.pt", file=sys.stderr)
        return 2
    try:
        export(Path(argv[0]), Path(argv[1]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {argv[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
