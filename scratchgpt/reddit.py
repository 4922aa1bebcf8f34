"""Reddit comments from a RAR archive (or a big text file) as a corpus, streamed, never held whole.

Members are decoded a few MB at a time, cleaned, counted (pass 1), then encoded (pass 2) into a
uint16 token file in the cache, which training reads through np.memmap.
"""

import codecs
import hashlib
import html
import json
import re
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import rarfile

from scratchgpt.corpus import Corpus, normalize_newlines
from scratchgpt.files import (
    UserError,
    atomic_file,
    exclusive_lock,
    remove_stale_temps,
    unreadable_reason,
)

# The most frequent characters kept: the rest (zalgo accents, Braille art, rare emoji) are too
# rare for a training run to learn, and become one symbol (docs/reddit.md has the counts).
DEFAULT_MAX_VOCAB = 256

CHUNK_BYTES = 1 << 20  # a few copies of one chunk are in flight at a time, whatever the corpus size
SNIFF_BYTES = 8192  # how much of a member decides whether it is text
REPLACEMENT = "\ufffd"  # stands for invalid UTF-8 bytes and for characters outside the vocabulary
INVALID_BYTES = slice(0xDC80, 0xDD00)  # the lone surrogates "surrogateescape" decodes them to
NO_BACKEND = (
    "this archive's members are compressed and no RAR tool was found: install unar "
    "(Debian/Ubuntu: sudo apt install unar; macOS: brew install unar; Windows: install 7-Zip "
    "and add its folder to PATH), see the README"
)


def looks_binary(head: bytes) -> bool:
    """NUL bytes, or more than a quarter of the bytes not UTF-8: an image, a zip, UTF-16..."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
    valid = len(decoder.decode(head).encode("utf-8"))
    cut = len(decoder.getstate()[0])  # a character the sample cuts short is not invalid
    return b"\0" in head or len(head) - valid - cut > len(head) // 4


def decode_utf8(f: BinaryIO, head: bytes = b"") -> Iterator[str]:
    """A file's text, CHUNK_BYTES at a time. A character split between chunks is decoded whole;
    invalid bytes become lone surrogates, counted and replaced later (see count_characters)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="surrogateescape")  # BOM dropped
    chunk = head or f.read(CHUNK_BYTES)
    while chunk:
        yield decoder.decode(chunk)
        chunk = f.read(CHUNK_BYTES)
    yield decoder.decode(b"", final=True)


def is_rar(path: Path) -> bool:
    """By its name, or by its first bytes (read only from a regular file: a pipe could block)."""
    return path.suffix.lower() == ".rar" or (path.is_file() and rarfile.is_rarfile(str(path)))


def archive_texts(path: Path, skipped: list[str]) -> Iterator[str]:
    """The text of the archive's text members, in archive order, streamed through rarfile.

    Nothing is extracted: a member named ../x or a symlink cannot write anywhere. Members that
    are not text (by content) and links are left out and listed in skipped.
    """
    # errors="strict": a missing volume or a truncated header is an error, not a shorter archive.
    with rarfile.RarFile(str(path), errors="strict") as archive:
        if archive.needs_password():
            raise rarfile.PasswordRequired(path)
        if any(info.compress_type != rarfile.RAR_M0 for info in archive.infolist()):
            rarfile.tool_setup()  # no backend: fail now, not after reading half the archive
        for info in archive.infolist():
            if info.is_dir():
                continue
            if not info.is_file():
                skipped.append(f"{info.filename!r} (link)")
                continue
            with archive.open(info) as f:
                head = f.read(SNIFF_BYTES)
                if looks_binary(head):
                    skipped.append(f"{info.filename!r} (not text)")
                    continue
                yield from decode_utf8(f, head)


def source_texts(path: Path, skipped: list[str]) -> Iterator[str]:
    """The text of a RAR archive's text members, or of a plain UTF-8 text file."""
    if is_rar(path):
        yield from archive_texts(path, skipped)
        return
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
        if looks_binary(head):
            raise UserError(f"{path} is neither a RAR archive nor UTF-8 text")
        yield from decode_utf8(f, head)


def first_volume(path: Path) -> str:
    """The first volume of path's set, numbered as path is: x.part07.rar -> x.part01.rar."""
    match = re.search(r"\.part(\d+)\.rar$", path.name, flags=re.IGNORECASE)
    if match is None:
        return ".part1.rar"
    digits = match.group(1)
    return path.name[: match.start(1)] + "1".zfill(len(digits)) + path.name[match.end(1) :]


@contextmanager
def read_errors(path: Path) -> Iterator[None]:
    """rarfile's and the file system's exceptions, as one-line UserErrors."""
    try:
        yield
    except rarfile.NeedFirstVolume:
        raise UserError(
            f"{path} is not the first volume of its set: pass the first one ({first_volume(path)})"
        ) from None
    except rarfile.PasswordRequired:
        raise UserError(
            f"{path} is encrypted; extract it with its password and pass the text with --data"
        ) from None
    except rarfile.NotRarFile:
        raise UserError(f"{path} is not a RAR archive") from None
    except rarfile.RarCannotExec:
        raise UserError(NO_BACKEND) from None
    except rarfile.Error as e:
        if "next volume" in str(e):  # rarfile's words when a volume is missing
            raise UserError(f"{path}: a volume is missing ({e})") from None
        raise UserError(f"{path} is truncated or corrupt ({e})") from None
    except OSError as e:
        raise UserError(f"{e.filename or path}: {e.strerror}") from None


# -----------------------------------------------------------------------------
# Cleaning. Each step is a generator over text pieces that gives exactly what it would
# give for the whole text at once: what could change with the next piece waits for it.

PLACEHOLDERS = ("[deleted]", "[removed]")  # the bodies of deleted comments
ENTITY_WINDOW = 40  # longer than any entity: &CounterClockwiseContourIntegral; is 33 characters
CLEANING = ("newlines", "placeholders", "entities")  # the steps, in the order they run


def drop_placeholders(pieces: Iterable[str]) -> Iterator[str]:
    """Drop the comment bodies that are exactly [deleted] or [removed], with their separator.

    Bodies are paragraphs, separated by a blank line. A piece's last paragraph may go on in the
    next piece, so its last 11 characters wait: enough to see a blank line that straddles the two,
    and, even if the last one starts that blank line, more than a placeholder: a long paragraph
    is never mistaken for one.
    """
    tail = max(map(len, PLACEHOLDERS)) + 2
    pending = ""
    for piece in pieces:
        *paragraphs, pending = (pending + piece).split("\n\n")
        kept = [p + "\n\n" for p in paragraphs if p not in PLACEHOLDERS]
        if len(pending) > tail:
            kept.append(pending[:-tail])
            pending = pending[-tail:]
        yield "".join(kept)
    if pending not in PLACEHOLDERS:
        yield pending


def unescape_entities(pieces: Iterable[str]) -> Iterator[str]:
    """HTML entities to characters (&gt; to >). An & near the end of a piece waits with what
    follows it, as its entity may end in the next piece; what comes before it is final, as no
    entity contains a second &."""
    carry = ""
    for piece in pieces:
        text = carry + piece
        cut = text.rfind("&", max(0, len(text) - ENTITY_WINDOW))
        cut = len(text) if cut < 0 else cut
        carry = text[cut:]
        yield html.unescape(text[:cut])
    yield html.unescape(carry)


def cleaned(pieces: Iterable[str], steps: Collection[str] = CLEANING) -> Iterator[str]:
    """Apply the chosen cleaning steps: newlines first, so that CRLF blank lines separate bodies."""
    pipeline = {
        "newlines": normalize_newlines,
        "placeholders": drop_placeholders,
        "entities": unescape_entities,
    }
    for step in CLEANING:
        if step in steps:
            pieces = pipeline[step](pieces)
    yield from pieces


# -----------------------------------------------------------------------------
# Vocabulary and tokens, vectorised with numpy


def code_points(text: str) -> np.ndarray:
    # surrogatepass: invalid bytes, decoded as lone surrogates, survive as code points too
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


def count_characters(pieces: Iterable[str]) -> tuple[np.ndarray, int]:
    """How often each code point occurs, and how many invalid bytes were replaced by U+FFFD."""
    counts = np.zeros(0x110000, dtype=np.int64)
    for piece in pieces:
        piece_counts = np.bincount(code_points(piece))
        counts[: len(piece_counts)] += piece_counts
    invalid_bytes = int(counts[INVALID_BYTES].sum())
    counts[ord(REPLACEMENT)] += invalid_bytes
    counts[INVALID_BYTES] = 0
    return counts, invalid_bytes


def choose_vocab(counts: np.ndarray, max_vocab: int) -> tuple[list[str], float]:
    """Every character if there are at most max_vocab; else the max_vocab - 1 most frequent and
    REPLACEMENT, which stands for the rest. Returns the vocabulary (sorted) and the share of
    characters kept as themselves."""
    present = np.flatnonzero(counts)  # sorted by code point
    if len(present) <= max_vocab:
        return [chr(c) for c in present], 1.0
    candidates = present[present != ord(REPLACEMENT)]
    by_frequency = candidates[np.lexsort((candidates, -counts[candidates]))]  # ties: lower first
    kept = np.sort(np.append(by_frequency[: max_vocab - 1], ord(REPLACEMENT)))
    return [chr(c) for c in kept], counts[kept].sum() / counts.sum()


def write_tokens(pieces: Iterable[str], vocab: list[str], f: BinaryIO) -> tuple[int, str]:
    """Write each character's id as uint16, through a lookup table indexed by code point: what
    is not in the vocabulary (rare characters, invalid bytes) becomes REPLACEMENT. Returns the
    number of tokens written and the SHA-256 of the bytes written, as file_sha256 would give."""
    lookup = np.full(0x110000, vocab.index(REPLACEMENT) if REPLACEMENT in vocab else 0, np.uint16)
    lookup[[ord(c) for c in vocab]] = np.arange(len(vocab))
    written, digest = 0, hashlib.sha256()
    for piece in pieces:
        ids = lookup[code_points(piece)].tobytes()
        f.write(ids)
        digest.update(ids)
        written += len(ids) // 2
    return written, digest.hexdigest()


# -----------------------------------------------------------------------------
# The token cache. <name>-<key>.tokens holds the uint16 ids, <name>-<key>.json the
# vocabulary and the report; the key hashes the source's identity and the settings.

CACHE_VERSION = 1  # bump when the cleaning or the file format changes


def fingerprint(path: Path) -> dict:
    """Size, mtime and a hash of the first and last MB: cheap, even for gigabytes."""
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, stat.st_size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}


def volume_paths(path: Path) -> list[Path]:
    """Every file the data lives in: the volumes of a multi-volume archive, else just path."""
    if not is_rar(path):
        return [path]
    with read_errors(path), rarfile.RarFile(str(path), errors="strict") as archive:
        return [Path(v) for v in archive.volumelist()]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(CHUNK_BYTES):
            digest.update(piece)
    return digest.hexdigest()


def record_sha256(meta: dict) -> str:
    """The hash of a cache's metadata, but for the hash itself: an edited record shows."""
    rest = {key: value for key, value in meta.items() if key != "record_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode("utf-8")).hexdigest()


def load_cached(tokens_path: Path, meta_path: Path, source: Path) -> Corpus | None:
    """The cached corpus, if its build finished (the metadata is written last), neither file
    was changed since (both are checked by content: an edited vocabulary or token would train a
    model that nothing can read), and the other volumes of a multi-volume archive are unchanged."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("record_sha256") != record_sha256(meta):
            return None
        if tokens_path.stat().st_size != 2 * meta["num_tokens"]:
            return None
        if file_sha256(tokens_path) != meta["tokens_sha256"]:
            return None
        for name, identity in meta["volumes"].items():
            if fingerprint(source.parent / name) != identity:
                return None
    except (OSError, ValueError, KeyError):
        return None
    return Corpus(np.memmap(tokens_path, dtype=np.uint16, mode="r"), meta["vocab"])


def build_cache(
    path: Path, tokens_path: Path, meta_path: Path, steps: tuple[str, ...], max_vocab: int
) -> None:
    """Two passes over the source, each streamed: count the characters, then write the tokens."""
    print(f"preparing {path}: reading it twice, then caching the tokens in {tokens_path}")
    rarfile.HACK_TMP_DIR = str(tokens_path.parent)  # rarfile's temporary copies stay in the cache
    skipped: list[str] = []
    with read_errors(path):
        counts, invalid_bytes = count_characters(cleaned(source_texts(path, skipped), steps))
    if skipped:
        print(f"skipped archive members: {', '.join(skipped)}")
    total = int(counts.sum())
    if total == 0:
        raise UserError(f"{path} contains no text" + (" (only skipped members)" if skipped else ""))
    if invalid_bytes:
        print(f"replaced {invalid_bytes:,} invalid UTF-8 bytes with {REPLACEMENT}")
    vocab, coverage = choose_vocab(counts, max_vocab)
    distinct = np.count_nonzero(counts)
    print(
        f"vocabulary: {len(vocab)} of {distinct:,} distinct characters, covering {coverage:.4%} "
        f"of {total:,}" + (f"; the rest become {REPLACEMENT}" if coverage < 1 else "")
    )
    with read_errors(path), atomic_file(tokens_path) as f:
        written, tokens_sha256 = write_tokens(cleaned(source_texts(path, []), steps), vocab, f)
        if written != total:
            raise UserError(f"{path} changed while it was being read; run again")
    meta = {
        "source": str(path),
        "volumes": {v.name: fingerprint(v) for v in volume_paths(path)},
        "settings": {"clean": list(steps), "max_vocab": max_vocab, "version": CACHE_VERSION},
        "num_tokens": total,
        "vocab": vocab,
        "coverage": coverage,
        "invalid_bytes": invalid_bytes,
        "skipped": skipped,
        "tokens_sha256": tokens_sha256,
    }
    meta["record_sha256"] = record_sha256(meta)
    with atomic_file(meta_path) as f:
        f.write(json.dumps(meta, indent=1).encode("utf-8"))


def cleaning_steps(clean: bool | Collection[str]) -> tuple[str, ...]:
    if clean is True or clean is False:
        return CLEANING if clean else ()
    unknown = set(clean) - set(CLEANING)
    if unknown:
        raise UserError(f"unknown cleaning steps {sorted(unknown)}; choose from {CLEANING}")
    return tuple(step for step in CLEANING if step in clean)


def load_reddit(
    path: Path,
    cache_dir: Path,
    clean: bool | Collection[str] = True,
    max_vocab: int = DEFAULT_MAX_VOCAB,
) -> Corpus:
    """Reddit comments from a RAR archive (or a UTF-8 text file) as a memory-mapped uint16 corpus.

    The first run streams the source into cache_dir; later runs with the same source and settings
    map the cached tokens without reading it. clean: True (all steps), False, or some of CLEANING.
    """
    if not 2 <= max_vocab <= 65535:
        raise UserError(f"--max-vocab must be between 2 and 65535 (uint16 ids), got {max_vocab}")
    steps = cleaning_steps(clean)
    reason = unreadable_reason(path)
    if reason == "not found":
        raise UserError(
            f"{path} not found: put the Reddit comments archive there, or pass --data PATH "
            "(a .rar, the first volume of a set, or a UTF-8 text file)"
        )
    if reason is not None:
        raise UserError(f"{path} {reason}")
    if cache_dir.exists() and not cache_dir.is_dir():
        raise UserError(f"the token cache folder {cache_dir} is a file: move it away and run again")
    with read_errors(path):
        source = fingerprint(path)
    settings = {"source": source, "clean": steps, "max_vocab": max_vocab, "version": CACHE_VERSION}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    tokens_path = cache_dir / f"{path.stem}-{key}.tokens"
    meta_path = tokens_path.with_suffix(".json")
    corpus = load_cached(tokens_path, meta_path, path)
    if corpus is not None:
        print(f"using cached tokens {tokens_path} ({len(corpus.tokens):,} tokens)")
        return corpus
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the token cache folder {cache_dir}: {e.strerror}") from None
    with exclusive_lock(tokens_path, "token cache"):
        for leftover in (tokens_path, meta_path):  # of a build that was killed
            remove_stale_temps(leftover, keep=[path])
        build_cache(path, tokens_path, meta_path, steps, max_vocab)
    corpus = load_cached(tokens_path, meta_path, path)
    if corpus is None:  # e.g. the archive was modified during the build
        raise UserError(f"{path} changed while it was being read; run again")
    return corpus
