"""Tests for reddit.load_reddit: reading RAR archives safely, cleaning, the vocabulary, the cache.

Archives are written on the fly by rar_writer (stored RAR5). The compressed ones, and the
multi-volume, encrypted and traversal archives, are real fixtures in ../shared/fixtures/rar
(beside the repository, never copied into it); those tests skip where it is absent.
"""

import json
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rarfile
from rar_writer import write_rar
from support import make_checkout

from scratchgpt import corpus, reddit
from scratchgpt.cli import UserError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "rar"
COMMENTS = SHARED / "data" / "reddit" / "comments.txt"
STEST = "".join(f"{i:03d}\n" for i in range(512))  # stest1.txt and stest2.txt: 000\n001\n...


def has_rar_backend() -> bool:
    try:
        rarfile.tool_setup()
    except rarfile.RarCannotExec:
        return False
    return True


needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"{FIXTURES} not found (shared test data beside the repository)"
)
needs_backend = pytest.mark.skipif(
    not has_rar_backend(), reason="no RAR backend (unar, unrar, 7-Zip or bsdtar) on PATH"
)


def load(path: Path, tmp_path: Path, **kwargs) -> corpus.Corpus:
    return reddit.load_reddit(path, tmp_path / "cache", **kwargs)


def text_of(c: corpus.Corpus) -> str:
    return corpus.decode(c.tokens, c.vocab)


def cache_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").glob("*"))


# -----------------------------------------------------------------------------
# Reading archives built by the test writer

MIXED = [
    ("a/one.txt", b"first member\n"),
    ("a/b/two.txt", "Привет, мир 😀 naïve\n".encode()),
    ("picture.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))),
    ("notes.dat", b"text, whatever the extension\n"),
    ("fake.txt", bytes(range(256)) * 4),  # binary, whatever the extension
    ("папка/crlf.txt", b"one\r\ntwo\rthree &gt; &amp;amp; &#128512;\r\n"),
]


def test_text_members_in_archive_order_binary_skipped(tmp_path, capsys):
    write_rar(tmp_path / "mixed.rar", MIXED)
    c = load(tmp_path / "mixed.rar", tmp_path)
    expected = "first member\nПривет, мир 😀 naïve\ntext, whatever the extension\n"
    assert text_of(c) == expected + "one\ntwo\nthree > &amp; 😀\n"
    assert isinstance(c.tokens, np.memmap) and c.tokens.dtype == np.uint16
    assert not c.tokens.flags.writeable
    assert c.vocab == sorted(c.vocab)
    out = capsys.readouterr().out
    assert "skipped archive members: 'picture.png' (not text), 'fake.txt' (not text)" in out


def test_no_clean_keeps_text_exactly(tmp_path):
    write_rar(tmp_path / "mixed.rar", MIXED)
    c = load(tmp_path / "mixed.rar", tmp_path, clean=False)
    texts = [data for name, data in MIXED if name not in ("picture.png", "fake.txt")]
    assert text_of(c) == b"".join(texts).decode()


def test_plain_text_file(tmp_path):
    path = tmp_path / "comments.txt"
    path.write_bytes(b"a &lt;b&gt;\r\n\r\n[removed]\r\n\r\nc\n")
    assert text_of(load(path, tmp_path)) == "a <b>\n\nc\n"


def test_invalid_utf8_replaced_and_counted(tmp_path, capsys):
    members = [("bad.txt", b"ok \xff\xfe in a caf\xe9\n"), ("cut.txt", b"cut short: \xe2\x82")]
    write_rar(tmp_path / "bad.rar", members + [("next.txt", b"\xacnext\n")])
    c = load(tmp_path / "bad.rar", tmp_path)
    # A character cut at the end of a member does not take bytes from the next member.
    assert text_of(c) == "ok \ufffd\ufffd in a caf\ufffd\ncut short: \ufffd\ufffd\ufffdnext\n"
    assert "replaced 6 invalid UTF-8 bytes" in capsys.readouterr().out


def test_placeholder_bodies_dropped(tmp_path):
    text = "[deleted]\n\na\n\n[deleted]\n\n[removed]\n\nb [deleted]\n\n[deleted]x\n\n\n[removed]"
    path = tmp_path / "bodies.txt"
    path.write_text(text)
    # "\n[removed]" follows three newlines: it is not exactly a placeholder, so it stays.
    assert text_of(load(path, tmp_path)) == "a\n\nb [deleted]\n\n[deleted]x\n\n\n[removed]"


def test_cleaning_steps_switch_off_one_by_one(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("&gt;\r\n\r\n[deleted]\r\n\r\nx")
    assert text_of(load(path, tmp_path, clean=["newlines"])) == "&gt;\n\n[deleted]\n\nx"
    assert text_of(load(path, tmp_path, clean=["entities"])) == ">\r\n\r\n[deleted]\r\n\r\nx"
    assert text_of(load(path, tmp_path, clean=["newlines", "placeholders"])) == "&gt;\n\nx"
    with pytest.raises(UserError, match="unknown cleaning steps"):
        load(path, tmp_path, clean=["html"])


# Every boundary a chunk can cut: entities, CRLF, lone CR, placeholders, runs of blank lines.
TRICKY = (
    "[deleted]\r\n\r\nfish &amp; chips &gt;&gt; &CounterClockwiseContourIntegral; &#128512;"
    "&#x1F600;&amp\r\r\n\n[removed]\n\nAT&T &notit; &ampx\n\n\n[deleted]\n\n\n\n[deleted]"
    "\r\n\r\n" + "long paragraph without a blank line " * 3 + "[deleted]\n\n[removed]"
)


def test_cleaning_is_exact_across_chunk_boundaries():
    whole = "".join(reddit.cleaned([TRICKY]))
    # After three newlines, "\n[removed]" is not exactly a placeholder paragraph: it stays.
    assert whole == (
        "fish & chips >> \u2233 😀😀&\n\n\n[removed]\n\nAT&T ¬it; &x\n\n\n[deleted]\n\n\n\n"
        + "long paragraph without a blank line " * 3
        + "[deleted]\n\n"
    )
    for i in range(len(TRICKY) + 1):
        assert "".join(reddit.cleaned([TRICKY[:i], TRICKY[i:]])) == whole, i
    assert "".join(reddit.cleaned(list(TRICKY))) == whole  # one character at a time
    for step in reddit.CLEANING:
        alone = "".join(reddit.cleaned([TRICKY], [step]))
        assert "".join(reddit.cleaned(list(TRICKY), [step])) == alone, step


def test_decoding_is_exact_across_chunk_boundaries(tmp_path, monkeypatch):
    data = ("héllo 😀 &gt; wörld\r\n\r\n[deleted]\r\n\r\n" * 20).encode() + b"\xff\xe2\x82 end"
    path = tmp_path / "multi.txt"
    path.write_bytes(data)
    whole = load(path, tmp_path / "whole")
    for size in (1, 2, 3, 5):
        monkeypatch.setattr(reddit, "CHUNK_BYTES", size)
        monkeypatch.setattr(reddit, "SNIFF_BYTES", size)
        small = load(path, tmp_path / f"chunks{size}")
        assert small.vocab == whole.vocab and np.array_equal(small.tokens, whole.tokens), size


def test_max_vocab_keeps_most_frequent(tmp_path, capsys):
    path = tmp_path / "v.txt"
    path.write_text("a" * 10 + "b" * 5 + "c" * 3 + "d" + "\ufffd")
    c = load(path, tmp_path, max_vocab=3)
    assert c.vocab == ["a", "b", "\ufffd"]  # sorted; d and c became the replacement character
    assert text_of(c) == "a" * 10 + "b" * 5 + "\ufffd" * 5
    assert (
        "vocabulary: 3 of 5 distinct characters, covering 80.0000% of 20" in capsys.readouterr().out
    )
    assert load(path, tmp_path, max_vocab=5).vocab == ["a", "b", "c", "d", "\ufffd"]
    for bad in (1, 65536):
        with pytest.raises(UserError, match="--max-vocab must be between 2 and 65535"):
            load(path, tmp_path, max_vocab=bad)


# -----------------------------------------------------------------------------
# Errors, and safety


def test_missing_source(tmp_path):
    with pytest.raises(UserError, match=r"reddit.rar not found: put the Reddit comments archive"):
        load(tmp_path / "reddit.rar", tmp_path)
    assert not (tmp_path / "cache").exists()


def test_not_an_archive(tmp_path):
    (tmp_path / "text.rar").write_text("not an archive\n")
    with pytest.raises(UserError, match="is not a RAR archive"):
        load(tmp_path / "text.rar", tmp_path)
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00\x00" * 100)
    with pytest.raises(UserError, match="neither a RAR archive nor UTF-8 text"):
        load(tmp_path / "image.png", tmp_path)


@pytest.mark.parametrize(
    "members",
    [[("image.bin", bytes(range(256)))], [("gone.txt", b"[deleted]")], [("empty.txt", b"")]],
)
def test_archive_without_text(tmp_path, members):
    write_rar(tmp_path / "notext.rar", members)
    with pytest.raises(UserError, match="contains no text"):
        load(tmp_path / "notext.rar", tmp_path)
    assert cache_files(tmp_path) == []


def test_truncated_or_corrupt_archive_leaves_no_cache(tmp_path):
    path = tmp_path / "cut.rar"
    write_rar(path, [("a.txt", b"hello\n" * 1000), ("b.txt", b"world\n" * 1000)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])  # b.txt's data ends early
    with pytest.raises(UserError, match="is truncated or corrupt"):
        load(path, tmp_path)
    assert cache_files(tmp_path) == []
    corrupt = bytearray(data)
    corrupt[len(data) // 4] ^= 0xFF  # a flipped byte in a.txt: its CRC32 fails
    path.write_bytes(bytes(corrupt))
    with pytest.raises(UserError, match="is truncated or corrupt"):
        load(path, tmp_path)
    assert cache_files(tmp_path) == []


def snapshot(folder: Path) -> set[tuple[Path, int]]:
    return {(p, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def changed_since(before: set, folder: Path) -> set[Path]:
    return {p for p, _ in snapshot(folder) ^ before}


def test_traversal_names_and_symlinks_create_nothing(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a naive extraction of "../escape.txt" would land in tmp_path
    path = work / "evil.rar"
    members = [("up/pwned.txt", b"pwned\n"), ("../escape.txt", b"escaped\n")]
    write_rar(path, members, symlinks=[("up", ".."), ("abs", "/etc/passwd")])
    before = snapshot(tmp_path.parent)  # this test's folder and the other tests' beside it
    c = reddit.load_reddit(path, work / "cache")
    assert text_of(c) == "pwned\nescaped\n"  # the text is read; nothing is extracted
    assert "'up' (link), 'abs' (link)" in capsys.readouterr().out
    changed = changed_since(before, tmp_path.parent)
    assert changed and all(p == work or p.is_relative_to(work / "cache") for p in changed)


# -----------------------------------------------------------------------------
# Real archives: compressed (through the external backend), multi-volume, encrypted, hostile


@needs_fixtures
@needs_backend
@pytest.mark.parametrize("name", ["rar3-solid.rar", "rar5-crc.rar", "seektest.rar"])
def test_compressed_fixtures(tmp_path, name):
    assert text_of(load(FIXTURES / name, tmp_path)) == STEST + STEST
    names = cache_files(tmp_path)  # rarfile's temporary copies of members are gone
    assert len(names) == 2 and names[0].endswith(".json") and names[1].endswith(".tokens")


@needs_fixtures
def test_multi_volume_read_from_first_volume(tmp_path):
    first = FIXTURES / "rar5-vols.part1.rar"
    with rarfile.RarFile(str(first)) as archive:
        expected = b"".join(archive.read(n) for n in ("vols/bigfile.txt", "vols/smallfile.txt"))
    c = load(first, tmp_path, clean=False)
    assert len(c.tokens) == 205_000 + 2_050
    assert text_of(c) == expected.decode()


@needs_fixtures
def test_multi_volume_errors(tmp_path):
    with pytest.raises(UserError, match="is not the first volume of its set"):
        load(FIXTURES / "rar5-vols.part2.rar", tmp_path)
    for part in ("part1", "part2"):  # part3 is missing
        shutil.copy(FIXTURES / f"rar5-vols.{part}.rar", tmp_path)
    with pytest.raises(UserError, match="a volume is missing"):
        load(tmp_path / "rar5-vols.part1.rar", tmp_path)
    assert cache_files(tmp_path) == []


@needs_fixtures
def test_changed_later_volume_rebuilds(tmp_path, capsys):
    for part in ("part1", "part2", "part3"):
        shutil.copy(FIXTURES / f"rar5-vols.{part}.rar", tmp_path)
    first = tmp_path / "rar5-vols.part1.rar"
    load(first, tmp_path)
    load(first, tmp_path)
    assert "using cached tokens" in capsys.readouterr().out
    last = tmp_path / "rar5-vols.part3.rar"
    last.touch()  # a new mtime: the set may have changed
    load(first, tmp_path)
    assert "preparing" in capsys.readouterr().out


@needs_fixtures
@pytest.mark.parametrize("name", ["rar5-psw.rar", "rar5-hpsw.rar"])
def test_encrypted(tmp_path, name):
    with pytest.raises(UserError, match="is encrypted"):
        load(FIXTURES / name, tmp_path)
    assert cache_files(tmp_path) == []


@needs_fixtures
def test_symlink_traversal_fixture(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = snapshot(tmp_path.parent)
    c = reddit.load_reddit(FIXTURES / "rar5-evil-symlink-traversal.rar", work / "cache")
    assert text_of(c).startswith("ZIPSLIP-VIA-SYMLINK")
    changed = changed_since(before, tmp_path.parent)
    assert changed and all(p == work or p.is_relative_to(work / "cache") for p in changed)


@needs_fixtures
def test_truncated_fixture(tmp_path):
    path = tmp_path / "cut.rar"
    path.write_bytes((FIXTURES / "rar5-crc.rar").read_bytes()[:1200])
    with pytest.raises(UserError, match="is truncated or corrupt"):
        load(path, tmp_path)
    assert cache_files(tmp_path) == []


@needs_fixtures
@pytest.mark.parametrize("name", ["rar3-solid.rar", "rar5-crc.rar"])
def test_no_backend(tmp_path, monkeypatch, name):
    monkeypatch.setattr(rarfile, "CURRENT_SETUP", None)
    for tool in ("UNRAR_TOOL", "UNAR_TOOL", "SEVENZIP_TOOL", "SEVENZIP2_TOOL", "BSDTAR_TOOL"):
        monkeypatch.setattr(rarfile, tool, "scratchgpt-no-such-tool")
    with pytest.raises(UserError, match="no RAR tool was found: install unar") as error:
        load(FIXTURES / name, tmp_path)
    assert "\n" not in str(error.value) and "Windows" in str(error.value)
    assert cache_files(tmp_path) == []


# -----------------------------------------------------------------------------
# The cache


def test_second_run_does_not_read_the_archive(tmp_path, monkeypatch, capsys):
    write_rar(tmp_path / "mixed.rar", MIXED)
    first = load(tmp_path / "mixed.rar", tmp_path)
    names = cache_files(tmp_path)
    assert len(names) == 2 and names[0].endswith(".json") and names[1].endswith(".tokens")
    meta = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert meta["num_tokens"] == len(first.tokens) and meta["vocab"] == first.vocab

    def no_reading(*args, **kwargs):
        raise AssertionError("the archive was read")

    monkeypatch.setattr(rarfile, "RarFile", no_reading)
    monkeypatch.setattr(reddit, "source_texts", no_reading)
    capsys.readouterr()
    again = load(tmp_path / "mixed.rar", tmp_path)
    assert "using cached tokens" in capsys.readouterr().out
    assert again.vocab == first.vocab and np.array_equal(again.tokens, first.tokens)


def test_changed_settings_or_archive_rebuild(tmp_path, capsys):
    path = tmp_path / "a.rar"
    write_rar(path, [("a.txt", b"abc &amp; abc\n")])
    assert text_of(load(path, tmp_path)) == "abc & abc\n"
    assert text_of(load(path, tmp_path, clean=False)) == "abc &amp; abc\n"
    assert load(path, tmp_path, max_vocab=3).vocab == [" ", "a", "\ufffd"]  # ties: lower first
    write_rar(path, [("a.txt", b"xyz\n")], mtime=1_800_000_000)
    assert text_of(load(path, tmp_path)) == "xyz\n"
    out = capsys.readouterr().out
    assert out.count("preparing") == 4 and "using cached" not in out
    assert len(cache_files(tmp_path)) == 8  # one token file and one metadata file per build


@pytest.mark.parametrize("edit", ["vocabulary", "tokens"])
def test_an_edited_cache_is_built_again(tmp_path, capsys, edit):
    # Edited by hand or damaged on disk, a cache must not train a model nothing can read.
    path = tmp_path / "comments.txt"
    path.write_bytes(b"the first comment\n\nand the second\n")
    first = load(path, tmp_path)
    first_tokens = np.array(first.tokens)  # a copy: the memory map would show the edit
    meta_path = next((tmp_path / "cache").glob("*.json"))
    tokens_path = meta_path.with_suffix(".tokens")
    if edit == "vocabulary":
        meta = json.loads(meta_path.read_text())
        meta["vocab"][1] = "Z"
        meta_path.write_text(json.dumps(meta))
    else:
        tokens = bytearray(tokens_path.read_bytes())
        tokens[0:2] = (60000).to_bytes(2, "little")  # an id past the vocabulary, same size
        tokens_path.write_bytes(bytes(tokens))
    capsys.readouterr()
    again = load(path, tmp_path)
    assert "preparing" in capsys.readouterr().out
    assert again.vocab == first.vocab and np.array_equal(again.tokens, first_tokens)


def test_interrupted_build_is_not_reused(tmp_path, monkeypatch, capsys):
    path = tmp_path / "a.rar"
    write_rar(path, [("a.txt", b"some text\n" * 100)])
    real_write_tokens = reddit.write_tokens

    def interrupted(pieces, vocab, f):
        f.write(b"\x00\x01" * 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(reddit, "write_tokens", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(path, tmp_path)
    assert cache_files(tmp_path) == []  # the temporary file is removed
    monkeypatch.setattr(reddit, "write_tokens", real_write_tokens)

    # A leftover temporary file (the process was killed) is not mistaken for the cache.
    (tmp_path / "cache" / "a-0123456789abcdef.tokens.xyz.tmp").write_bytes(b"\x00" * 8)
    assert text_of(load(path, tmp_path)) == "some text\n" * 100

    # Killed between the two renames: a token file without metadata is rebuilt.
    meta = next((tmp_path / "cache").glob("a-*.json"))
    meta.unlink()
    capsys.readouterr()
    assert text_of(load(path, tmp_path)) == "some text\n" * 100
    assert "preparing" in capsys.readouterr().out

    # A token file that is shorter than its metadata says is rebuilt too.
    tokens = meta.with_suffix(".tokens")
    tokens.write_bytes(tokens.read_bytes()[:-2])
    assert text_of(load(path, tmp_path)) == "some text\n" * 100
    assert "preparing" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# End to end: bigram.py trains on a RAR of real comments, MODEL.py generates from it


def run_script(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run a script of a fresh checkout in cwd: its data/cache is cwd/data/cache."""
    make_checkout(cwd)
    command = [sys.executable, str(cwd / args[0]), *args[1:]]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not COMMENTS.is_file(), reason=f"{COMMENTS} not found")
def test_train_and_generate_from_rar(tmp_path):
    with COMMENTS.open("rb") as f:
        sample = f.read(2 << 20)
    write_rar(tmp_path / "reddit.rar", [("comments/sample.txt", sample)])
    train_args = "--n-layer 1 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8".split()
    train_args += "--max-iters 5 --eval-interval 5 --eval-iters 2 --device cpu".split()
    trained = run_script(
        tmp_path, "bigram.py", "--dataset", "reddit", "--data", "reddit.rar",
        "--out", "tmp/reddit.pt", *train_args,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "vocabulary: " in trained.stdout and "covering" in trained.stdout
    assert list((tmp_path / "data" / "cache").glob("reddit-*.tokens"))
    generated = run_script(
        tmp_path, "MODEL.py", "--checkpoint", "tmp/reddit.pt", "--num-tokens", "50",
        "--device", "cpu",
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    assert len(generated.stdout) >= 50


def test_bigram_reports_a_missing_archive_in_one_line(tmp_path):
    result = run_script(tmp_path, "bigram.py", "--dataset", "reddit", "--max-iters", "1")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and " not found: put the Reddit" in result.stderr
    assert "data/reddit.rar" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


# -----------------------------------------------------------------------------
# Files: leftovers, folders and names


def test_a_killed_builds_leftovers_are_removed_by_the_next_build(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("some text\n" * 100)
    load(path, tmp_path)
    tokens = next((tmp_path / "cache").glob("a-*.tokens"))
    tokens.with_suffix(".json").unlink()  # the next load rebuilds
    leftovers = [tmp_path / "cache" / f"{tokens.name}.k1lled00.tmp",
                 tmp_path / "cache" / f"{tokens.stem}.json.k1lled00.tmp"]  # fmt: skip
    for leftover in leftovers:
        leftover.write_bytes(b"\x00" * 1000)
    assert text_of(load(path, tmp_path)) == "some text\n" * 100
    assert cache_files(tmp_path) == sorted([tokens.name, tokens.stem + ".json"])


def test_a_cache_folder_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "a.txt").write_text("some text\n" * 100)
    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(UserError, match="token cache folder .* is a file"):
        load(tmp_path / "a.txt", tmp_path)
    assert (tmp_path / "cache").read_text() == "not a folder"


@pytest.mark.parametrize(
    "given, first",
    [("x.part07.rar", "x.part01.rar"), ("x.part2.RAR", "x.part1.RAR"), ("x.r00", ".part1.rar")],
)
def test_the_first_volume_is_named_as_the_user_numbers_volumes(given, first):
    assert reddit.first_volume(Path(given)) == first


def test_preparing_takes_the_same_memory_for_a_corpus_four_times_larger(tmp_path, monkeypatch):
    # Python's own allocations, traced: a streamed build holds a few chunks, never the corpus.
    monkeypatch.setattr(reddit, "CHUNK_BYTES", 64 << 10)
    comment = "a comment with an emoji 🙂 &amp; [deleted]\n\n[deleted]\n\nand a reply\n\n"
    peaks = []
    for copies in (16_000, 64_000):  # about 1 and 4 MB, as wide as 4 bytes a character in Python
        path = tmp_path / f"comments-{copies}.txt"
        path.write_text(comment * copies, encoding="utf-8")
        tracemalloc.start()
        try:
            built = load(path, tmp_path)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert len(built.tokens) > copies * 40
    # 3 MB more text, 6 MB more tokens: less than one chunk more memory (the code-point tables
    # of 9 and 2 MB are the same for both)
    assert peaks[1] - peaks[0] < reddit.CHUNK_BYTES, peaks
