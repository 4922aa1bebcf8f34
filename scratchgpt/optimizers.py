"""The optimizers: AdamW, and Muon for the blocks' matrices (make_optimizers), their learning
rates at each step (lr_scale: the schedule's share of the peak; set_learning_rates), and their step
on the accumulated gradients (apply_gradients: clipped, and skipped when float16 overflowed).

Muon orthogonalises each update (every direction of a matrix moves by the same amount) with a
Newton-Schulz iteration. Its precision follows the machine: bf16, as torch's Muon has it, where
the device multiplies bf16 natively (machine.native_bf16); elsewhere float32, many times faster
than bf16 emulated in software.
"""

import math

import torch
from torch import nn

from scratchgpt import machine

ADAM_BETAS = (0.9, 0.99)  # beta2 0.99 rather than 0.999: small batches, few iterations
MUON_MOMENTUM = 0.95


def orthogonalize(
    updates: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
    dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """The quintic Newton-Schulz iteration of torch's Muon, in dtype, on a stack of updates of one
    shape (count, rows, columns): it pushes every singular value of each towards 1 (into about
    0.7 .. 1.2), keeping the singular vectors. One batched product per stage serves the whole
    stack, which on a CPU beats one small product per matrix (bench.py)."""
    a, b, c = coefficients
    tall = updates.size(-2) > updates.size(-1)
    x = updates.to(dtype, copy=True)  # never the momentum buffers themselves: x is divided in place
    x = x.mT if tall else x  # the Gram matrix of the shorter side is the cheaper one
    x = x.div_(torch.linalg.matrix_norm(x, keepdim=True).clamp(min=eps))  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon, with the Newton-Schulz iteration in ns_dtype rather than always in bf16,
    and run once for all the matrices of one shape (orthogonalize).

    The state and settings are torch's, so checkpoints move between the two. Only torch's default
    learning-rate adjustment is implemented: sqrt(max(1, rows / columns)).
    """

    def __init__(self, params, ns_dtype: torch.dtype = torch.float32, **settings):
        if settings.get("adjust_lr_fn") not in (None, "original"):
            raise ValueError("Muon here implements torch's default adjust_lr_fn only")
        super().__init__(params, **settings)
        self.ns_dtype = ns_dtype

    def flops_per_step(self) -> int:
        """FLOPs of one step's Newton-Schulz iterations: per (m, n) matrix with m <= n and per
        iteration, X X^T (2 m^2 n), the Gram polynomial (2 m^3) and its product with X (2 m^2 n)."""
        total = 0
        for group in self.param_groups:
            for p in group["params"]:
                m, n = sorted(p.shape)
                total += group["ns_steps"] * (4 * m * m * n + 2 * m**3)
        return total

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for (rows, columns), params in by_shape.items():
                updates = torch.stack([self.momentum_update(p, group) for p in params])
                updates = orthogonalize(updates, group["ns_coefficients"], group["ns_steps"],
                                        group["eps"], self.ns_dtype)  # fmt: skip
                lr = group["lr"]
                for p, update in zip(params, updates, strict=True):
                    p.mul_(1 - lr * group["weight_decay"])
                    p.add_(update, alpha=-lr * math.sqrt(max(1, rows / columns)))
        return loss

    def momentum_update(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """The momentum buffer moved towards p's gradient; with Nesterov, the gradient moved
        towards the buffer."""
        if "momentum_buffer" not in self.state[p]:
            self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
        buffer, momentum = self.state[p]["momentum_buffer"], group["momentum"]
        buffer.lerp_(p.grad, 1 - momentum)
        return p.grad.lerp(buffer, momentum) if group["nesterov"] else buffer


def adamw(groups: list[dict], device: torch.device, **settings) -> torch.optim.AdamW:
    """AdamW, with its fused kernel on a GPU (one kernel for all parameters)."""
    return torch.optim.AdamW(groups, fused=device.type == "cuda", **settings)


def muon(params, device: torch.device, **settings) -> torch.optim.Muon:
    """Muon iterating in bf16, as torch's does, where the device multiplies bf16 natively;
    elsewhere in float32, many times faster than an iteration in emulated bf16 (bench.py)."""
    ns_dtype = torch.bfloat16 if machine.native_bf16(device) else torch.float32
    return Muon(params, ns_dtype=ns_dtype, **settings)


def make_optimizers(model: nn.Module, config, device: torch.device) -> list:
    """AdamW that decays only matrices (biases and norm gains stay free); with --optimizer muon,
    the blocks' matrices go to Muon instead, which orthogonalises each update (every direction
    of the matrix moves by the same amount). Embeddings and the head stay on AdamW: Muon is
    meant for hidden layers, and torch's Muon takes nothing but 2-D tensors."""
    hidden, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            to_muon = config.optimizer == "muon" and name.startswith("blocks.") and p.dim() == 2
            (hidden if to_muon else rest).append(p)
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizers = [adamw(groups, device, lr=config.lr, betas=ADAM_BETAS)]
    if hidden:
        optimizers.append(
            muon(hidden, device, lr=config.muon_lr, weight_decay=config.weight_decay,
                 momentum=MUON_MOMENTUM, nesterov=True)
        )  # fmt: skip
    return optimizers


def set_learning_rates(optimizers: list, config, scale: float) -> None:
    for optimizer in optimizers:
        peak = config.muon_lr if isinstance(optimizer, torch.optim.Muon) else config.lr
        for group in optimizer.param_groups:
            group["lr"] = peak * scale


def lr_scale(progress: float, step: int, config) -> float:
    """The share of each peak learning rate to use now: linear warmup, then down to
    min_lr / lr as progress (0..1) goes to 1, along a cosine or, for "wsd", flat until the last
    decay_share of the run and then in a straight line."""
    if step < config.warmup_iters:
        return (step + 1) / config.warmup_iters
    floor, progress = config.min_lr / config.lr, min(progress, 1.0)
    if config.schedule == "wsd":
        remaining = (1 - progress) / config.decay_share  # 1 when the decay starts, 0 at the end
        return floor + min(1.0, remaining) * (1 - floor)
    return floor + 0.5 * (1 + math.cos(math.pi * progress)) * (1 - floor)


def apply_gradients(
    model: nn.Module, optimizers: list, scaler: torch.amp.GradScaler, grad_clip: float
) -> None:
    """The optimizers' step on the accumulated gradients, which are then cleared.

    The GradScaler matters for float16 only (elsewhere it passes everything through): it scaled
    the loss up so that small gradients did not round to zero, and here it skips a step that
    overflowed.
    """
    for optimizer in optimizers:
        scaler.unscale_(optimizer)  # clip the true gradients
    overflow = False
    if grad_clip > 0 or scaler.is_enabled():
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
        # float16 overflowed somewhere: every optimizer skips the step, not only the one that saw it
        overflow = scaler.is_enabled() and not torch.isfinite(norm).item()
    if not overflow:
        for optimizer in optimizers:
            scaler.step(optimizer)
    scaler.update()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)


def make_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
