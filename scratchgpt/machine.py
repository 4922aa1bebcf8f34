"""What this machine does fastest, timed here rather than read from its CPU's flags.

- bf16_is_native: whether bf16 matrix products beat float32 ones (bf16 that is only emulated is
  many times slower);
- choose_training: the model shape (a CPU preset) and precision predicted to reach the lowest
  validation loss in a run's time budget, from the step times measured here and a committed table
  of loss against steps for each shape (shape_losses.json);
- choose_fastest: the faster of two ways to run one step (generation's weights, Generation).

It also holds what follows from the hardware without timing: the device, autocast, whether a
model fits in memory, and the heap's settings.

Each measurement is made once and kept in a small JSON file in the user's cache folder
(cache_path), under a key naming the CPU, torch's version, the thread count, the kernel
restrictions (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY) and this code's version: another machine,
torch or code measures again. A missing, stale, damaged or unwritable cache only means measuring
again, never an error.
"""

import copy
import ctypes
import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import torch
from torch import nn

from scratchgpt import files
from scratchgpt.cli import UserError

REPO = Path(__file__).resolve().parents[1]
# What is timed: the model and its step (kernels, optimizers, batches), and these measurements.
CODE_FILES = ("bigram.py", "scratchgpt/kernels.py", "scratchgpt/optimizers.py",
              "scratchgpt/dataloader.py", "scratchgpt/machine.py")  # fmt: skip
SHAPE_TABLE = Path(__file__).with_name("shape_losses.json")
SAME_LENGTH = 1.15  # runs of the table within 15% of each other in steps are one point
CACHE_MAX_BYTES = 1 << 20  # the cache holds a few figures: anything bigger is not ours
MEASURE_SECONDS = 12.0  # a first run times its training candidates for about this long,
MEASURE_SHARE = 0.02  # and at most this share of its time budget
MIN_BUDGET_S = 120.0  # a shorter budget trains what the presets' rule gives, untimed
MAX_ROUNDS = 8  # enough for the best of several, where steps are quick
PROBE_SIZE = 512  # a matrix product big enough to reach the kernels' speed, small enough to
# take under a second even where bf16 is emulated (about 1 GFLOP/s there)


def cache_path() -> Path:
    """$XDG_CACHE_HOME/scratchgpt/machine.json, by default ~/.cache/scratchgpt/machine.json."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "scratchgpt" / "machine.json"


@cache  # read once a process: the CPU does not change under it
def cpu_id() -> str:
    """The CPU's name, family, model and stepping, and a hash of its flags: 'AMD EPYC' alone
    names several generations."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "cpu family", "model", "stepping", "flags")
    info = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip() in wanted:
            info.setdefault(name.strip(), value.strip())
    flags = hashlib.sha256(info.pop("flags", "").encode()).hexdigest()[:8]
    return " / ".join([*info.values(), f"flags {flags}"])


@cache  # hashed once a process: the code it runs does not change under it
def code_version() -> str:
    digest = hashlib.sha256()
    for name in CODE_FILES:
        try:
            digest.update((REPO / name).read_bytes())
        except OSError:
            digest.update(name.encode())
    return digest.hexdigest()[:12]


def machine_key() -> dict:
    """What the measurements depend on: when any of it changes they are made again."""
    return {
        "cpu": cpu_id(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY", ""),
        "code": code_version(),
    }


def read_cache() -> dict:
    """The measurements kept for this machine's key; {} when there are none to trust."""
    path = cache_path()
    try:
        if path.stat().st_size > CACHE_MAX_BYTES:
            return {}
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, not JSON, not UTF-8
        return {}
    if not isinstance(saved, dict) or saved.get("key") != machine_key():
        return {}
    found = saved.get("measured")
    return found if isinstance(found, dict) else {}


def remember(measurements: dict[str, object]) -> Path | None:
    """Keep measurements, by name; returns the cache's path, or None when it cannot be written
    (they are then made again next time)."""
    path = cache_path()
    measured = read_cache() | measurements
    text = json.dumps({"key": machine_key(), "measured": measured}, indent=1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_file(path) as f:  # whole or not at all: two processes never mix
            f.write(text.encode("utf-8"))
    except OSError:  # no folder to write in, or a full disk: nothing was left
        return None
    return path


def cached_number(name: str) -> float | None:
    value = read_cache().get(name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) and value > 0 else None


# -----------------------------------------------------------------------------
# bf16: native or emulated


def matmul_rate(dtype: torch.dtype, n: int = PROBE_SIZE, repeats: int = 3) -> float:
    """GFLOP/s of an n x n x n matrix product in dtype on the CPU, the best of repeats."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # the first call allocates and picks its kernel
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / max(best, 1e-9) / 1e9


def bf16_is_native(rate: Callable[[torch.dtype], float] = matmul_rate) -> bool:
    """Whether this CPU multiplies bf16 matrices at least as fast as float32 ones: true where it
    has bf16 instructions its kernels use, false where bf16 is converted in software."""
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = f"matmul GFLOP/s {str(dtype).removeprefix('torch.')}"
        rates[dtype] = cached_number(name)
        if rates[dtype] is None:
            rates[dtype] = rate(dtype)
            remember({name: rates[dtype]})
    return rates[torch.bfloat16] >= rates[torch.float32]


# -----------------------------------------------------------------------------
# Device and precision


def native_bf16(device: torch.device) -> bool:
    """Whether this device multiplies bf16 matrices in hardware (emulated bf16 does not count)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and bf16_is_native()


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' is CUDA if present, else Apple MPS, else CPU; an unavailable choice is an error.
    A torch.device is one already resolved."""
    if isinstance(name, torch.device):
        return name
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


# -----------------------------------------------------------------------------
# Timing candidates


def rounds_in_turns(
    measures: dict[Hashable, Callable[[], float]], seconds: float = MEASURE_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[Hashable, list[float]]:  # fmt: skip
    """Each candidate's measurements (in seconds), one a round. The candidates are measured in
    turns, so that a change in the machine's load slows each alike: one warm-up each (first
    calls allocate), then rounds until seconds are spent: at least one, at most MAX_ROUNDS."""
    start = clock()
    for measure in measures.values():
        measure()
    found: dict[Hashable, list[float]] = {name: [] for name in measures}
    rounds = 0
    while rounds < 1 or (rounds < MAX_ROUNDS and clock() - start < seconds):
        for name, measure in measures.items():
            found[name].append(measure())
        rounds += 1
    return found


def best_in_turns(
    measures: dict[Hashable, Callable[[], float]], seconds: float = MEASURE_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[Hashable, float]:  # fmt: skip
    """Each candidate's best measurement, measured in turns (rounds_in_turns): the least
    disturbed, which compares two ways of doing the same work fairly."""
    return {name: min(times) for name, times in rounds_in_turns(measures, seconds, clock).items()}


def time_in_turns(
    steps: dict[Hashable, Callable[[], object]], seconds: float = MEASURE_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[Hashable, float]:  # fmt: skip
    """Each step's typical time, the median of its rounds, the steps called in turns: a run
    takes its steps at their typical speed, not at their best (docs/performance.md)."""

    def timed(step: Callable[[], object]) -> float:
        begin = clock()
        step()
        return clock() - begin

    measures = {name: partial(timed, step) for name, step in steps.items()}
    rounds = rounds_in_turns(measures, seconds, clock)
    return {name: statistics.median(times) for name, times in rounds.items()}


def choose_fastest(
    name: str, measures: dict[str, Callable[[], float]], remeasure: bool = False,
    seconds: float = 1.0,
) -> tuple[str, dict[str, float], bool]:  # fmt: skip
    """The candidate whose measure (seconds a step) is lowest here, measured once and cached
    under name (remeasure: measured again now). Returns it, the seconds of each, and whether they
    were measured now."""
    kept = read_cache().get(name)
    valid = isinstance(kept, dict) and set(kept) == set(measures)
    valid = valid and all(isinstance(v, (int, float)) and v > 0 for v in kept.values())
    if valid and not remeasure:
        return min(kept, key=kept.get), kept, False
    times = best_in_turns(measures, seconds)
    remember({name: times})
    return min(times, key=times.get), times, True


# -----------------------------------------------------------------------------
# The shape and precision for a time budget


def read_shape_table(path: Path = SHAPE_TABLE) -> dict[str, list[tuple[float, float]]]:
    """For each preset, (steps, exhaustive val loss) of complete runs of the CPU recipe, sorted
    by steps. Runs within SAME_LENGTH of each other count as one point, their mean: between two
    such runs, the loss differs by seed and load, not by length."""
    runs: dict[str, list[tuple[int, float]]] = {}
    for row in json.loads(path.read_text(encoding="utf-8"))["runs"]:
        runs.setdefault(row["preset"], []).append((row["steps"], row["loss"]))
    table = {}
    for preset, rows in runs.items():
        groups: list[list[tuple[int, float]]] = []
        for steps, loss in sorted(rows):
            if groups and steps <= SAME_LENGTH * groups[-1][0][0]:
                groups[-1].append((steps, loss))
            else:
                groups.append([(steps, loss)])
        table[preset] = [
            (math.prod(s for s, _ in g) ** (1 / len(g)), sum(x for _, x in g) / len(g))
            for g in groups
        ]
    return table


def predicted_loss(points: list[tuple[float, float]], steps: float) -> float:
    """The loss after a complete run of steps, interpolated linearly in log(steps) between the
    table's runs; beyond them, the nearest two's slope, never rising with more steps."""
    if len(points) == 1:
        return points[0][1]
    i = next((i for i, (s, _) in enumerate(points) if s >= steps), len(points))
    (s0, l0), (s1, l1) = points[min(max(i - 1, 0), len(points) - 2) :][:2]
    slope = min((l1 - l0) / math.log(s1 / s0), 0.0)
    return l0 + slope * math.log(max(steps, 1) / s0)


def evaluation_cost(eval_iters: int, eval_interval: int) -> float:
    """The share of a training step's time that a run's evaluations add: eval_iters batches of
    each split every eval_interval steps, each a forward pass, about a third of a step."""
    return 2 * eval_iters / (3 * eval_interval)


@dataclass(frozen=True)
class TrainingChoice:
    """What a run trains on this machine, with the figures it was chosen on."""

    preset: str
    dtype: str
    seconds_per_step: dict[tuple[str, str], float]
    predicted: dict[tuple[str, str], float]  # validation loss at the end of the budget
    budget_s: float
    measured_for: float  # seconds spent timing now; 0 when the timings were cached
    cache: Path | None  # where the timings are kept (None: the cache cannot be written)

    def line(self) -> str:
        """One line: the choice, then every candidate's steps/s and predicted loss."""
        figures = ", ".join(
            f"{p} {d} {1 / s:.2f} steps/s -> {self.predicted[p, d]:.3f}"
            for (p, d), s in self.seconds_per_step.items()
        )
        how = f"timed here in {self.measured_for:.0f} s" if self.measured_for else "timings cached"
        where = f" in {self.cache}" if self.cache else ""
        return (f"machine: {self.preset} in {self.dtype}, predicted the best in "
                f"{self.budget_s / 60:g} minutes "
                f"({figures}; {how}{where}; --preset and --dtype override)")  # fmt: skip


def choose_training(
    candidates: dict[tuple[str, str], Callable[[], object]], steps_cap: dict[str, int],
    budget_s: float, names: dict[tuple[str, str], str],
    table: dict[str, list[tuple[float, float]]] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    evaluation_share: dict[str, float] | None = None,
) -> TrainingChoice:  # fmt: skip
    """The (preset, dtype) candidate predicted to end lowest after budget_s seconds of its
    training steps (at most steps_cap[preset] of them), each step also paying its share of the
    run's evaluations (evaluation_share[preset], see evaluation_cost). Each candidate's step is
    timed here once and cached under names[candidate], a description of what it trains."""
    table = read_shape_table() if table is None else table
    cached = {c: cached_number(names[c]) for c in candidates}
    missing = {c: step for c, step in candidates.items() if cached[c] is None}
    start = clock()
    seconds_to_spend = min(MEASURE_SECONDS, MEASURE_SHARE * budget_s)
    timed = time_in_turns(missing, seconds_to_spend) if missing else {}
    measured_for = clock() - start if missing else 0.0
    path = remember({names[c]: seconds for c, seconds in timed.items()}) if timed else cache_path()
    seconds = {c: cached[c] or timed[c] for c in candidates}
    share = evaluation_share or {}
    steps = {
        (p, d): min(steps_cap[p], (budget_s - measured_for) / (s * (1 + share.get(p, 0.0))))
        for (p, d), s in seconds.items()
    }
    predicted = {(p, d): predicted_loss(table[p], n) for (p, d), n in steps.items()}
    preset, dtype = min(predicted, key=lambda c: (predicted[c], seconds[c]))  # a tie: the faster
    return TrainingChoice(preset, dtype, seconds, predicted, budget_s, measured_for, path)


# -----------------------------------------------------------------------------
# Generation: decided once when a model loads


@dataclass(frozen=True)
class Generation:
    """How this machine generates with a loaded model, decided once (choose_generation) and
    handed to everything that writes: the device, autocast's precision (a GPU's training
    precision; none on a CPU, whose weights are cast once instead), and the line saying how the
    weights were chosen when they were timed."""

    device: torch.device
    dtype: torch.dtype
    line: str | None = None

    def autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.dtype)


def choose_generation(
    model: nn.Module, weights: str, seconds_per_step: Callable[[nn.Module, int], float],
    batch_size: int = 1,
) -> tuple[nn.Module, Generation]:  # fmt: skip
    """The model with the weights this machine generates fastest with (generation_weights, timed
    by seconds_per_step on a CPU), and how it generates, on the device the model is on."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        return model, Generation(device, resolve_dtype("auto", device))
    model, line = generation_weights(model, weights, seconds_per_step, batch_size)
    return model, Generation(device, torch.float32, line)


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
    if choice == "float32" or not bf16_is_native():
        return model, None
    bf16 = cache(lambda: copy.deepcopy(model).to(torch.bfloat16))  # made only when used
    steps = {"float32": partial(seconds_per_step, model, batch_size),
             "bfloat16": lambda: seconds_per_step(bf16(), batch_size)}  # fmt: skip
    shapes = sorted((name, tuple(p.shape)) for name, p in model.named_parameters())
    shape = hashlib.sha256(repr(shapes).encode()).hexdigest()[:12]
    name = f"generate step {shape}, batch {batch_size}"
    best, times, timed = choose_fastest(name, steps, remeasure=choice == "fastest")
    other = "float32" if best == "bfloat16" else "bfloat16"
    how = "timed here" if timed else "timings cached"
    line = (f"weights: {best}, {times[best] * 1000:.1f} ms a step against "
            f"{times[other] * 1000:.1f} for {other} ({how} in {cache_path()}; "
            "--weights overrides)")  # fmt: skip
    return (bf16() if best == "bfloat16" else model), line


# -----------------------------------------------------------------------------
# Memory: a shape that cannot fit is refused before it is allocated


def memory_available(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on every system
        return None


def check_memory(
    model_class: type, config, batch_size: int, training: bool, device: torch.device,
    advice: str = "choose a smaller shape",
) -> None:  # fmt: skip
    """Refuse, with the figures, a model of model_class and config that needs more bytes than the
    device has (model_class.memory_needed, known before it is built): allocating it would fail
    or hang."""
    needed = model_class.memory_needed(config, batch_size, training)
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
