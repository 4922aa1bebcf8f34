"""What this machine computes natively, and the choices that follow from it.

A precision the hardware only emulates is many times slower than float32: a CPU without bf16
instructions (most laptops: AVX2 only) multiplies bf16 matrices in software. So every choice of
precision asks native_bf16() first: the device, the autocast dtype, and where Muon's
Newton-Schulz iteration runs (torch's always runs it in bf16; Muon below takes a dtype).
"""

import math
import os
from contextlib import nullcontext
from pathlib import Path

import torch

from files import UserError

# oneDNN's instruction sets (ONEDNN_MAX_CPU_ISA) that lack bf16 products, and PyTorch's own CPU
# kernel levels (ATEN_CPU_CAPABILITY) that convert bf16 to float32 and back for every operation.
# Setting either one restricts a bf16 CPU to what an AVX2 laptop has.
ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}
ATEN_LEVELS_WITHOUT_BF16 = {"default", "avx2"}


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512_BF16 or AMX) whose kernels may use them."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if " avx512_bf16" not in cpuinfo and " amx_bf16" not in cpuinfo:
        return False
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    return onednn not in ONEDNN_ISAS_WITHOUT_BF16 and aten not in ATEN_LEVELS_WITHOUT_BF16


def native_bf16(device: torch.device) -> bool:
    """Whether this device multiplies bf16 matrices in hardware (emulated bf16 does not count)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA if present, else Apple MPS, else CPU; an unavailable choice is an error."""
    mps_available = torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available (try --device cpu)")
    elif name == "mps" and not mps_available:
        raise UserError("--device mps: Apple MPS is not available (try --device cpu)")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast precision: bf16 where the hardware does it natively, float32 otherwise."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if name == "float16" and device.type == "cpu":
        raise UserError("--dtype float16 needs a GPU; use bfloat16 or float32 on the CPU")
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--dtype bfloat16: this GPU has no bf16; use float16 or float32")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def orthogonalize(
    update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
    dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """The quintic Newton-Schulz iteration of torch's Muon, in dtype: it pushes every singular
    value of update towards 1 (into about 0.7 .. 1.2), keeping the singular vectors."""
    a, b, c = coefficients
    wide = update.size(0) > update.size(1)
    x = update.to(dtype, copy=True)  # never the momentum buffer itself: x is divided in place
    x = x.T if wide else x  # the Gram matrix of the shorter side is the cheaper one
    x = x.div_(x.norm().clamp(min=eps))  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if wide else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon, with the Newton-Schulz iteration in ns_dtype rather than always in bf16.

    The state and settings are torch's, so checkpoints move between the two. Only torch's default
    learning-rate adjustment is implemented: sqrt(max(1, rows / columns)).
    """

    def __init__(self, params, ns_dtype: torch.dtype = torch.float32, **settings):
        if settings.get("adjust_lr_fn") not in (None, "original"):
            raise ValueError("Muon here implements torch's default adjust_lr_fn only")
        super().__init__(params, **settings)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
                buffer = self.state[p]["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"],
                                       group["eps"], self.ns_dtype)  # fmt: skip
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * math.sqrt(max(1, p.shape[0] / p.shape[1])))
        return loss


def muon(params, device: torch.device, **settings) -> torch.optim.Muon:
    """torch's Muon where the device multiplies bf16 natively; elsewhere Muon in float32, many
    times faster than an iteration in emulated bf16 (bench.py times it)."""
    if native_bf16(device):
        return torch.optim.Muon(params, **settings)
    return Muon(params, ns_dtype=torch.float32, **settings)
