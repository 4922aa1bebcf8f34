"""Helpers shared by the tests: a small synthetic corpus and running the scripts as a user does."""

import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY_MODEL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16"]
TINY_RUN = TINY_MODEL + ["--batch-size", "8", "--eval-iters", "2", "--dtype", "float32"]


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


def run_script(script: str, *args: str, cwd: Path = REPO, env: dict | None = None):
    """Run bigram.py or MODEL.py in a fresh interpreter; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
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
