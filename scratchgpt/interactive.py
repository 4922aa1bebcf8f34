"""python MODEL.py -i: the model loaded once, prompts and commands read line by line.

MODEL.py hands over the sampler (bigram.generate_tokens) with the model: this module does not
import bigram.py, so that the file is loaded once, by the command that runs it."""

import argparse
import io
import math
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from scratchgpt import machine
from scratchgpt.cli import MAX_CHARS, MAX_SEED, UserError, read_line
from scratchgpt.corpus import default_prompt, encode

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
    generation: machine.Generation  # the device and precision it writes in
    sample: Callable[..., Iterator[torch.Tensor]]  # bigram.generate_tokens
    generator: torch.Generator
    use_kv_cache: bool
    temperature: float
    top_k: int | None
    top_p: float | None
    chars: int
    seed: int
    keep: bool = False
    text: str = ""  # the last prompt and continuation, or with :keep on all since :clear


def reader(kind: type, valid: Callable, off: bool = False) -> Callable[[str], int | float | None]:
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
    "temp": ("temperature", reader(float, lambda t: 0 <= t < math.inf), "a number >= 0"),
    "top-k": ("top_k", reader(int, lambda k: k >= 1, off=True), "a whole number >= 1, or off"),
    "top-p": ("top_p", reader(float, lambda p: 0 < p <= 1, off=True), "a number in (0, 1], or off"),
    "chars": (
        "chars",
        reader(int, lambda n: 0 <= n <= MAX_CHARS),
        f"a whole number, 0 to {MAX_CHARS:,}",
    ),
    "seed": ("seed", reader(int, lambda s: 0 <= s <= MAX_SEED), f"a whole number, 0 to {MAX_SEED}"),
    "keep": ("keep", on_off, "on or off"),
}


def tell(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def describe(s: Session) -> str:
    """The settings, as the commands that would set them."""
    return (
        f"temp {s.temperature}, top-k {s.top_k or 'off'}, top-p {s.top_p or 'off'}, "
        f"chars {s.chars}, seed {s.seed}, keep {'on' if s.keep else 'off'}"
    )


def run_command(session: Session, line: str) -> bool:
    """Carry out a :command line; False when it asks to leave."""
    name, _, value = line[1:].strip().partition(" ")
    value = value.strip()
    if name == "quit":
        return False
    if name == "help":
        tell(HELP)
    elif name == "settings":
        tell(describe(session))
    elif name == "clear":
        session.text = ""
        tell("the text so far is forgotten")
    elif name in SETTINGS:
        field, read, takes = SETTINGS[name]
        try:
            setattr(session, field, read(value))
        except ValueError:
            tell(f"error: :{name} takes {takes}" + (f", not {value!r}" if value else ""))
            return True
        if name == "seed":
            session.generator.manual_seed(session.seed)
        tell(describe(session))
    else:
        tell(f"error: unknown command :{name} (:help lists the commands)")
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
        tell(f"error: prompt: {e}")
        return
    s, written = session, ""
    ids = ids.to(s.generation.device)[None]
    try:
        with s.generation.autocast():
            for step in s.sample(
                s.model, ids, s.chars, s.temperature, s.top_k, s.top_p,
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


def interactive(
    args: argparse.Namespace, model: nn.Module, vocab: list[str], generation: machine.Generation,
    path: str, sample: Callable[..., Iterator[torch.Tensor]],
) -> None:  # fmt: skip
    """Continue the prompts typed (or piped) line by line with model (loaded from path), writing
    with sample (bigram.generate_tokens), until the input ends."""
    session = Session(
        model=model,
        vocab=vocab,
        generation=generation,
        sample=sample,
        generator=torch.Generator(device=generation.device).manual_seed(args.seed),
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
        tell(f"{path} ({context}): type a line to continue it, :help for help")
        tell(describe(session))
    try:
        while run_line(session, read_line("> " if terminal else "")):
            pass
    except (EOFError, KeyboardInterrupt):  # Ctrl-D or the end of the input; Ctrl-C at the prompt
        if terminal:
            tell("")  # the shell's prompt on a line of its own
