"""Fixtures shared by the test files."""

import os
import shutil
import subprocess

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


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 64 KiB (a tmpfs), to fill as a disk fills. Mounting needs root: the
    tests that use it are skipped elsewhere, and simulate the same failure beside it."""
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root on Linux")
    folder = tmp_path / "disk"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)]
    result = subprocess.run(mount, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
