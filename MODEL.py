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

from bigram import generate_tokens, model_from_checkpoints
from scratchgpt import chat, checkpoint, ensemble, files, machine, shipped
from scratchgpt.cli import MAX_CHARS, UserError, check_seed, setup_console
from scratchgpt.corpus import (
    DATASET_FILES,
    decode,
    default_prompt,
    encode,
    normalize_newlines,
    read_text,
)  # fmt: skip
from scratchgpt.interactive import check_interactive, interactive


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


def checkpoints_to_load(args: argparse.Namespace) -> list[Path]:
    """--checkpoint; else your own model of the dataset, or the shipped one until you train it."""
    if args.checkpoint:
        return args.checkpoint
    own = checkpoint.default_path(args.dataset)
    if args.dataset == "shakespeare" and files.unreadable_reason(own) == "not found":
        return [shipped.MODEL_PATH]
    return [own]


def check_output_file(args: argparse.Namespace) -> None:
    """--output is written last: make sure now that it can be, and that it destroys nothing."""
    output = args.output = files.user_path(args.output, "--output", output_example="sample.txt")
    if not output.parent.is_dir():
        raise UserError(f"--output: folder {output.parent} does not exist")
    paths = checkpoints_to_load(args)
    inputs = {"the checkpoint" if len(paths) == 1 else f"the checkpoint {p}": p for p in paths}
    if args.prompt_file is not None:
        inputs["the prompt file"] = args.prompt_file
    files.check_output(output, "--output", inputs)
    if output.exists() and not args.overwrite:
        raise UserError(f"--output {output} exists: pass --overwrite to replace it")


def read_prompt(args: argparse.Namespace, vocab: list[str]) -> str:
    if args.prompt_file is not None:
        # As a corpus is read: no byte-order mark, Windows line ends as newlines, no UTF-16.
        text = read_text(args.prompt_file, "prompt file", max_bytes=4 * MAX_CHARS)
        prompt = "".join(normalize_newlines([text]))
        if not prompt:
            raise UserError(f"prompt file {args.prompt_file} is empty")
        return prompt
    if args.prompt:
        return args.prompt
    return default_prompt(vocab)


def load_model(args: argparse.Namespace) -> tuple[nn.Module, list[str], torch.device]:
    """The checkpoint's model (several checkpoints: their ensemble), ready to sample on the
    chosen device, and its vocabulary."""
    device = machine.resolve_device(args.device)
    paths = checkpoints_to_load(args)
    for path in paths:
        if files.unreadable_reason(path) == "not found":
            train = f"python bigram.py --dataset {args.dataset}"
            if args.checkpoint:
                train += f" --out {path}"
            raise UserError(f"checkpoint {path} not found; train one first with: {train}")
    model, vocab = model_from_checkpoints(paths, device)
    if not args.checkpoint:  # say which of the two defaults it is
        whose = "shipped with ScratchGPT" if paths[0] == shipped.MODEL_PATH else "your own"
        print(f"model: {paths[0]} ({whose}; --checkpoint picks another)", file=sys.stderr)
    if len(paths) > 1:
        print(f"ensemble: {len(paths)} models, each character drawn from the mean of their "
              "probabilities", file=sys.stderr)  # fmt: skip
    return model, vocab, device


def prepare_generation(
    args: argparse.Namespace, model: nn.Module, device: torch.device
) -> tuple[nn.Module, machine.Generation]:
    """How this machine generates with the model, decided once, after the input has been
    checked: on a CPU choosing the weights (--weights) may time both, and says so in one line.
    Everything that writes is handed the answer."""
    model, generation = machine.choose_generation(
        model, device, args.weights, seconds_per_step, args.num_samples
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


def generate(args: argparse.Namespace) -> None:
    check_args(args)
    if args.output is not None:
        check_output_file(args)
    model, vocab, device = load_model(args)
    # Each sample keeps its own KV cache: together they may not fit where one does.
    for member in ensemble.members(model):
        machine.check_memory(type(member), member.config, args.num_samples, training=False,
                             device=device, advice="ask for fewer --num-samples")  # fmt: skip
    prompt = read_prompt(args, vocab)
    try:
        prompt_ids = torch.from_numpy(encode(prompt, vocab).astype("int64"))
    except UserError as e:
        raise UserError(f"prompt: {e}") from None
    prompt_ids = prompt_ids.to(device).repeat(args.num_samples, 1)
    model, generation = prepare_generation(args, model, device)

    generator = torch.Generator(device=device).manual_seed(args.seed)
    stream = args.num_samples == 1 and not args.no_stream
    if stream:
        print(prompt, end="", flush=True)
    tokens = torch.empty((args.num_samples, args.num_tokens), dtype=torch.long, device=device)
    with generation.autocast():
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


def check_chat(args: argparse.Namespace) -> None:
    """Flags that mean nothing in a conversation are refused rather than ignored."""
    flags = {
        "--interactive": args.interactive,
        "--num-samples": args.num_samples != 1,
        "--prompt": args.prompt is not None,
        "--prompt-file": args.prompt_file is not None,
        "--no-stream": args.no_stream,
    }
    given = [flag for flag, present in flags.items() if present]
    if given:
        raise UserError(f"--chat reads your speeches from the input: {', '.join(given)} cannot "
                        "be used with it")  # fmt: skip
    if sys.stdin is None:  # started with stdin closed
        raise UserError("--chat reads your speeches from stdin, which is closed")


def text_writer(
    args: argparse.Namespace, model: nn.Module, vocab: list[str], generation: machine.Generation
) -> chat.Writer:
    """What the model writes after a text, with the sampling flags, from a generator seeded
    with --seed: the same conversation with the same seed gets the same replies."""
    generator = torch.Generator(device=generation.device).manual_seed(args.seed)

    def write(text: str, max_chars: int) -> Iterator[str]:
        ids = torch.from_numpy(encode(text, vocab).astype("int64")).to(generation.device)[None]
        with generation.autocast():
            for step in generate_tokens(
                model, ids, max_chars, args.temperature, args.top_k, args.top_p,
                use_kv_cache=not args.no_kv_cache, generator=generator,
            ):  # fmt: skip
                yield vocab[step.item()]

    return write


def converse(args: argparse.Namespace) -> None:
    """python MODEL.py --chat NAME: the conversation, then its transcript (--output)."""
    check_args(args)
    check_chat(args)
    if args.output is not None:
        check_output_file(args)
    model, vocab, device = load_model(args)
    you, them = chat.speakers(args.chat, args.speak_as, vocab)
    model, generation = prepare_generation(args, model, device)
    conversation = chat.Conversation(you, them, model.config.block_size)
    terminal = sys.stdin.isatty()
    session = chat.Chat(conversation, vocab, text_writer(args, model, vocab, generation),
                        args.num_tokens, echo=not (terminal and sys.stdout.isatty()))  # fmt: skip
    if isinstance(sys.stdin, io.TextIOWrapper):  # undecodable bytes are named, not a traceback
        sys.stdin.reconfigure(errors="surrogateescape")
    chat.talk(session, text_writer(args, model, vocab, generation), terminal)
    if args.output is not None:
        write_output(args.output, conversation.transcript().removesuffix("\n"), args.overwrite)


def format_samples(samples: list[str]) -> str:
    return "\n".join(f"--- sample {i + 1} ---\n{s}" for i, s in enumerate(samples))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.chat is not None:
            converse(args)
        elif args.interactive:
            check_args(args)
            check_interactive(args)
            model, vocab, device = load_model(args)
            model, generation = prepare_generation(args, model, device)
            names = ", ".join(str(path) for path in checkpoints_to_load(args))
            interactive(args, model, vocab, generation, names, generate_tokens)
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
    except OSError as e:  # files raise UserError: this is the console (stdout on a full disk)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # a quiet flush at exit
        print(f"error: standard input or output failed: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    setup_console(forgive_lost_stdout=False)  # `| head` ends generation
    sys.exit(main())
