"""Plain-text corpora: characters in, a flat array of token ids out.

A corpus is a 1-D numpy array of token ids plus its vocabulary (the list of characters, sorted).
Ids fit in uint8 when the vocabulary has at most 256 characters, uint16 otherwise: a byte or two
a character, where a Python list of ints costs dozens. Reddit archives are read by reddit.py into
the same Corpus, and training splits it (split_corpus). Neither module imports torch: preparing
a corpus takes the memory of its text, not of a deep-learning library's too (bench.py measures it).
"""

import codecs
import hashlib
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from scratchgpt.cli import UserError
from scratchgpt.files import atomic_file, check_size, unreadable_reason

# The repository's data folder, wherever the scripts are run from.
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DATASET_FILES = {"shakespeare": DATA_DIR / "input.txt", "reddit": DATA_DIR / "reddit.rar"}
DEFAULT_DATASET = "shakespeare"
CACHE_DIR = DATA_DIR / "cache"  # token files built from archives
# A corpus is held in memory several times over while it is read (its bytes, the text, the
# tokens): past this a laptop runs out of memory before training starts.
MAX_CORPUS_BYTES = 4 << 30
SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)


@dataclass
class Corpus:
    tokens: np.ndarray  # 1-D array of token ids (may be a read-only np.memmap)
    vocab: list[str]  # token id -> character

    @cached_property
    def identity(self) -> dict:
        """Its length in characters and a hash of all its tokens: how --resume tells a changed
        corpus (cheap even for a Reddit-sized one: a hash runs at memory speed)."""
        digest = hashlib.sha256(memoryview(np.ascontiguousarray(self.tokens)).cast("B"))
        return {"chars": len(self.tokens), "sha256": digest.hexdigest()}


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id (0 .. vocab_size - 1)."""
    for dtype in (np.uint8, np.uint16):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.uint32)  # more than 65,536 distinct characters: rare, but it happens


def build_vocab(text: str) -> list[str]:
    return sorted(set(text))


def encode(text: str, vocab: list[str]) -> np.ndarray:
    """Map each character to its id, vectorised: one code point array and a binary search."""
    try:
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    except UnicodeEncodeError:  # undecodable bytes from the command line or a file name
        raise UserError("the text is not valid Unicode (undecodable bytes)") from None
    vocab_codepoints = np.array([ord(c) for c in vocab], dtype=np.uint32)
    order = np.argsort(vocab_codepoints)  # the identity for a sorted vocabulary
    positions = np.searchsorted(vocab_codepoints[order], codepoints)
    ids = order[np.minimum(positions, len(vocab) - 1)]
    unknown = vocab_codepoints[ids] != codepoints
    if unknown.any():
        missing = sorted(set(chr(c) for c in codepoints[unknown]))
        raise UserError(f"characters not in the vocabulary: {', '.join(map(repr, missing))}")
    return ids.astype(token_dtype(len(vocab)))


def decode(ids, vocab: list[str]) -> str:
    return "".join(vocab[i] for i in ids)


def default_prompt(vocab: list[str]) -> str:
    """What a sample continues when given nothing: a newline, the start of a line of text."""
    return "\n" if "\n" in vocab else vocab[0]


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
    with atomic_file(path) as f:
        f.write(data)


def wide_encoding(data: bytes) -> str | None:
    """The iconv name of UTF-16 or UTF-32 text (what Windows tools call 'Unicode'): from its
    byte-order mark, else from where its NUL bytes fall; None for any other text."""
    marks = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
             (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))  # fmt: skip
    for mark, name in marks:  # UTF-32's little-endian mark begins with UTF-16's: it goes first
        if data.startswith(mark):
            return name
    head = data[:4096]
    if len(head) < 16:
        return None
    for width, name in ((4, "UTF-32"), (2, "UTF-16")):
        # Western text in a wide encoding: every byte of a character but its lowest is NUL.
        mostly_nul = [head[k::width].count(0) > len(head) // (2 * width) for k in range(width)]
        if sum(mostly_nul) == width - 1:
            return name + ("BE" if mostly_nul[0] else "LE")
    return None


def read_text(path: Path, what: str = "corpus", max_bytes: int = MAX_CORPUS_BYTES) -> str:
    """A UTF-8 text file as any editor writes it: a leading byte-order mark (Windows editors add
    one) is dropped, since it is not part of the text; UTF-16 and UTF-32 are refused with how to
    convert them."""
    reason = unreadable_reason(path)
    if reason is not None:
        raise UserError(f"{what} {path} {reason}")
    try:
        check_size(path, what, max_bytes)
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    encoding = wide_encoding(data)
    if encoding is not None:
        raise UserError(
            f"{what} {path} is {encoding} text; save it as UTF-8 (Notepad: Save As, Encoding "
            f"UTF-8) or convert it: iconv -f {encoding} -t UTF-8 {path} > {path.stem}-utf8.txt"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def load_text_corpus(path: Path, clean: bool = True) -> Corpus:
    """A whole UTF-8 text file as tokens; its vocabulary is its sorted set of characters.
    clean turns Windows (CRLF) and old Mac (CR) line ends into LF, so that '\r' is not a
    character; without it the text is kept exactly as written."""
    text = read_text(path)
    if clean:
        text = "".join(normalize_newlines([text]))
    if not text:
        raise UserError(f"corpus {path} is empty")
    vocab = build_vocab(text)
    return Corpus(encode(text, vocab), vocab)


def adopt_vocab(data: Corpus, vocab: list[str]) -> tuple[Corpus, list[str]]:
    """data re-encoded so that vocab's characters keep their ids (a trained model's), with the
    characters vocab lacks appended after them. Returns that corpus and the appended characters."""
    if data.vocab == vocab:
        return data, []  # nothing to do: a memory-mapped corpus stays on disk
    known = set(vocab)
    added = [c for c in data.vocab if c not in known]
    new_vocab = list(vocab) + added
    new_id = {c: i for i, c in enumerate(new_vocab)}
    mapping = np.array([new_id[c] for c in data.vocab], dtype=token_dtype(len(new_vocab)))
    return Corpus(mapping[data.tokens], new_vocab), added


def split_corpus(tokens: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """First 90% for training, last 10% for validation (slices: no copy, memmaps stay on disk)."""
    n_train = int(len(tokens) * (1 - val_fraction))
    return tokens[:n_train], tokens[n_train:]


def normalize_newlines(pieces: Iterable[str]) -> Iterator[str]:
    """CRLF and lone CR to LF. A piece's final CR waits: the next piece may start with LF."""
    carry = ""
    for piece in pieces:
        text = carry + piece
        carry = "\r" if text.endswith("\r") else ""
        text = text[: len(text) - len(carry)]
        yield text.replace("\r\n", "\n").replace("\r", "\n")
    yield "\n" if carry else ""
