"""Generate text with a trained ScratchGPT checkpoint.

    python MODEL.py                                   # 4000 characters of pseudo-Shakespeare
    python MODEL.py --prompt "ROMEO:" --temperature 0.8 --num-tokens 500
    python MODEL.py --chat JULIET --as ROMEO          # talk with a character
    python MODEL.py --dataset reddit                  # the Reddit model
    python MODEL.py -i                                # type prompts, one continuation each
    python MODEL.py --checkpoint a.pt b.pt c.pt       # three models as one (an ensemble)

Without --checkpoint it reads your own checkpoints/<dataset>.pt, or for Shakespeare, until you
train one, the model shipped in pretrained/.

The model and the sampler come from bigram.py: one definition of each. How this machine
generates (the device, the weights' precision) is decided once, by scratchgpt/machine.py.
"""

import argparse
import io
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from bigram import MODEL_TYPES, generate_tokens
from scratchgpt import chat, checkpoint, files, machine, shipped
from scratchgpt.cli import MAX_CHARS, UserError, check_seed, setup_console
from scratchgpt.corpus import (
    DATASET_FILES,
    default_prompt,
    encode,
    normalize_newlines,
    read_text,
)  # fmt: skip
from scratchgpt.interactive import interactive


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Generate text with a trained ScratchGPT model.")
    p.add_argument("--checkpoint", type=Path, nargs="+", metavar="CHECKPOINT",
                   help="default: checkpoints/<dataset>.pt, else the shipped model; several: "
                   "an ensemble, their probabilities averaged")  # fmt: skip
    p.add_argument("--dataset", choices=DATASET_FILES, default="shakespeare")
    p.add_argument("--num-tokens", type=int, help="characters to generate (default 4000; --chat: "
                   f"the most a reply writes, default {chat.REPLY_CAP})")  # fmt: skip
    p.add_argument("--num-samples", type=int, default=1, help="independent samples, in one batch")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = always the likeliest")
    p.add_argument("--top-k", type=int, help="sample among the k likeliest characters only")
    p.add_argument("--top-p", type=float, help="sample from the smallest set with this much mass")
    p.add_argument("--prompt", help="text to continue (default: a newline)")
    p.add_argument("--prompt-file", type=Path, help="read the prompt from a UTF-8 file")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--no-stream", action="store_true", help="print the text only when done")
    p.add_argument("--output", help="also write the text to this (new) file")
    p.add_argument("--overwrite", action="store_true", help="let --output replace a file")
    p.add_argument("--no-kv-cache", action="store_true", help="slow reference path")
    p.add_argument("--weights", choices=["auto", "float32", "bfloat16", "fastest"], default="auto",
                   help="CPU weights: auto: timed once here; fastest: again")  # fmt: skip
    p.add_argument(
        "-i", "--interactive", action="store_true", help="continue prompts typed line by line"
    )
    p.add_argument("--chat", metavar="NAME", help="talk with the character NAME, line by line")
    you = f"default {chat.DEFAULT_SPEAKER}, or {chat.PARTNER} to {chat.DEFAULT_SPEAKER}"
    p.add_argument("--as", dest="speak_as", metavar="NAME",
                   help=f"--chat: the name you speak as ({you})")  # fmt: skip
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    if args.num_tokens is None:
        args.num_tokens = chat.REPLY_CAP if args.chat is not None else 4000
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
    if args.chat is not None or args.interactive:
        check_line_by_line(args)


def check_line_by_line(args: argparse.Namespace) -> None:
    """--chat and --interactive read stdin and stream one text: flags that mean nothing there are
    refused rather than ignored."""
    talking = args.chat is not None
    flags = {
        "--interactive": talking and args.interactive,
        "--num-samples": args.num_samples != 1,
        "--prompt": args.prompt is not None,
        "--prompt-file": args.prompt_file is not None,
        "--output": not talking and args.output is not None,
        "--no-stream": args.no_stream,
    }
    given = [flag for flag, present in flags.items() if present]
    reads = "--chat reads your speeches" if talking else "--interactive reads its prompts"
    if given:
        streams = "" if talking else " and streams one sample to stdout"
        raise UserError(
            f"{reads} from the input{streams}: {', '.join(given)} cannot be used with it"
        )
    if sys.stdin is None:  # started with stdin closed
        raise UserError(f"{reads} from stdin, which is closed")


def checkpoints_to_load(args: argparse.Namespace) -> list[Path]:
    """--checkpoint; else your own model of the dataset, or the shipped one until you train it."""
    if args.checkpoint:
        return args.checkpoint
    own = checkpoint.default_path(args.dataset)
    if args.dataset == "shakespeare" and not os.path.lexists(own):  # nothing there, not even a link
        return [shipped.MODEL_PATH]
    return [own]


def inputs_of(args: argparse.Namespace, paths: list[Path]) -> dict[str, Path]:
    """What this command reads, which --output must not name: it is written last."""
    inputs = {"the checkpoint" if len(paths) == 1 else f"the checkpoint {p}": p for p in paths}
    if args.prompt_file is not None:
        inputs["the prompt file"] = args.prompt_file
    return inputs


def read_prompt(args: argparse.Namespace, vocab: list[str]) -> str:
    """--prompt, --prompt-file, or the default prompt, in characters the model knows."""
    prompt = read_prompt_text(args) or default_prompt(vocab)
    try:
        encode(prompt, vocab)
    except UserError as e:
        raise UserError(f"prompt: {e}") from None
    return prompt


def read_prompt_text(args: argparse.Namespace) -> str | None:
    if args.prompt_file is not None:
        # As a corpus is read: no byte-order mark, Windows line ends as newlines, no UTF-16.
        text = read_text(args.prompt_file, "prompt file", max_bytes=4 * MAX_CHARS)
        prompt = "".join(normalize_newlines([text]))
        if not prompt:
            raise UserError(f"prompt file {args.prompt_file} is empty")
        return prompt
    return args.prompt


def load_model(args: argparse.Namespace, paths: list[Path]) -> tuple[nn.Module, list[str]]:
    """The checkpoint's model (several checkpoints: their ensemble), on the chosen device, and
    its vocabulary."""

    def missing(path: Path) -> str:
        train = f"python bigram.py --dataset {args.dataset}"
        train += f" --out {path}" if args.checkpoint else ""
        return f"checkpoint {path} not found; train one first with: {train}"

    samples = args.num_samples  # each keeps its own KV cache: all must fit
    return checkpoint.load_models(paths, MODEL_TYPES, args.device, missing, samples)


def prepare_generation(
    args: argparse.Namespace, model: nn.Module, paths: list[Path]
) -> tuple[nn.Module, machine.Generation]:
    """How this machine generates with the model (of paths), decided once, after all the input
    has been checked: on a CPU choosing the weights (--weights) may time both. Everything that
    writes is handed the answer. Said on stderr: which model writes, and how the weights were
    chosen when they were timed."""
    if not args.checkpoint:  # which of the two defaults it is
        whose = "shipped with ScratchGPT" if paths[0] == shipped.MODEL_PATH else "your own"
        print(f"model: {paths[0]} ({whose}; --checkpoint picks another)", file=sys.stderr)
    if len(paths) > 1:
        print(f"ensemble: {len(paths)} models, each character drawn from the mean of their "
              "probabilities", file=sys.stderr)  # fmt: skip
    model, generation = machine.choose_generation(
        model, args.weights, seconds_per_step, args.num_samples
    )
    if generation.line:
        print(generation.line, file=sys.stderr)
    return model, generation


def seconds_per_step(model: nn.Module, batch_size: int) -> float:
    """The time of one generation step (one character per sample), with the KV cache."""
    steps = generate_tokens(model, torch.zeros((batch_size, 1), dtype=torch.long), 24, 0.0)
    for _ in range(8):  # warm-up: the first calls of each kernel are slow
        next(steps)
    start = time.perf_counter()
    for _ in steps:
        pass
    return (time.perf_counter() - start) / 16


def text_writer(
    args: argparse.Namespace, model: nn.Module, vocab: list[str], generation: machine.Generation
) -> chat.Writer:
    """What the model writes after a text, with the sampling flags, from a generator seeded
    with --seed: the same text with the same seed gets the same continuation."""
    generator = torch.Generator(device=generation.device).manual_seed(args.seed)

    def write(text: str, max_chars: int) -> Iterator[str]:
        ids = torch.from_numpy(encode(text, vocab).astype("int64")).to(generation.device)
        with generation.autocast():
            for step in generate_tokens(
                model, ids.repeat(args.num_samples, 1), max_chars, args.temperature, args.top_k,
                args.top_p, use_kv_cache=not args.no_kv_cache, generator=generator,
            ):  # fmt: skip
                yield "".join(vocab[i] for i in step[:, 0].tolist())

    return write


def generate(
    args: argparse.Namespace, model: nn.Module, vocab: list[str], paths: list[Path], prompt: str
) -> str:
    """python MODEL.py: --num-samples continuations of the prompt, streamed when there is one;
    returns the text."""
    model, generation = prepare_generation(args, model, paths)
    stream = args.num_samples == 1 and not args.no_stream
    if stream:
        print(prompt, end="", flush=True)
    steps = []  # each step: the next character of every sample
    for chars in text_writer(args, model, vocab, generation)(prompt, args.num_tokens):
        steps.append(chars)
        if stream:
            print(chars, end="", flush=True)
    samples = [prompt + "".join(s[i] for s in steps) for i in range(args.num_samples)]
    text = samples[0] if len(samples) == 1 else format_samples(samples)
    if stream:
        print()
    else:
        print(text)
    return text


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


def converse(
    args: argparse.Namespace, model: nn.Module, vocab: list[str], paths: list[Path],
    you: str, them: str,
) -> str:  # fmt: skip
    """python MODEL.py --chat NAME: the conversation of you and them; returns its transcript."""
    model, generation = prepare_generation(args, model, paths)
    conversation = chat.Conversation(you, them, model.config.block_size)
    terminal = sys.stdin.isatty()
    # Two writers, each with its own generator: the probe of the model's own text (chat.talk)
    # leaves the replies as they would be without it.
    write, probe = (text_writer(args, model, vocab, generation) for _ in range(2))
    session = chat.Chat(conversation, vocab, write, args.num_tokens,
                        echo=not (terminal and sys.stdout.isatty()))  # fmt: skip
    if isinstance(sys.stdin, io.TextIOWrapper):  # undecodable bytes are named, not a traceback
        sys.stdin.reconfigure(errors="surrogateescape")
    chat.talk(session, probe, terminal)
    return conversation.transcript().removesuffix("\n")


def session(
    args: argparse.Namespace, model: nn.Module, vocab: list[str], paths: list[Path]
) -> None:
    """python MODEL.py -i: prompts typed line by line, each continued (interactive.py)."""
    model, generation = prepare_generation(args, model, paths)
    names = ", ".join(str(path) for path in paths)
    interactive(args, model, vocab, generation, names, generate_tokens)


def format_samples(samples: list[str]) -> str:
    return "\n".join(f"--- sample {i + 1} ---\n{s}" for i, s in enumerate(samples))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        paths = checkpoints_to_load(args)
        inputs = inputs_of(args, paths)
        model, vocab = load_model(args, paths)
        output = None
        if args.output is not None:  # written last: checked now
            output = files.check_new_output(args.output, "--output", inputs, args.overwrite,
                                            example="sample.txt")  # fmt: skip
        # The chat's names and the prompt are checked before the machine's choice of how to
        # generate (prepare_generation), which may take seconds.
        if args.interactive:
            session(args, model, vocab, paths)
            return 0
        if args.chat is not None:
            you, them = chat.speakers(args.chat, args.speak_as, vocab)
            text = converse(args, model, vocab, paths, you, them)
        else:
            text = generate(args, model, vocab, paths, read_prompt(args, vocab))
        if output is not None:
            write_output(output, text, args.overwrite)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # files raise UserError: this is the console (stdout on a full disk)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # a quiet flush at exit
        print(f"error: standard input or output failed: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    setup_console(forgive_lost_stdout=False)  # `| head` ends generation
    sys.exit(main())
