"""Fixtures shared by the test files."""

import os

import pytest
from support import TINY_RUN, write_corpus

import bigram


@pytest.fixture(scope="session", autouse=True)
def machine_cache(tmp_path_factory):
    """The machine's measurements (scratchgpt/machine.py) go to a cache folder of the test
    session's own, never the user's: set in the environment, so scripts run as subprocesses use
    it too."""
    folder = tmp_path_factory.mktemp("cache")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def play_model(tmp_path_factory):
    """A tiny model of write_corpus's plays (KING, QUEEN and FOOL speak lines of eight words),
    trained until its context matters (val loss 0.9, below the corpus's bigram entropy)."""
    folder = tmp_path_factory.mktemp("play-model")
    corpus = write_corpus(folder / "corpus.txt")
    out = folder / "model.pt"
    flags = ["--max-iters", "60", "--eval-interval", "60", "--lr", "3e-2", "--warmup-iters", "2"]
    assert bigram.main(["--data", str(corpus), "--out", str(out), *flags, *TINY_RUN]) == 0
    return out
