"""Plain-text corpora: reading, line ends, the vocabulary and its ids."""

import subprocess
import sys

import numpy as np
import pytest
from support import REPO

from scratchgpt import corpus, reddit
from scratchgpt.cli import UserError


def test_a_text_corpus_with_more_than_65536_characters_keeps_every_id(tmp_path):
    text = "".join(map(chr, range(0x10000, 0x10000 + 70_000)))  # 70,000 distinct, no surrogates
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    c = corpus.load_text_corpus(tmp_path / "wide.txt")
    assert len(c.vocab) == 70_000 and c.tokens.dtype == np.uint32
    assert corpus.decode(c.tokens, c.vocab) == text


# -----------------------------------------------------------------------------
# Your own text, from any system


def test_a_byte_order_mark_is_not_a_character(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffhello world\n".encode("utf-8"))
    c = corpus.load_text_corpus(tmp_path / "bom.txt")
    assert "\ufeff" not in c.vocab and corpus.decode(c.tokens, c.vocab) == "hello world\n"
    with (tmp_path / "bom.txt").open("rb") as f:  # and in Reddit text files too
        assert "".join(reddit.decode_utf8(f)) == "hello world\n"


def test_windows_line_ends_become_newlines_unless_the_text_is_kept_as_is(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b"one\r\ntwo\rthree\n")
    c = corpus.load_text_corpus(tmp_path / "crlf.txt")
    assert "\r" not in c.vocab and corpus.decode(c.tokens, c.vocab) == "one\ntwo\nthree\n"
    raw = corpus.load_text_corpus(tmp_path / "crlf.txt", clean=False)
    assert corpus.decode(raw.tokens, raw.vocab) == "one\r\ntwo\rthree\n"


@pytest.mark.parametrize(
    "encoding, name",
    [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE"),
     ("utf-32", "UTF-32"), ("utf-32-le", "UTF-32LE"), ("utf-32-be", "UTF-32BE")],
)  # fmt: skip
def test_wide_text_is_refused_with_the_conversion_that_reads_it(tmp_path, encoding, name):
    text = "Notepad's 'Unicode' text\n" * 20
    (tmp_path / "win.txt").write_bytes(text.encode(encoding))
    with pytest.raises(UserError, match=f"is {name} text; save it as UTF-8 .* iconv -f {name} "):
        corpus.load_text_corpus(tmp_path / "win.txt")
    # What the suggested `iconv -f NAME -t UTF-8` writes (Python's codecs take iconv's names).
    wide = (tmp_path / "win.txt").read_bytes()
    (tmp_path / "utf8.txt").write_text(wide.decode(name), encoding="utf-8")
    converted = corpus.load_text_corpus(tmp_path / "utf8.txt")
    assert corpus.decode(converted.tokens, converted.vocab) == text


def test_adopting_a_vocabulary_keeps_its_ids_and_appends_new_characters():
    data = corpus.Corpus(corpus.encode("abcxyz", list("abcxyz")), list("abcxyz"))
    adopted, added = corpus.adopt_vocab(data, list("zyab"))
    assert adopted.vocab == list("zyabcx") and added == ["c", "x"]
    assert corpus.decode(adopted.tokens, adopted.vocab) == "abcxyz"
    assert corpus.adopt_vocab(data, data.vocab)[0] is data  # nothing to change


def test_encoding_with_an_unsorted_vocabulary():
    assert corpus.encode("bca", list("cab")).tolist() == [2, 0, 1]


def test_preparing_a_corpus_loads_no_torch():
    # torch takes some 200 MB on import: a Reddit-sized corpus is prepared without it.
    check = "import sys; from scratchgpt import corpus, reddit; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
