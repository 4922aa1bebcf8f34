"""Generate text with a trained ScratchGPT checkpoint.

    python MODEL.py                                   # 4000 characters of pseudo-Shakespeare
    python MODEL.py --prompt "ROMEO:" --temperature 0.8 --num-tokens 500
    python MODEL.py --dataset reddit                  # the Reddit model

The model, the sampler and the checkpoint loader come from bigram.py: one definition of each.
"""

import argparse
import math
import os
import sys
from pathlib import Path

import torch

import files
from bigram import (
    CHECKPOINT_DIR,
    DATASET_FILES,
    UserError,
    autocast,
    check_seed,
    cpu_has_native_bf16,
    generate_tokens,
    load_checkpoint,
    model_from_checkpoint,
    resolve_device,
    resolve_dtype,
)
from corpus import decode, encode


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Generate text with a trained ScratchGPT model.")
    p.add_argument("--checkpoint", type=Path, help="default: checkpoints/<dataset>.pt")
    p.add_argument("--dataset", choices=DATASET_FILES, default="shakespeare")
    p.add_argument("--num-tokens", type=int, default=4000, help="characters to generate")
    p.add_argument("--num-samples", type=int, default=1, help="independent samples, in one batch")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = always the likeliest")
    p.add_argument("--top-k", type=int, help="sample among the k likeliest characters only")
    p.add_argument("--top-p", type=float, help="sample from the smallest set with this much mass")
    p.add_argument("--prompt", help="text to continue (default: a newline)")
    p.add_argument("--prompt-file", type=Path, help="read the prompt from a UTF-8 file")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--no-stream", action="store_true", help="print the text only when done")
    p.add_argument("--output", type=Path, help="also write the text to this (new) file")
    p.add_argument("--overwrite", action="store_true", help="let --output replace a file")
    p.add_argument("--no-kv-cache", action="store_true", help="slow reference path")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    if args.num_tokens < 0 or args.num_samples < 1:
        raise UserError("--num-tokens must be >= 0 and --num-samples >= 1")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UserError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError("--top-p must be in (0, 1]")
    if args.prompt is not None and args.prompt_file is not None:
        raise UserError("give --prompt or --prompt-file, not both")
    check_seed(args.seed)


def checkpoint_path(args: argparse.Namespace) -> Path:
    return args.checkpoint or CHECKPOINT_DIR / f"{args.dataset}.pt"


def check_output(args: argparse.Namespace) -> None:
    """--output is written last: make sure now that it can be, and that it destroys nothing."""
    output = args.output
    if not output.parent.is_dir():
        raise UserError(f"--output: folder {output.parent} does not exist")
    inputs = {"the checkpoint": checkpoint_path(args)}
    if args.prompt_file is not None:
        inputs["the prompt file"] = args.prompt_file
    files.check_output(output, "--output", inputs)
    if output.exists() and not args.overwrite:
        raise UserError(f"--output {output} exists: pass --overwrite to replace it")


def read_prompt(args: argparse.Namespace, vocab: list[str]) -> str:
    if args.prompt_file is not None:
        try:
            prompt = args.prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read prompt file {args.prompt_file}: {e}") from None
        if not prompt:
            raise UserError(f"prompt file {args.prompt_file} is empty")
        return prompt
    if args.prompt:
        return args.prompt
    return "\n" if "\n" in vocab else vocab[0]


def generate(args: argparse.Namespace) -> None:
    check_args(args)
    if args.output is not None:
        check_output(args)
    device = resolve_device(args.device)
    path = checkpoint_path(args)
    if files.unreadable_reason(path) == "not found":
        train = f"python bigram.py --dataset {args.dataset}"
        if args.checkpoint:
            train += f" --out {path}"
        raise UserError(f"checkpoint {path} not found; train one first with: {train}")
    checkpoint = load_checkpoint(path, device)
    model = model_from_checkpoint(checkpoint, device, path).eval()
    vocab = checkpoint["vocab"]
    prompt = read_prompt(args, vocab)
    try:
        prompt_ids = torch.from_numpy(encode(prompt, vocab).astype("int64"))
    except UserError as e:
        raise UserError(f"prompt: {e}") from None
    prompt_ids = prompt_ids.to(device).repeat(args.num_samples, 1)

    generator = torch.Generator(device=device).manual_seed(args.seed)
    # bf16 pays off on GPUs. On a CPU, one sample at a time is bound by reading float32 weights
    # (bf16 matrix-vector products are no faster there), but from about 4 samples on the products
    # become small matrix products, which bf16 weights run about twice as fast on CPUs with native
    # bf16 (AVX512_BF16, AMX). Casting the weights once beats autocast casting them every step.
    dtype = resolve_dtype("auto", device) if device.type == "cuda" else torch.float32
    if device.type == "cpu" and args.num_samples >= 4 and cpu_has_native_bf16():
        model = model.to(torch.bfloat16)
    stream = args.num_samples == 1 and not args.no_stream
    if stream:
        print(prompt, end="", flush=True)
    steps = []
    with autocast(device, dtype):
        for step in generate_tokens(
            model, prompt_ids, args.num_tokens, args.temperature, args.top_k, args.top_p,
            use_kv_cache=not args.no_kv_cache, generator=generator,
        ):  # fmt: skip
            steps.append(step)
            if stream:
                print(vocab[step[0, 0].item()], end="", flush=True)
    tokens = torch.cat(steps, dim=1).tolist() if steps else [[] for _ in range(args.num_samples)]
    samples = [prompt + decode(row, vocab) for row in tokens]
    text = samples[0] if len(samples) == 1 else format_samples(samples)
    if stream:
        print()
    else:
        print(text)
    if args.output is not None:
        try:
            with files.atomic_file(args.output) as f:  # a full disk leaves the old file whole
                f.write((text + "\n").encode("utf-8"))
        except OSError as e:
            raise UserError(f"cannot write {args.output}: {e.strerror}") from None


def format_samples(samples: list[str]) -> str:
    return "\n".join(f"--- sample {i + 1} ---\n{s}" for i, s in enumerate(samples))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        generate(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    files.setup_console(forgive_lost_stdout=False)  # `| head` ends generation
    sys.exit(main())
