"""Helpers shared by the tests: a small synthetic corpus and running the scripts as a user does."""

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY_MODEL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16"]
# No sample text at evaluations unless a test asks for it: it would cost most of a tiny run.
TINY_RUN = TINY_MODEL + ["--batch-size", "8", "--eval-iters", "2", "--dtype", "float32"]
TINY_RUN += ["--sample-chars", "0"]


def write_corpus(path: Path, n_chars: int = 20_000, seed: int = 0) -> Path:
    """Made-up 'plays': few words, so a tiny model learns them within a few dozen steps."""
    rng = random.Random(seed)
    words = ["thou", "art", "my", "lord", "and", "the", "king", "shall", "speak", "not"]
    lines = []
    while sum(map(len, lines)) < n_chars:
        name = rng.choice(["KING", "QUEEN", "FOOL"])
        lines.append(f"{name}:\n" + " ".join(rng.choice(words) for _ in range(8)) + ".\n\n")
    path.write_text("".join(lines)[:n_chars], encoding="utf-8")
    return path


def make_checkout(folder: Path, shipped: bool = False) -> Path:
    """A copy of the scripts alone, like a fresh clone: its data/ and checkpoints/ are empty, so
    runs that use the default paths touch neither this repository's files nor each other's. With
    shipped, it holds the shipped model (pretrained/) too."""
    folder.mkdir(parents=True, exist_ok=True)
    for script in ("bigram.py", "MODEL.py"):
        shutil.copy(REPO / script, folder / script)
    no_cache = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "scratchgpt", folder / "scratchgpt", ignore=no_cache, dirs_exist_ok=True)
    if shipped:
        shutil.copytree(REPO / "pretrained", folder / "pretrained", dirs_exist_ok=True)
    return folder


def run_script(
    script: str, *args: str, cwd: Path = REPO, env: dict | None = None, repo: Path = REPO
):
    """Run bigram.py or MODEL.py (of repo) in a fresh interpreter; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(repo / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def assert_clean_error(result, *fragments: str) -> None:
    """A user error: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def main_error(main, argv: list[str], capsys) -> str:
    """Run a script's main() in this process (no interpreter start-up: fast), expecting a user
    error: non-zero exit and one `error:` line on stderr (after the progress bar, if training
    began), which is returned."""
    code = main(argv)
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code != 0 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert stderr.rstrip().endswith(errors[0])  # the last word, after any progress bar
    return errors[0]


def fill(folder: Path) -> None:
    """Take every free byte of folder's file system with one file."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for block in (4096, 1):
            try:
                while f.write(b"x" * block):
                    pass
            except OSError:
                pass


def grow(folder: Path) -> None:
    """Give the small_disk fixture's file system room again, as a user frees space."""
    subprocess.run(["mount", "-o", "remount,size=16m", str(folder)], check=True)
