"""Fixtures shared by the test files."""

import pytest
from support import TINY_RUN, write_corpus

import bigram


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
