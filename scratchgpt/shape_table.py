"""Add runs to the shape table (shape_losses.json) that machine.py predicts from.

    python -m scratchgpt.shape_table --preset cpu-float32 --steps 1000 4400 --machine-class NAME

Each run is a complete run of the preset's recipe for a fixed number of steps (its schedule fits
them, no time budget), on Tiny Shakespeare, scored by its exhaustive val loss. A run's loss does
not depend on the machine's speed, so the table's runs may come from any machine; they name it.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from scratchgpt import files
from scratchgpt.machine import REPO, SHAPE_TABLE

LOSS = re.compile(r"^exhaustive val loss ([0-9.]+) ", re.MULTILINE)


def run_command(preset: str, steps: int, dtype: str, out: Path) -> list[str]:
    flags = ["--preset", preset, "--dtype", dtype, "--max-minutes", "0", "--max-iters", str(steps)]
    return [sys.executable, "bigram.py", *flags, "--sample-chars", "0", "--out", str(out)]


def train_and_score(preset: str, steps: int, dtype: str) -> float:
    """The exhaustive val loss of one complete run (its checkpoint is thrown away)."""
    with tempfile.TemporaryDirectory() as folder:
        command = run_command(preset, steps, dtype, Path(folder) / "run.pt")
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    found = LOSS.search(result.stdout)
    if result.returncode != 0 or found is None:
        raise SystemExit(f"error: the run failed: {result.stderr.strip().splitlines()[-1:]}")
    return float(found.group(1))


def commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True)  # fmt: skip
    return result.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Add complete runs to scratchgpt/shape_losses.json.")
    p.add_argument("--preset", required=True, choices=["cpu", "cpu-float32"])
    p.add_argument("--steps", type=int, nargs="+", required=True)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--machine-class", required=True, help="as docs/cpu-classes.md names it")
    args = p.parse_args(argv)
    table = json.loads(SHAPE_TABLE.read_text(encoding="utf-8"))
    for steps in args.steps:
        loss = train_and_score(args.preset, steps, args.dtype)
        command = run_command(args.preset, steps, args.dtype, Path("RUN.pt"))
        table["runs"].append({
            "preset": args.preset, "steps": steps, "loss": loss,
            "machine_class": args.machine_class, "dtype": args.dtype, "commit": commit(),
            "date": date.today().isoformat(), "command": " ".join(["python", *command[1:]]),
        })  # fmt: skip
        with files.atomic_file(SHAPE_TABLE) as f:  # whole or not at all
            f.write((json.dumps(table, indent=1) + "\n").encode("utf-8"))
        print(f"{args.preset}, {steps} steps: exhaustive val loss {loss:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
