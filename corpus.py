"""Text corpora for ScratchGPT: characters in, a flat array of token ids out.

A corpus is a 1-D numpy array of token ids plus its vocabulary (the list of characters, sorted).
Ids fit in uint8 when the vocabulary has at most 256 characters, uint16 otherwise, so Tiny
Shakespeare costs 1 MB in memory instead of the ~40 MB of a Python list of ints.
"""

import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)

DEFAULT_MAX_VOCAB = 256  # Reddit: the most frequent characters kept (see load_reddit)


class UserError(Exception):
    """A problem with the user's input or environment: shown as one line, never a traceback."""


@dataclass
class Corpus:
    tokens: np.ndarray  # 1-D array of token ids (may be a read-only np.memmap)
    vocab: list[str]  # token id -> character


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 256 else np.uint16)


def build_vocab(text: str) -> list[str]:
    return sorted(set(text))


def encode(text: str, vocab: list[str]) -> np.ndarray:
    """Map each character to its id, vectorised: one code point array and a binary search."""
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocab_codepoints = np.array([ord(c) for c in vocab], dtype=np.uint32)  # sorted, like vocab
    ids = np.searchsorted(vocab_codepoints, codepoints)
    ids = np.minimum(ids, len(vocab) - 1)
    unknown = vocab_codepoints[ids] != codepoints
    if unknown.any():
        missing = sorted(set(chr(c) for c in codepoints[unknown]))
        raise UserError(f"characters not in the vocabulary: {', '.join(map(repr, missing))}")
    return ids.astype(token_dtype(len(vocab)))


def decode(ids, vocab: list[str]) -> str:
    return "".join(vocab[i] for i in ids)


def download_shakespeare(path: Path) -> None:
    """Fetch Tiny Shakespeare to `path`, atomically: a broken download never looks like a corpus."""
    print(f"{path} not found, downloading Tiny Shakespeare from {SHAKESPEARE_URL}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as response:
            data = response.read()
    except OSError as e:
        raise UserError(
            f"{path} is missing and Tiny Shakespeare could not be downloaded ({e}); "
            f"save {SHAKESPEARE_URL} as {path} and run again"
        ) from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"corpus {path} not found") from None
    except UnicodeDecodeError as e:
        raise UserError(f"corpus {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise UserError(f"cannot read corpus {path}: {e.strerror}") from None


def load_text_corpus(path: Path) -> Corpus:
    """A whole UTF-8 text file as tokens; its vocabulary is its sorted set of characters."""
    text = read_text(path)
    if not text:
        raise UserError(f"corpus {path} is empty")
    vocab = build_vocab(text)
    return Corpus(encode(text, vocab), vocab)


def split_corpus(tokens: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """First 90% for training, last 10% for validation (slices: no copy, memmaps stay on disk)."""
    n_train = int(len(tokens) * (1 - val_fraction))
    return tokens[:n_train], tokens[n_train:]
