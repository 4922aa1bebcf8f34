"""How fast is ScratchGPT on this machine, and how close to what the hardware can do?

    python bench.py                         # all sections, reference configuration (gpu preset)
    python bench.py --preset cpu            # another preset; --n-layer, --batch-size... override
    python bench.py --arch classic          # the other architecture (default: the preset's)
    python bench.py --only train,generate   # some sections: matmul, train, generate, corpus
    python bench.py --json bench.json       # also write the results as JSON
    python bench.py --skip-original         # leave out the original code (saves a minute)
    python bench.py --tiny                  # a tiny configuration that runs in seconds (tests)

Sections:
  matmul    the machine's matrix-product peak in float32 and bfloat16 (the MFU denominator)
  train     training tokens/s and model FLOPs utilisation, through bigram.train_on_batches
  generate  characters/s with and without the KV cache, and for batches of samples
  corpus    reddit.load_reddit on a synthetic Reddit text: MB/s and peak memory, in a subprocess
  choices   what this machine's timings choose (scratchgpt/machine.py): the shape and precision
            `python bigram.py` trains for its time budget, and the weights MODEL.py generates with

Each section also times the original code's approach (Karpathy's "Let's build GPT" gpt.py,
re-implemented below in a few lines) in the same run, so every speed-up is measured, not quoted.
Timings depend on what else runs: look at `uptime` first and keep the machine otherwise idle.
"""

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import bigram
import MODEL
from scratchgpt import corpus, dataloader, distributed, machine, train_cli
from scratchgpt.cli import UserError, add_flags
from scratchgpt.optimizers import Muon, apply_gradients, make_optimizers, make_scaler
from scratchgpt.original import ORIGINAL_PROGRAM, original_get_batch, original_model

REPO = Path(__file__).resolve().parent
REDDIT_SAMPLE = REPO.parent / "shared" / "data" / "reddit" / "comments.txt"
VOCAB_SIZE = 65  # Tiny Shakespeare's; speed does not depend on the data, so tokens are random
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, dropout=0.2)
# The flags that shape what is timed, made from TrainConfig's fields as bigram.py's are.
MODEL_FLAGS = (*(f.name for f in fields(bigram.GPTConfig) if f.name != "vocab_size"),
               "batch_size", "dtype")  # fmt: skip
SECTIONS = ("matmul", "train", "generate", "corpus", "choices")


# -----------------------------------------------------------------------------
# Timing


def seconds_per_call(fn: Callable[[], object], min_seconds: float, min_calls: int = 1) -> float:
    """Mean wall time of fn, called until both min_calls and min_seconds are reached."""
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def matmul_gflops(n: int, dtype: torch.dtype, min_seconds: float) -> float:
    """Throughput of one n x n x n matrix product, after a warm-up call (kernel selection)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    return 2 * n**3 / seconds_per_call(lambda: a @ b, min_seconds, min_calls=3) / 1e9


def native_dtypes() -> list[torch.dtype]:
    """The precisions this CPU multiplies in hardware: bf16 emulated in software is not timed."""
    return [torch.float32, torch.bfloat16] if machine.bf16_is_native() else [torch.float32]


def bench_matmul(sizes: list[int], min_seconds: float) -> dict:
    """The best of a few sizes: small ones do not fill the cores, big ones spill the caches."""
    result = {"sizes": sizes}
    for dtype in native_dtypes():
        name = str(dtype).removeprefix("torch.")
        result[f"{name}_gflops"] = max(matmul_gflops(n, dtype, min_seconds) for n in sizes)
    return result


# -----------------------------------------------------------------------------
# Training


def scratch_model(shape: dict) -> bigram.GPTLanguageModel:
    settings = {k: v for k, v in shape.items() if k in bigram.model_settings(bigram.GPTConfig())}
    return bigram.GPTLanguageModel(bigram.GPTConfig(**{**settings, "vocab_size": VOCAB_SIZE}))


def training_throughput(step: Callable[[int], None], shape: dict, flops_per_token: float,
                        peak_gflops: float | None, steps: int, warmup: int) -> dict:  # fmt: skip
    """Time `steps` calls of step(i) after `warmup` untimed ones (oneDNN picks and builds its
    kernels on the first calls); MFU is the share of the measured matmul peak put to use."""
    for i in range(warmup):
        step(i)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    seconds = (time.perf_counter() - start) / steps
    tokens_per_s = shape["batch_size"] * shape["block_size"] / seconds
    mfu = flops_per_token * tokens_per_s / (peak_gflops * 1e9) if peak_gflops else None
    return {"ms_per_step": 1000 * seconds, "tokens_per_s": tokens_per_s, "mfu": mfu}


def step_in_parts(model, optimizers, scaler, batch, config, dtype) -> dict:
    """Seconds of one training step's parts: bigram.train_on_batches's own, for one micro-batch."""
    device = torch.device("cpu")
    times, start = {}, time.perf_counter()
    loss = bigram.micro_batch_loss(model, *batch, device, dtype)
    times["forward"], start = time.perf_counter() - start, time.perf_counter()
    scaler.scale(loss).backward()
    times["backward"], start = time.perf_counter() - start, time.perf_counter()
    apply_gradients(model, optimizers, scaler, config.grad_clip)
    times["optimizer"] = time.perf_counter() - start
    return times


def time_parts(model, optimizers, scaler, batches, config, dtype, tokens: int) -> dict:
    """The median time of each part, its FLOPs (forward a third of the model's, backward two
    thirds, the optimizer its Newton-Schulz iterations) and the GFLOP/s they make."""
    runs = [step_in_parts(model, optimizers, scaler, b, config, dtype) for b in batches]
    flops = model.flops_per_token() * tokens
    muon = [o for o in optimizers if isinstance(o, Muon)]
    flops = {"forward": flops / 3, "backward": 2 * flops / 3,
             "optimizer": sum(o.flops_per_step() for o in muon)}  # fmt: skip
    parts = {}
    for name in ("forward", "backward", "optimizer"):
        seconds = float(np.median([run[name] for run in runs]))
        parts[name] = {"ms": 1000 * seconds, "gflop": flops[name] / 1e9,
                       "gflops": flops[name] / seconds / 1e9}  # fmt: skip
    return parts


SLOW_PART = 4  # a part this many times below the forward pass's GFLOP/s is out of line
OVERHEAD_MS = 20  # parts shorter than this are mostly per-call overhead (tiny models): no verdict


def part_warnings(parts: dict) -> list[str]:
    """What is far out of line with its FLOPs: a precision the CPU emulates, a slow kernel."""
    warnings = []
    reference = parts["forward"]["gflops"]
    for name in ("backward", "optimizer"):
        part = parts[name]
        if part["ms"] < OVERHEAD_MS or part["gflop"] == 0:
            continue
        if part["gflops"] * SLOW_PART < reference:
            warnings.append(
                f"warning: the {name} runs at {part['gflops']:,.1f} GFLOP/s, under 1/{SLOW_PART} "
                f"of the forward pass's {reference:,.1f}: a slow or emulated kernel"
            )
    work = parts["forward"]["ms"] + parts["backward"]["ms"]
    if parts["optimizer"]["ms"] > max(work, OVERHEAD_MS):
        warnings.append(
            f"warning: the optimizer step takes {parts['optimizer']['ms']:,.0f} ms, longer than "
            f"forward and backward together ({work:,.0f} ms)"
        )
    return warnings


def bench_train(shape: dict, dtype: torch.dtype, peaks: dict, steps: int, warmup: int) -> dict:
    """Whole optimizer steps as bigram.train runs them: seeding, batch, forward, backward,
    clipping, the optimizers (AdamW, and Muon for the modern architecture); then the same
    steps timed in parts."""
    device = torch.device("cpu")
    config = bigram.TrainConfig(**shape)
    data = np.random.default_rng(0).integers(0, VOCAB_SIZE, 1_000_000, dtype=np.uint8)
    torch.manual_seed(0)
    model = scratch_model(shape)
    optimizers = make_optimizers(model, config, device)
    scaler = make_scaler(device, dtype)
    batch = lambda i: dataloader.get_batch(data, config, torch.Generator().manual_seed(i))

    def step(i: int) -> None:
        torch.manual_seed(i)
        bigram.train_on_batches(model, optimizers, scaler, [batch(i)], config.grad_clip, device,
                                dtype)  # fmt: skip

    name = str(dtype).removeprefix("torch.")
    flops = model.flops_per_token()
    timing = training_throughput(step, shape, flops, peaks.get(f"{name}_gflops"), steps, warmup)
    tokens = shape["batch_size"] * shape["block_size"]
    batches = [batch(i) for i in range(steps)]
    parts = time_parts(model, optimizers, scaler, batches, config, dtype, tokens)
    return {
        "dtype": name,
        "optimizers": [type(o).__module__ + "." + type(o).__name__ for o in optimizers],
        "parameters": model.num_parameters(),
        "flops_per_token": flops,
        **timing,
        "parts": parts,
        "warnings": part_warnings(parts),
    }


def bench_train_original(shape: dict, peaks: dict, steps: int, warmup: int) -> dict:
    """gpt.py's loop: AdamW at its defaults, no clipping, float32. MFU counts ScratchGPT's FLOPs
    per token: the same shapes do the same useful work."""
    torch.manual_seed(0)
    model = original_model(shape, VOCAB_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    data = torch.randint(VOCAB_SIZE, (1_000_000,))

    def step(i: int) -> None:
        x, y = original_get_batch(data, shape["block_size"], shape["batch_size"])
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    flops = scratch_model(shape).flops_per_token()
    timing = training_throughput(step, shape, flops, peaks.get("float32_gflops"), steps, warmup)
    return {"dtype": "float32", **timing}


# -----------------------------------------------------------------------------
# Generation. Every run starts from a full window (block_size tokens of prompt), so each
# character is produced with the longest context: the steady state of a long sample.


def chars_per_second(
    generate: Callable[[torch.Tensor, int], None], batch: int, block_size: int, num_tokens: int
) -> float:
    prompt = torch.randint(VOCAB_SIZE, (batch, block_size))
    generate(prompt, 2)  # warm-up: the first calls of each kernel are slow
    start = time.perf_counter()
    generate(prompt, num_tokens)
    return batch * num_tokens / (time.perf_counter() - start)


def scratch_generator(model: nn.Module, use_kv_cache: bool):
    def generate(prompt: torch.Tensor, num_tokens: int) -> None:
        g = torch.Generator().manual_seed(0)
        for _ in bigram.generate_tokens(model, prompt, num_tokens, use_kv_cache=use_kv_cache,
                                        generator=g):  # fmt: skip
            pass

    return generate


def bench_generate(
    shape: dict, num_tokens: int, slow_tokens: int, batches: list[int], original: bool
) -> dict:
    """Characters/s with the KV cache for batches of samples, float32 weights and (where the CPU
    has bf16 instructions) bfloat16 ones, and with the weights MODEL.py picks by default for one
    sample; then batch 1 without the cache, and the original loop. Batch sizes count samples:
    the rates are for all of them together."""
    torch.manual_seed(0)
    block = shape["block_size"]
    fp32 = scratch_model(shape).eval()
    weights = {str(dtype).removeprefix("torch."): copy.deepcopy(fp32).to(dtype)
               for dtype in native_dtypes()}  # fmt: skip
    result: dict = {"batch": {}}
    for n in batches:
        result["batch"][str(n)] = {
            name: chars_per_second(scratch_generator(model, True), n, block, num_tokens)
            for name, model in weights.items()
        }
    result["kv_cache_chars_per_s"] = result["batch"]["1"]["float32"]
    # What MODEL.py generates one sample with by default (--weights auto): the faster weights as
    # timed on this machine, once (the machine's cache keeps the answer).
    picked, _ = machine.generation_weights(copy.deepcopy(fp32), "auto", MODEL.seconds_per_step)
    result["model_py_dtype"] = str(next(picked.parameters()).dtype).removeprefix("torch.")
    result["model_py_chars_per_s"] = chars_per_second(scratch_generator(picked, True), 1, block,
                                                      num_tokens)  # fmt: skip
    uncached = scratch_generator(fp32, use_kv_cache=False)
    result["no_cache_chars_per_s"] = chars_per_second(uncached, 1, block, slow_tokens)
    if original:
        # in train mode, as gpt.py leaves it after training
        model = original_model(shape, VOCAB_SIZE)
        result["original_chars_per_s"] = chars_per_second(model.generate, 1, block, slow_tokens)
    return result


# -----------------------------------------------------------------------------
# Corpus preparation, each run in a fresh interpreter. RUSAGE_CHILDREN reports the largest
# child so far, and a child keeps the peak memory of the process it was forked from (Linux keeps
# it across exec), so every measured program runs under its own small parent (MEASURE).

MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
child = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"returncode": child.returncode, "wall_s": time.perf_counter() - start,
                  "peak_rss": peak, "stdout": child.stdout, "stderr": child.stderr}))
"""

# Each program prints its memory after its imports (the interpreter's baseline) and the time of
# the work alone, on its last line.
REDDIT_PROGRAM = """
import json, resource, sys, time
from pathlib import Path
from scratchgpt import reddit
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
data = reddit.load_reddit(Path(sys.argv[1]), Path(sys.argv[2]), clean=True,
                          max_vocab=reddit.DEFAULT_MAX_VOCAB)
work = time.perf_counter() - start
print(json.dumps({"baseline_rss": baseline, "work_s": work, "tokens": len(data.tokens)}))
"""


def rss_mb(ru_maxrss: int) -> float:
    return ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10)  # bytes on macOS


def measure(program: str, *args: str) -> dict:
    """Run `python -c program args` from the repository: wall time, peak RSS, its own report."""
    command = [sys.executable, "-c", MEASURE, sys.executable, "-c", program, *args]
    outer = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)
    run = json.loads(outer.stdout)
    if run["returncode"] != 0:
        lines = run["stderr"].strip().splitlines() or ["no output"]
        raise RuntimeError(f"exit {run['returncode']}: {lines[-1]}")
    report = json.loads(run["stdout"].strip().splitlines()[-1])
    return {"wall_s": run["wall_s"], "work_s": report["work_s"], "tokens": report["tokens"],
            "peak_rss_mb": rss_mb(run["peak_rss"]),
            "baseline_rss_mb": rss_mb(report["baseline_rss"])}  # fmt: skip


def write_synthetic_text(path: Path, size_mb: float) -> float:
    """About size_mb of text: the Reddit sample repeated (whole lines), else made-up comments.
    Returns the size written, in MB."""
    if REDDIT_SAMPLE.exists():
        sample = REDDIT_SAMPLE.read_bytes()
    else:
        rng = np.random.default_rng(0)
        words = "the a i you it is that to and of in this not my was for lol &amp; :) 🙂".split()
        lines = (" ".join(rng.choice(words, size=12)) + "\n" for _ in range(50_000))
        sample = "".join(lines).encode("utf-8")
    target = int(size_mb * 1e6)
    with path.open("wb") as f:
        while f.tell() < target:
            piece = sample[: target - f.tell()]
            f.write(piece if len(piece) == len(sample) else piece[: piece.rfind(b"\n") + 1])
            if len(piece) < len(sample):
                break
    return path.stat().st_size / 1e6


def summarise(run: dict, size_mb: float) -> dict:
    return run | {
        "size_mb": size_mb,
        "mb_per_s": size_mb / run["work_s"],
        "peak_rss_per_mb": run["peak_rss_mb"] / size_mb,
        "net_rss_per_mb": (run["peak_rss_mb"] - run["baseline_rss_mb"]) / size_mb,
    }


def bench_corpus(size_mb: float, original_mb: float, folder: Path) -> dict:
    """reddit.load_reddit (a cold cache: it reads, cleans, counts and encodes) on size_mb, and
    the original one-liner `torch.tensor([stoi[c] for c in text])` on original_mb."""
    result: dict = {"source": str(REDDIT_SAMPLE) if REDDIT_SAMPLE.exists() else "generated"}
    text = folder / "original.txt"
    mb = write_synthetic_text(text, original_mb)
    result["original"] = summarise(measure(ORIGINAL_PROGRAM, str(text)), mb)
    text.unlink()
    text = folder / "reddit.txt"
    mb = write_synthetic_text(text, size_mb)
    try:
        run = measure(REDDIT_PROGRAM, str(text), str(folder / "cache"))
    except RuntimeError as e:
        result["load_reddit"] = {"available": False, "reason": f"load_reddit failed: {e}"}
        return result
    result["load_reddit"] = {"available": True} | summarise(run, mb)
    # Above each interpreter's own baseline: the original imports torch, load_reddit does not.
    result["net_rss_per_mb_ratio"] = (
        result["original"]["net_rss_per_mb"] / result["load_reddit"]["net_rss_per_mb"]
    )
    return result


# -----------------------------------------------------------------------------
# Report


def bench_choices(minutes: float, shape: dict) -> dict:
    """The choices this machine's timings make, as `python bigram.py --max-minutes MINUTES` and
    MODEL.py (for a model of shape, one sample) make them: timed now, or read from the cache."""
    device = torch.device("cpu")
    args = train_cli.parse_args(["--max-minutes", f"{minutes:g}"], bigram.TrainConfig)
    config = train_cli.make_config(args, device, None, bigram.TrainConfig)
    candidates = train_cli.machine_candidates(args, config, device, distributed.Distributed())
    if candidates:  # random tokens of Tiny Shakespeare's vocabulary: a step's time is the same
        tokens = np.random.default_rng(0).integers(0, VOCAB_SIZE, 1_000_000, dtype=np.uint8)
        vocab = [chr(ord("!") + i) for i in range(VOCAB_SIZE)]
        _, choice = train_cli.choose_for_machine(
            candidates, corpus.Corpus(tokens, vocab), device, bigram.step_timer
        )
        training = choice.line()
    else:
        training = f"machine: {config.preset} in {config.dtype}, untimed (nothing to choose)"
    _, weights = machine.generation_weights(scratch_model(shape).eval(), "auto",
                                             MODEL.seconds_per_step)  # fmt: skip
    return {"training": training, "weights": weights or "weights: float32 (bf16 is emulated)"}


def machine_summary() -> dict:
    return {
        "cpu": machine.cpu_id(),  # the name, family, model and stepping, a hash of the flags
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "native_bf16": machine.bf16_is_native(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


Row = tuple[str, str, str]  # (measurement, value, unit)


def matmul_rows(m: dict) -> list[Row]:
    sizes = "/".join(str(n) for n in m["sizes"])
    return [
        (f"matmul peak {dtype} (best of n={sizes})",
         f"{m[dtype + '_gflops']:,.0f}" if dtype + "_gflops" in m else "emulated", "GFLOP/s")
        for dtype in ("float32", "bfloat16")
    ]  # fmt: skip


def train_rows(t: dict) -> list[Row]:
    mfu = lambda r: f"tokens/s, MFU {r['mfu']:.1%}" if r["mfu"] is not None else "tokens/s"
    rows = [(f"train ScratchGPT, {t['dtype']}", f"{t['tokens_per_s']:,.0f}", mfu(t))]
    for name, part in t["parts"].items():
        flops = f"ms; {part['gflop']:,.2f} GFLOP at {part['gflops']:,.1f} GFLOP/s"
        rows.append((f"  of one step: {name}", f"{part['ms']:,.1f}", flops))
    if "original" in t:
        o = t["original"]
        rows.append(("train original gpt.py, float32", f"{o['tokens_per_s']:,.0f}", mfu(o)))
        speedup = f"{t['tokens_per_s'] / o['tokens_per_s']:.1f}"
        rows.append(("train speed-up over the original", speedup, "x"))
    return rows


def generate_rows(g: dict) -> list[Row]:
    rows = []
    for n, by_dtype in g["batch"].items():
        for dtype, value in by_dtype.items():
            samples = "1 sample" if n == "1" else f"{n} samples"
            unit = "chars/s" if n == "1" else "chars/s, all samples together"
            rows.append((f"generate {samples}, KV cache, {dtype}", f"{value:,.0f}", unit))
    default = f"generate 1 sample, MODEL.py's default weights ({g['model_py_dtype']})"
    rows.append((default, f"{g['model_py_chars_per_s']:,.0f}", "chars/s"))
    speedup = f"{g['model_py_chars_per_s'] / g['kv_cache_chars_per_s']:.1f}"
    rows.append(("MODEL.py's default, speed-up over float32", speedup, "x"))
    uncached = f"{g['no_cache_chars_per_s']:,.0f}"
    rows.append(("generate 1 sample, no cache, float32", uncached, "chars/s"))
    if "original_chars_per_s" in g:
        original = f"{g['original_chars_per_s']:,.0f}"
        rows.append(("generate 1 sample, original gpt.py loop", original, "chars/s"))
        speedup = f"{g['kv_cache_chars_per_s'] / g['original_chars_per_s']:.0f}"
        rows.append(("generate speed-up over the original (KV cache)", speedup, "x"))
    return rows


def corpus_rows(c: dict) -> list[Row]:
    rows = []
    for name, r in (("original one-liner", c["original"]), ("load_reddit", c["load_reddit"])):
        if r.get("available", True):
            memory = (
                f"MB/s; peak RSS {r['peak_rss_mb']:,.0f} MB: {r['net_rss_per_mb']:.2f} MB "
                f"per MB of text over the interpreter's {r['baseline_rss_mb']:.0f} MB"
            )
            rows.append((f"corpus {name}, {r['size_mb']:.3g} MB", f"{r['mb_per_s']:.1f}", memory))
    if c["load_reddit"]["available"]:
        ratio = f"{c['net_rss_per_mb_ratio']:.0f}"
        rows.append(("corpus memory per MB, original / load_reddit", ratio, "x"))
    else:
        rows.append(("corpus load_reddit", "unavailable", c["load_reddit"]["reason"]))
    return rows


# Each section's rows of the report, by the section's name (the choices print lines of their own).
SECTION_ROWS = {"matmul": matmul_rows, "train": train_rows, "generate": generate_rows,
                "corpus": corpus_rows}  # fmt: skip


def table_rows(results: dict) -> list[Row]:
    """(measurement, value, unit) rows for the sections that ran."""
    return [row for name, rows in SECTION_ROWS.items() if name in results
            for row in rows(results[name])]  # fmt: skip


def print_report(results: dict) -> None:
    m, s = results["machine"], results["config"]
    print(f"\n{m['cpu']}, {m['cores']} cores, torch {m['torch']} on {m['torch_threads']} threads, "
          f"load average {m['load_average']:.2f} at the start")  # fmt: skip
    print(f"model: {s['n_layer']} layers, {s['n_head']} heads, {s['n_embd']} channels, context "
          f"{s['block_size']}, batch {s['batch_size']}, dropout {s['dropout']} ({s['name']}, "
          f"{s['arch']} architecture)\n")  # fmt: skip
    rows = table_rows(results)
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>{value_width}}  {unit}")
    for warning in results.get("train", {}).get("warnings", []):
        print(warning)
    for line in results.get("choices", {}).values():
        print(line)


# -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark ScratchGPT on this machine.")
    p.add_argument("--preset", choices=bigram.PRESETS, default="gpu")
    p.add_argument("--arch", choices=bigram.ARCHITECTURES, help="default: the preset's")
    add_flags(p, bigram.TrainConfig, names=MODEL_FLAGS)  # the model's flags, as bigram.py has them
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--corpus-mb", type=float, default=250, help="text size for load_reddit")
    p.add_argument("--original-corpus-mb", type=float, default=25,
                   help="text size for the original one-liner (far more memory a MB)")  # fmt: skip
    p.add_argument("--skip-original", action="store_true",
                   help="leave out the original code (a minute at the reference size)")  # fmt: skip
    p.add_argument("--minutes", type=float, default=10, help="choices: the training budget")
    p.add_argument("--tiny", action="store_true", help="tiny model and sizes: seconds, for tests")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"--only: unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def model_shape(args: argparse.Namespace) -> dict:
    """The settings of the run to time: the preset's, --arch's, then the flags given, merged as
    python bigram.py merges them; --tiny starts from a tiny modern model instead of a preset."""
    cpu = torch.device("cpu")
    if not args.tiny:
        return asdict(train_cli.make_config(args, cpu, None, bigram.TrainConfig))
    given = {name: getattr(args, name) for name in MODEL_FLAGS if getattr(args, name) is not None}
    arch = bigram.ARCHITECTURES[args.arch or "modern"]
    try:
        return asdict(bigram.TrainConfig(**{**TINY, **arch, **given}))
    except ValueError as e:  # GPTConfig's checks
        raise UserError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections, tiny, original = args.only.split(","), args.tiny, not args.skip_original
    try:
        shape = model_shape(args)
        dtype = machine.resolve_dtype(shape["dtype"], torch.device("cpu"))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    name = "tiny" if tiny else f"preset {args.preset}"
    arch = train_cli.arch_name(bigram.TrainConfig(**shape))
    results: dict = {"machine": machine_summary(), "config": shape | {"name": name, "arch": arch}}
    results["machine"]["freed memory reused"] = machine.reuse_freed_memory()  # as training does
    peaks: dict = {}
    if "matmul" in sections:
        print("matmul peak...", flush=True)
        sizes = [128] if tiny else [1024, 2048, 4096]
        results["matmul"] = peaks = bench_matmul(sizes, min_seconds=0.05 if tiny else 0.5)
    if "train" in sections:
        print("training...", flush=True)
        steps, warmup = (1, 1) if tiny else (args.steps, 2)
        results["train"] = bench_train(shape, dtype, peaks, steps, warmup)
        if original:  # about 10 s a step at the reference configuration: fewer steps
            results["train"]["original"] = bench_train_original(shape, peaks, (steps + 1) // 2, 1)
    if "generate" in sections:
        print("generation...", flush=True)
        num_tokens, slow_tokens = (8, 2) if tiny else (2 * shape["block_size"], 16)
        batches = [1, 2] if tiny else [1, 8, 32]
        results["generate"] = bench_generate(shape, num_tokens, slow_tokens, batches, original)
    if "corpus" in sections:
        print("corpus preparation...", flush=True)
        sizes = (1, 0.5) if tiny else (args.corpus_mb, args.original_corpus_mb)
        with tempfile.TemporaryDirectory(prefix="bench-corpus-") as folder:
            results["corpus"] = bench_corpus(*sizes, Path(folder))
    if "choices" in sections:
        print("this machine's choices...", flush=True)
        minutes = machine.MIN_BUDGET_S / 60 if tiny else args.minutes  # tiny: the shortest timing
        results["choices"] = bench_choices(minutes, shape)
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
