"""What the commands share on the command line: the error a user can mend (UserError, shown as
one line), a console that does not stop the work (setup_console), flags made from a config's
fields (each declared by setting), the range of a seed, how much text one generation command may
write, and reading a line typed or piped."""

import argparse
import dataclasses
import os
import signal
import sys


class UserError(Exception):
    """A problem with the user's input or environment: shown as one line, never a traceback."""


MAX_INT = 2**63 - 1  # the largest 64-bit integer: numpy, torch and the log hold no larger one
MAX_SEED = MAX_INT  # numpy's SeedSequence and torch's generators both take 0 .. 2**63 - 1
MAX_CHARS = 10_000_000  # characters one MODEL.py command writes, all samples together: in memory


def whole_number(text: str) -> int:
    """An int flag's value, no larger than a 64-bit integer: a 401-digit number would overflow
    the first float it meets."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if abs(value) > MAX_INT:
        shown = text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"
        raise argparse.ArgumentTypeError(f"{shown} is beyond {MAX_INT:,}")
    return value


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def typed_flag(name: str, value: object) -> str:
    """The flag as it was typed for value: --no-rope for a switch turned off."""
    return flag(f"no_{name}") if value is False else flag(name)


def setting(
    default: object, help: str, choices: tuple | None = None, shape: bool = False,
    many: bool = False, switch: bool = False,
) -> dataclasses.Field:  # fmt: skip
    """A config field with its --flag's help; shape: the setting is fixed once a model trains;
    many: the flag takes one value or more (a tuple); switch: a piece of the recipe that the
    architectures set, whose default is the 2019 model's (checkpoints written before the switch
    existed load with it)."""
    metadata = {"help": help, "choices": choices, "shape": shape, "many": many, "switch": switch}
    return dataclasses.field(default=default, metadata=metadata)


def flag_fields(config_class) -> list[dataclasses.Field]:
    """The fields of config_class (a dataclass) that are flags: those with help text."""
    return [field for field in dataclasses.fields(config_class) if "help" in field.metadata]


def add_flags(
    parser: argparse.ArgumentParser, config_class, names: tuple[str, ...] | None = None
) -> None:
    """A --flag for each of config_class's flag_fields (of names, when given): booleans as
    --x/--no-x, choices as choices, a field of many values as one or more (a list, which the
    config holds as a tuple). Every flag defaults to None, so that what was given on the command
    line can be told from what was not."""
    for field in flag_fields(config_class):
        if names is not None and field.name not in names:
            continue
        kind = {"type": whole_number if field.type is int else field.type}
        if field.type is bool:
            kind = {"action": argparse.BooleanOptionalAction}
        elif field.metadata["choices"]:
            kind = {"choices": field.metadata["choices"]}
        elif field.metadata.get("many"):  # a tuple of paths: one value or more
            kind = {"nargs": "+", "type": str, "metavar": "PATH"}
        parser.add_argument(flag(field.name), dest=field.name, help=field.metadata["help"], **kind)


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")


def read_line(marker: str) -> str:
    """The next line of input, without its line end (a Windows one too, as a prompt file's is
    read); EOFError at the end of the input."""
    if sys.stdout.isatty():
        line = input(marker)  # readline draws the marker itself, and redraws it as you edit
    else:
        print(marker, end="", file=sys.stderr, flush=True)  # input() would write it to stdout
        line = input()
    return line.removesuffix("\r")


class ForgivingStream:
    """A console stream that may fail: once a write fails (its reader is gone, `| head` exited,
    the disk under a redirected log is full), output is dropped instead of killing the work it
    reports on. The real file descriptor then points at /dev/null, so that Python's own flush at
    exit stays quiet too."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        if self.stream is not None:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # EPIPE, EBADF, or a closed file
                self.give_up()
        return len(text)

    def flush(self) -> None:
        if self.stream is not None:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self.give_up()

    def give_up(self) -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        self.stream = None

    def isatty(self) -> bool:
        return self.stream is not None and self.stream.isatty()

    @property
    def encoding(self) -> str:  # tqdm draws its bar in Unicode only where the stream takes it
        return self.stream.encoding if self.stream is not None else "ascii"

    def fileno(self) -> int:
        if self.stream is None:
            raise OSError("stdout is gone")
        return self.stream.fileno()


def setup_console(forgive_lost_stdout: bool = True) -> None:
    """For the command line: characters the console cannot show (an emoji on a Windows cp1252
    console) print as '?' instead of raising, SIGTERM unwinds like Ctrl-C (so temporary files are
    removed), a failing stderr (closed, or a full disk under `2> log`) silences the progress and
    the notes rather than the work, and with forgive_lost_stdout a run outlives a closed stdout
    or `| head`."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is None:  # started with it closed: keep fd from becoming a data file
            devnull = os.open(os.devnull, os.O_WRONLY)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
            setattr(sys, name, open(fd, "w", closefd=False))  # lives as long as the process
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    sys.stderr = ForgivingStream(sys.stderr)
    if forgive_lost_stdout:
        sys.stdout = ForgivingStream(sys.stdout)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
