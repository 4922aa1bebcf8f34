"""What the commands share on the command line: flags made from a config's fields, the range
of a seed, how much text one generation command may write, and reading a line typed or piped."""

import argparse
import dataclasses
import sys

from scratchgpt.files import UserError

MAX_SEED = 2**63 - 1  # numpy's SeedSequence and torch's generators both take 0 .. 2**63 - 1
MAX_CHARS = 10_000_000  # characters one MODEL.py command writes, all samples together: in memory


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def flag_fields(config_class) -> list[dataclasses.Field]:
    """The fields of config_class (a dataclass) that are flags: those with help text."""
    return [field for field in dataclasses.fields(config_class) if "help" in field.metadata]


def add_flags(parser: argparse.ArgumentParser, config_class) -> None:
    """A --flag for each of config_class's flag_fields: booleans as --x/--no-x, choices as
    choices. Every flag defaults to None, so that what was given on the command line can be told
    from what was not."""
    for field in flag_fields(config_class):
        kind = {"type": field.type}
        if field.type is bool:
            kind = {"action": argparse.BooleanOptionalAction}
        elif field.metadata["choices"]:
            kind = {"choices": field.metadata["choices"]}
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
