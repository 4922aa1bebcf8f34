"""What runs natively here, and every choice that follows from it: the one place where the code
differs between a GPU, a CPU with bf16 instructions and a CPU without them (most laptops).

- device and precision: resolve_device, native_bf16, resolve_dtype, autocast;
- Muon with its Newton-Schulz iteration in float32 where bf16 is emulated, batched by shape (muon);
- the model's CPU paths, called like the standard ones: scaled_dot_product_attention, Dropout;
- generation on a CPU: which weights (generation_weights), which kernels (matrix_vector_kernels),
  the KV cache's dtype (cache_dtype);
- memory: estimates (check_memory), freed memory kept for reuse (reuse_freed_memory);
- torchrun: set-up, the DDP model, leaving together.

A precision the hardware only emulates is many times slower than float32: a CPU without bf16
instructions multiplies bf16 matrices in software. So every choice of precision asks
native_bf16() first, which on a CPU is timed (machine.py), never read from the CPU's flags.
"""

import copy
import ctypes
import gc
import hashlib
import math
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache, partial

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from scratchgpt import machine
from scratchgpt.files import UserError


def cpu_has_native_bf16() -> bool:
    """True where this CPU multiplies bf16 matrices at least as fast as float32 ones, as timed
    here once (machine.bf16_is_native): CPUs with bf16 instructions (AVX512_BF16, AMX) whose
    kernels use them. Restricting the kernels (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2)
    makes bf16 emulated, and so measured slow, as on an AVX2 laptop."""
    return machine.bf16_is_native()


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
    ns_dtype = torch.bfloat16 if native_bf16(device) else torch.float32
    return Muon(params, ns_dtype=ns_dtype, **settings)


# -----------------------------------------------------------------------------
# The model's CPU paths


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool
) -> torch.Tensor:
    """F.scaled_dot_product_attention, in float32 on a CPU even under bf16 autocast: PyTorch's
    float32 CPU attention kernel beats its bf16 one, in training and in generation (bench.py)."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    # Entering and leaving autocast costs more than one generated token's attention: only if on.
    on = torch.is_autocast_enabled("cpu")
    wide = torch.promote_types(q.dtype, torch.float32)  # float64 stays float64
    with torch.autocast("cpu", enabled=False) if on else nullcontext():
        y = F.scaled_dot_product_attention(q.to(wide), k.to(wide), v.to(wide), is_causal=is_causal)
    return y.to(q.dtype)


class Dropout(nn.Module):
    """nn.Dropout, with the random mask drawn several times faster on a CPU.

    PyTorch's CPU dropout draws one random number per element, which at the reference
    configuration costs about as much as the matrix products. Here each random 64-bit word decides
    four elements: four 15-bit lanes, each compared with p (so p is rounded to 1/32768).
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p)  # GPUs have a fast fused kernel
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_()  # 63 random bits
        lanes = words.view(torch.int16)[: x.numel()].view(x.shape) & 0x7FFF
        keep = lanes >= round(self.p * 32768)
        return x * keep.to(x.dtype).mul_(1 / (1 - self.p))  # scaled: the mean stays the same


# -----------------------------------------------------------------------------
# Generation on a CPU


def generation_dtype(device: torch.device) -> torch.dtype:
    """The autocast precision of generation: a GPU's training precision; on a CPU none, as its
    weights are cast once instead (generation_weights)."""
    return resolve_dtype("auto", device) if device.type == "cuda" else torch.float32


def matrix_vector_kernels(model: nn.Module, batch_size: int) -> AbstractContextManager:
    """The kernels for one new token: with one sample, every product is a matrix times a vector.
    For bf16 weights PyTorch's own kernel reads them faster than oneDNN's, which PyTorch prefers
    on a CPU: oneDNN is switched off for these steps only. Longer passes (the prompt) keep it, and
    so do float32 weights, for which oneDNN is faster at small sizes."""
    weight = next(model.parameters())
    if weight.device.type != "cpu" or weight.dtype == torch.float32 or batch_size > 1:
        return nullcontext()
    return torch.backends.mkldnn.flags(
        enabled=False, deterministic=None, allow_tf32=None, fp32_precision=None
    )  # only the first flag changes


def cache_dtype(model: nn.Module) -> torch.dtype:
    """The KV cache's dtype: the weights', widened to float32 on a CPU, where attention runs in
    float32 (scaled_dot_product_attention): keys and values are cast once, when stored."""
    weight = next(model.parameters())
    if weight.device.type != "cpu":
        return weight.dtype
    return torch.promote_types(weight.dtype, torch.float32)


def generation_weights(
    model: nn.Module, choice: str, seconds_per_step: Callable[[nn.Module, int], float],
    batch_size: int = 1,
) -> tuple[nn.Module, str | None]:  # fmt: skip
    """The weights a CPU generates with, and a line saying why when they were chosen here.

    Every character reads every weight, and bf16 weights are half the bytes, but which is faster
    depends on the CPU's instructions and cache. "auto" times float32 and bf16 weights once for
    this model's shape and batch_size on this machine (seconds_per_step) and keeps the answer in
    the machine's cache, so a seed writes the same text on every later run; "fastest" times them
    again now.
    Where bf16 is emulated, float32 is used untimed. Casting once beats autocast casting the
    weights at every step."""
    if choice == "bfloat16":
        return model.to(torch.bfloat16), None
    if choice == "float32" or not cpu_has_native_bf16():
        return model, None
    bf16 = cache(lambda: copy.deepcopy(model).to(torch.bfloat16))  # made only when used
    steps = {"float32": partial(seconds_per_step, model, batch_size),
             "bfloat16": lambda: seconds_per_step(bf16(), batch_size)}  # fmt: skip
    shapes = sorted((name, tuple(p.shape)) for name, p in model.named_parameters())
    shape = hashlib.sha256(repr(shapes).encode()).hexdigest()[:12]
    name = f"generate step {shape}, batch {batch_size}"
    best, times, timed = machine.choose_fastest(name, steps, remeasure=choice == "fastest")
    other = "float32" if best == "bfloat16" else "bfloat16"
    how = "timed here" if timed else "timings cached"
    line = (f"weights: {best}, {times[best] * 1000:.1f} ms a step against "
            f"{times[other] * 1000:.1f} for {other} ({how} in {machine.cache_path()}; "
            "--weights overrides)")  # fmt: skip
    return (bf16() if best == "bfloat16" else model), line


# -----------------------------------------------------------------------------
# Memory: a shape that cannot fit is refused before it is allocated


def memory_needed(config, batch_size: int, training: bool) -> int:
    """Rough bytes to run (or train) a model of config's shape: weights, and for training their
    gradients and two AdamW moments plus the activations kept for the backward pass."""
    C, T, L, V = config.n_embd, config.block_size, config.n_layer, config.vocab_size
    parameters = 12 * L * C * C + C * (2 * V + T)
    if not training:
        return 4 * parameters + 2 * 4 * L * batch_size * T * C  # float32 weights, KV cache
    activations = batch_size * T * (20 * 4 * L * C + 3 * 4 * V)  # ~20 floats per channel-layer
    return 16 * parameters + activations


def memory_available(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on every system
        return None


def check_memory(
    config, batch_size: int, training: bool, device: torch.device,
    advice: str = "choose a smaller shape",
) -> None:  # fmt: skip
    """Refuse, with the figures, a shape that would not fit: allocating it would fail or hang."""
    needed = memory_needed(config, batch_size, training)
    available = memory_available(device)
    if available is not None and needed > available:
        sequences = "one sequence" if batch_size == 1 else f"{batch_size:,} sequences at once"
        raise UserError(
            f"a model with n_layer {config.n_layer}, n_embd {config.n_embd}, block_size "
            f"{config.block_size} needs about {needed / 2**30:,.1f} GiB for {sequences}, more "
            f"than the {available / 2**30:,.1f} GiB of this {device.type}: {advice}"
        )


# glibc's mallopt settings (malloc.h): how large a freed block may be and stay in the heap.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCK_MAX = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on a 64-bit system
HEAP_KEEP = 1 << 30  # free memory at the heap's top is returned to the system beyond this


def reuse_freed_memory() -> bool:
    """Keep freed activations in the process's heap for the next step to reuse. By default
    glibc hands each block of a few MB back to the system when it is freed, and the system
    zeroes fresh pages for the next step: the `cpu` preset's step then takes about 15,000 page
    faults (docs/performance.md). Returns whether the C library took the settings (glibc only)."""
    if os.name != "posix":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_MAX)) and bool(
        mallopt(M_TRIM_THRESHOLD, HEAP_KEEP)
    )


# -----------------------------------------------------------------------------
# Several processes (torchrun): one per GPU, or several on one CPU


@dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:  # rank 0 evaluates, logs, prints and saves
        return self.rank == 0


def setup_distributed(device: torch.device, backend: str) -> tuple[Distributed, torch.device]:
    """Join the process group when launched by torchrun (it sets RANK); else a single process."""
    if "RANK" not in os.environ:
        return Distributed(), device
    needed = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"]
    missing = [name for name in needed if name not in os.environ]
    if missing:
        raise UserError(
            f"RANK is set but {', '.join(missing)} not: start distributed runs with torchrun "
            "(see docs/distributed.md), or unset RANK"
        )
    try:
        ddp = Distributed(*(int(os.environ[name]) for name in needed[:3]))
    except ValueError:
        raise UserError("RANK, LOCAL_RANK and WORLD_SIZE must be whole numbers") from None
    if device.type == "mps":
        raise UserError("distributed training runs on CUDA or CPU, not MPS")
    if device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    return ddp, device


def agree(
    stop: bool, diverged: bool, elapsed: float, ddp: Distributed, device: torch.device
) -> tuple[bool, bool, float]:
    """All ranks stop at the same step, for the same reason, and share one clock (it sets the
    learning rate): each flag is true if it is on any rank, the clock is the slowest rank's."""
    if ddp.world_size == 1:
        return stop, diverged, elapsed
    flags = torch.tensor([stop, diverged, elapsed], dtype=torch.float64, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1]), flags[2].item()


@contextmanager
def rank_zero_first(ddp: Distributed) -> Iterator[None]:
    """Rank 0 goes through the block first, doing what is done once for all (the download, the
    token cache); the other ranks enter it once rank 0 is through."""
    if ddp.world_size > 1 and not ddp.is_main:
        dist.barrier()
    yield
    if ddp.world_size > 1 and ddp.is_main:
        dist.barrier()


def distributed_model(model: nn.Module, ddp: Distributed, device: torch.device) -> nn.Module:
    """model, wrapped to average its gradients across the processes when there are several."""
    if ddp.world_size == 1:
        return model
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def leave_distributed(ddp: Distributed) -> None:
    """Leave the process group together. The caller drops its DDP-wrapped model first: DDP holds
    the group inside reference cycles, which gloo cannot free while Python shuts down, so they
    are collected here."""
    if ddp.world_size > 1:
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
