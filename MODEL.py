"""Generate text with a trained ScratchGPT checkpoint.

    python MODEL.py                                   # 4000 characters of pseudo-Shakespeare
    python MODEL.py --prompt "ROMEO:" --temperature 0.8 --num-tokens 500
    python MODEL.py --dataset reddit                  # the Reddit model
    python MODEL.py -i                                # type prompts, one continuation each

The model, the sampler and the checkpoint loader come from bigram.py: one definition of each.
"""

import argparse
import copy
import io
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import files
import hardware
from bigram import (
    CHECKPOINT_DIR,
    DATASET_FILES,
    MAX_SEED,
    UserError,
    check_seed,
    generate_tokens,
    load_checkpoint,
    model_from_checkpoint,
)
from corpus import decode, encode, normalize_newlines, read_text


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
    p.add_argument("--weights", choices=["auto", "float32", "bfloat16", "fastest"], default="auto",
                   help="CPU weights: auto is reproducible; fastest times both here")  # fmt: skip
    p.add_argument(
        "-i", "--interactive", action="store_true", help="continue prompts typed line by line"
    )
    return p.parse_args(argv)


MAX_CHARS = 10_000_000  # characters one command writes, all samples together: kept in memory


def check_args(args: argparse.Namespace) -> None:
    if args.num_tokens < 0 or args.num_samples < 1:
        raise UserError("--num-tokens must be >= 0 and --num-samples >= 1")
    if args.num_tokens * args.num_samples > MAX_CHARS:
        raise UserError(
            f"--num-tokens x --num-samples asks for {args.num_tokens * args.num_samples:,} "
            f"characters; the limit is {MAX_CHARS:,} per command"
        )
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UserError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UserError("--top-k must be at least 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError("--top-p must be in (0, 1]")
    if args.prompt is not None and args.prompt_file is not None:
        raise UserError("give --prompt or --prompt-file, not both")
    check_seed(args.seed)


def checkpoint_to_load(args: argparse.Namespace) -> Path:
    return args.checkpoint or CHECKPOINT_DIR / f"{args.dataset}.pt"


def check_output_file(args: argparse.Namespace) -> None:
    """--output is written last: make sure now that it can be, and that it destroys nothing."""
    output = args.output
    if not output.parent.is_dir():
        raise UserError(f"--output: folder {output.parent} does not exist")
    inputs = {"the checkpoint": checkpoint_to_load(args)}
    if args.prompt_file is not None:
        inputs["the prompt file"] = args.prompt_file
    files.check_output(output, "--output", inputs)
    if output.exists() and not args.overwrite:
        raise UserError(f"--output {output} exists: pass --overwrite to replace it")


def default_prompt(vocab: list[str]) -> str:
    return "\n" if "\n" in vocab else vocab[0]


def read_prompt(args: argparse.Namespace, vocab: list[str]) -> str:
    if args.prompt_file is not None:
        # As a corpus is read: no byte-order mark, Windows line ends as newlines, no UTF-16.
        prompt = "".join(normalize_newlines([read_text(args.prompt_file, "prompt file")]))
        if not prompt:
            raise UserError(f"prompt file {args.prompt_file} is empty")
        return prompt
    if args.prompt:
        return args.prompt
    return default_prompt(vocab)


def load_model(args: argparse.Namespace) -> tuple[nn.Module, list[str], torch.device]:
    """The checkpoint's model, ready to sample on the chosen device, and its vocabulary."""
    device = hardware.resolve_device(args.device)
    path = checkpoint_to_load(args)
    if files.unreadable_reason(path) == "not found":
        train = f"python bigram.py --dataset {args.dataset}"
        if args.checkpoint:
            train += f" --out {path}"
        raise UserError(f"checkpoint {path} not found; train one first with: {train}")
    checkpoint = load_checkpoint(path, device)
    model = model_from_checkpoint(checkpoint, device, path).eval()
    if device.type == "cpu":
        model = cpu_weights(model, args.weights, args.num_samples)
    return model, checkpoint["vocab"], device


def cpu_weights(model: nn.Module, choice: str, batch_size: int) -> nn.Module:
    """The weights a CPU generates with (--weights). auto is a fixed rule, so that a seed always
    writes the same text on a machine: bf16 on CPUs with bf16 instructions, float32 elsewhere.
    Every character reads every weight, and bf16 weights are half the bytes: one sample writes
    about 3x faster (PyTorch's matrix-vector kernel), several in a batch about 2x (oneDNN's bf16
    products). fastest times both here instead, for a CPU where the rule guesses wrong, but
    then a seed's text can depend on the pick. Casting once beats autocast casting the weights at
    every step."""
    if choice == "bfloat16" or (choice == "auto" and hardware.cpu_has_native_bf16()):
        return model.to(torch.bfloat16)
    if choice == "fastest":
        return faster_cpu_weights(model, batch_size)
    return model


def seconds_per_step(model: nn.Module, batch_size: int) -> float:
    """The time of one generation step (one character per sample), with the KV cache."""
    steps = generate_tokens(model, torch.zeros((batch_size, 1), dtype=torch.long), 24, 0.0)
    for _ in range(8):  # warm-up: the first calls of each kernel are slow
        next(steps)
    start = time.perf_counter()
    for _ in steps:
        pass
    return (time.perf_counter() - start) / 16


def faster_cpu_weights(model: nn.Module, batch_size: int) -> nn.Module:
    """float32 or bf16 weights, whichever generates faster here, measured (a few dozen steps).

    Generation reads every weight for every character. bf16 weights halve those bytes, which
    pays where all of them then fit in the CPU's cache; which wins depends on the CPU's cache
    and instructions, not on its name (the same code has ranked differently on two server
    CPUs), so it is timed rather than guessed.
    """
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    times = {m: min(seconds_per_step(m, batch_size) for _ in range(2)) for m in (model, bf16)}
    return min(times, key=times.get)


def autocast_dtype(device: torch.device) -> torch.dtype:
    return hardware.resolve_dtype("auto", device) if device.type == "cuda" else torch.float32


def generate(args: argparse.Namespace) -> None:
    check_args(args)
    if args.output is not None:
        check_output_file(args)
    model, vocab, device = load_model(args)
    prompt = read_prompt(args, vocab)
    try:
        prompt_ids = torch.from_numpy(encode(prompt, vocab).astype("int64"))
    except UserError as e:
        raise UserError(f"prompt: {e}") from None
    prompt_ids = prompt_ids.to(device).repeat(args.num_samples, 1)

    generator = torch.Generator(device=device).manual_seed(args.seed)
    dtype = autocast_dtype(device)  # bf16 autocast on GPUs; a CPU's weights were chosen above
    stream = args.num_samples == 1 and not args.no_stream
    if stream:
        print(prompt, end="", flush=True)
    tokens = torch.empty((args.num_samples, args.num_tokens), dtype=torch.long, device=device)
    with hardware.autocast(device, dtype):
        for i, step in enumerate(generate_tokens(
            model, prompt_ids, args.num_tokens, args.temperature, args.top_k, args.top_p,
            use_kv_cache=not args.no_kv_cache, generator=generator,
        )):  # fmt: skip
            tokens[:, i] = step[:, 0]
            if stream:
                print(vocab[step[0, 0].item()], end="", flush=True)
    samples = [prompt + decode(row, vocab) for row in tokens.tolist()]
    text = samples[0] if len(samples) == 1 else format_samples(samples)
    if stream:
        print()
    else:
        print(text)
    if args.output is not None:
        write_output(args.output, text, args.overwrite)


def write_output(path: Path, text: str, overwrite: bool) -> None:
    """Whole or not at all (a full disk leaves the old file whole). Without overwrite the file is
    created only if its name is still free, in one step: of two commands writing the same new
    file, the second is refused instead of replacing the first's text."""
    try:
        with files.atomic_file(path, replace=overwrite) as f:
            f.write((text + "\n").encode("utf-8"))
    except FileExistsError:
        raise UserError(
            f"--output {path} was created by another program while this one wrote: it is not "
            "replaced (the text is above; --overwrite replaces it)"
        ) from None
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None


def format_samples(samples: list[str]) -> str:
    return "\n".join(f"--- sample {i + 1} ---\n{s}" for i, s in enumerate(samples))


# -----------------------------------------------------------------------------
# Interactive mode: the model loaded once, prompts read line by line

HELP = r"""Type a line and the model continues it; its text goes to stdout, all else to stderr.
  A line is sent with its newline, as typed: 'ROMEO:' asks for what follows that line.
  End a line with \ to send it without one, so that the model finishes the line itself.
  An empty line asks for more: with :keep on the text goes on where it stopped; with :keep off
  the model starts afresh from a newline, MODEL.py's default prompt. '::' starts a line with ':'.
  :temp T         temperature; 0 always takes the likeliest character
  :top-k K|off    sample among the K likeliest characters only
  :top-p P|off    sample from the smallest set of characters holding probability P
  :chars N        characters per continuation
  :seed S         restart the random numbers from S: the same seed, settings and text give the
                  same continuation, the one MODEL.py --seed S writes
  :keep on|off    on: each line goes on from the text so far (the last prompt, its continuation
                  and all after them), a prompt on a line of its own; the model reads as much of
                  its end as its context holds. off: each line starts afresh
  :clear          forget the text so far
  :settings       show the settings
  :help           this text
  :quit           leave; so do Ctrl-D, and Ctrl-C at the prompt (Ctrl-C during a continuation
                  stops it)"""


@dataclass
class Session:
    """The model, and what an interactive session remembers between prompts."""

    model: nn.Module
    vocab: list[str]
    device: torch.device
    generator: torch.Generator
    use_kv_cache: bool
    temperature: float
    top_k: int | None
    top_p: float | None
    chars: int
    seed: int
    keep: bool = False
    text: str = ""  # the last prompt and continuation, or with :keep on all since :clear


def number(kind: type, valid: Callable, off: bool = False) -> Callable[[str], int | float | None]:
    """A reader of values of kind for which valid() holds, and of 'off' (None) when off is True;
    it raises ValueError for anything else."""

    def read(text: str) -> int | float | None:
        if off and text == "off":
            return None
        value = kind(text)
        if not valid(value):  # NaN fails every comparison, so it is refused too
            raise ValueError(text)
        return value

    return read


def on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise ValueError(text)
    return text == "on"


# :name -> (the Session field it sets, its reader, the values it takes in words)
SETTINGS = {
    "temp": ("temperature", number(float, lambda t: 0 <= t < math.inf), "a number >= 0"),
    "top-k": ("top_k", number(int, lambda k: k >= 1, off=True), "a whole number >= 1, or off"),
    "top-p": ("top_p", number(float, lambda p: 0 < p <= 1, off=True), "a number in (0, 1], or off"),
    "chars": (
        "chars",
        number(int, lambda n: 0 <= n <= MAX_CHARS),
        f"a whole number, 0 to {MAX_CHARS:,}",
    ),
    "seed": ("seed", number(int, lambda s: 0 <= s <= MAX_SEED), f"a whole number, 0 to {MAX_SEED}"),
    "keep": ("keep", on_off, "on or off"),
}


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def describe(s: Session) -> str:
    """The settings, as the commands that would set them."""
    return (
        f"temp {s.temperature}, top-k {s.top_k or 'off'}, top-p {s.top_p or 'off'}, "
        f"chars {s.chars}, seed {s.seed}, keep {'on' if s.keep else 'off'}"
    )


def check_interactive(args: argparse.Namespace) -> None:
    """Flags that mean nothing in a session are refused rather than ignored."""
    flags = {
        "--num-samples": args.num_samples != 1,
        "--prompt": args.prompt is not None,
        "--prompt-file": args.prompt_file is not None,
        "--output": args.output is not None,
        "--no-stream": args.no_stream,
    }
    given = [flag for flag, present in flags.items() if present]
    if given:
        raise UserError(
            f"--interactive reads its prompts from the input and streams one sample to stdout: "
            f"{', '.join(given)} cannot be used with it"
        )
    if sys.stdin is None:  # started with stdin closed
        raise UserError("--interactive reads its prompts from stdin, which is closed")


def run_command(session: Session, line: str) -> bool:
    """Carry out a :command line; False when it asks to leave."""
    name, _, value = line[1:].strip().partition(" ")
    value = value.strip()
    if name == "quit":
        return False
    if name == "help":
        say(HELP)
    elif name == "settings":
        say(describe(session))
    elif name == "clear":
        session.text = ""
        say("the text so far is forgotten")
    elif name in SETTINGS:
        field, read, takes = SETTINGS[name]
        try:
            setattr(session, field, read(value))
        except ValueError:
            say(f"error: :{name} takes {takes}" + (f", not {value!r}" if value else ""))
            return True
        if name == "seed":
            session.generator.manual_seed(session.seed)
        say(describe(session))
    else:
        say(f"error: unknown command :{name} (:help lists the commands)")
    return True


def model_input(text: str, prompt: str, vocab: list[str]) -> str:
    """What the model reads: the text so far, then prompt on a line of its own, as the screen
    shows them; MODEL.py's default prompt when both are empty."""
    if text and prompt and not text.endswith("\n") and "\n" in vocab:
        text += "\n"
    return (text + prompt) or default_prompt(vocab)


def continue_text(session: Session, prompt: str) -> None:
    """Stream the model's continuation of prompt, after the text so far with :keep on."""
    context = model_input(session.text if session.keep else "", prompt, session.vocab)
    try:
        ids = torch.from_numpy(encode(context, session.vocab).astype("int64"))
    except UserError as e:
        say(f"error: prompt: {e}")
        return
    s, written = session, ""
    try:
        with hardware.autocast(s.device, autocast_dtype(s.device)):
            for step in generate_tokens(
                s.model, ids.to(s.device)[None], s.chars, s.temperature, s.top_k, s.top_p,
                use_kv_cache=s.use_kv_cache, generator=s.generator,
            ):  # fmt: skip
                written += s.vocab[step.item()]
                print(written[-1], end="", flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C stops this continuation only; what it wrote so far stays in the text
    if not written.endswith("\n"):
        print(flush=True)  # the next prompt on a line of its own (the model does not see it)
    session.text = (context + written)[-s.model.config.block_size :]  # all the model would read


def run_line(session: Session, line: str) -> bool:
    """Carry out one line of input, a command or a prompt; False when it asks to leave."""
    if line.startswith(":") and not line.startswith("::"):
        return run_command(session, line)
    prompt = line[1:] if line.startswith("::") else line
    if prompt.endswith("\\"):
        prompt = prompt[:-1]
    elif prompt and "\n" in session.vocab:  # without newlines in it the model could read no line
        prompt += "\n"
    continue_text(session, prompt)
    return True


def read_line(marker: str) -> str:
    """The next line of input, without its newline; EOFError at the end of the input."""
    if sys.stdout.isatty():
        return input(marker)  # readline draws the marker itself, and redraws it as you edit
    print(marker, end="", file=sys.stderr, flush=True)  # input() would write it to stdout
    return input()


def interactive(args: argparse.Namespace) -> None:
    check_args(args)
    check_interactive(args)
    model, vocab, device = load_model(args)
    session = Session(
        model=model,
        vocab=vocab,
        device=device,
        generator=torch.Generator(device=device).manual_seed(args.seed),
        use_kv_cache=not args.no_kv_cache,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        chars=args.num_tokens,
        seed=args.seed,
    )
    # Nothing here writes a file: SIGTERM ends the session, not just the current continuation.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if isinstance(sys.stdin, io.TextIOWrapper):  # undecodable bytes are named, not a traceback
        sys.stdin.reconfigure(errors="surrogateescape")
    terminal = sys.stdin.isatty()
    if terminal:
        if sys.stdout.isatty():  # input() uses readline only then
            try:
                import readline  # noqa: F401  line editing and history for input()
            except ImportError:
                pass
        context = f"a context of {model.config.block_size} characters"
        say(f"{checkpoint_to_load(args)} ({context}): type a line to continue it, :help for help")
        say(describe(session))
    try:
        while run_line(session, read_line("> " if terminal else "")):
            pass
    except (EOFError, KeyboardInterrupt):  # Ctrl-D or the end of the input; Ctrl-C at the prompt
        if terminal:
            say("")  # the shell's prompt on a line of its own


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.interactive:
            interactive(args)
        else:
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
