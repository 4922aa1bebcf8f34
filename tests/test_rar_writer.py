"""Tests for the test-only RAR5 writer: real readers (rarfile, unar) must accept its output."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import rarfile
from rar_writer import SIGNATURE, write_rar

# One member of every awkward kind the readers under test must cope with.
MEMBERS: list[tuple[str, bytes]] = [
    ("readme.txt", b"hello world\n"),
    ("a/b/c.txt", b"nested\n"),
    ("a/sibling.txt", b"same parent folder, no second 'a' entry\n"),
    ("binary.bin", bytes(range(256)) + b"\x00\x00\xff\x00"),
    ("unicode.txt", "Привет, мир 😀 naïve\n".encode()),
    ("папка/файл 😀.txt", "имя не ASCII\n".encode()),
    ("crlf.txt", b"line one\r\nline two\r\n"),
    ("empty.txt", b""),
    ("big.bin", random.Random(0).randbytes(1 << 20)),
]
FILE_NAMES = [name for name, _ in MEMBERS]
EXPECTED_DIRS = ["a/", "a/b/", "папка/"]


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    # Name without digits: unar treats "x1.rar", "x2.rar" side by side as volumes.
    path = tmp_path / "sample.rar"
    write_rar(path, MEMBERS)
    return path


def test_signature_and_reproducible(archive: Path, tmp_path: Path) -> None:
    assert archive.read_bytes().startswith(SIGNATURE)
    again = tmp_path / "again.rar"
    write_rar(again, MEMBERS)
    assert again.read_bytes() == archive.read_bytes()


def test_rarfile_lists_members_in_order(archive: Path) -> None:
    with rarfile.RarFile(archive) as rf:
        infos = rf.infolist()
        assert [i.filename for i in infos if i.is_file()] == FILE_NAMES
        assert [i.filename for i in infos if i.is_dir()] == EXPECTED_DIRS
        # Each directory entry comes right before the first member inside it.
        names = rf.namelist()
        assert names.index("a/") < names.index("a/b/") < names.index("a/b/c.txt")
        for info in infos:
            assert info.host_os == rarfile.RAR_OS_UNIX
            assert info.compress_type == rarfile.RAR_M0
            assert info.mode & 0o777 == (0o755 if info.is_dir() else 0o644)


def test_rarfile_reads_exact_bytes_and_crc(archive: Path) -> None:
    with rarfile.RarFile(archive) as rf:
        for name, data in MEMBERS:
            info = rf.getinfo(name)
            assert info.file_size == len(data)
            assert rf.read(name) == data
        rf.testrar()  # re-reads every member and verifies its CRC32


def test_rarfile_detects_corrupted_data(archive: Path) -> None:
    # Flip a byte inside big.bin's data: proves the stored CRC32 is really checked.
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    archive.write_bytes(bytes(raw))
    with rarfile.RarFile(archive) as rf, pytest.raises(rarfile.BadRarFile):
        rf.read("big.bin")


def test_without_dir_entries(tmp_path: Path) -> None:
    path = tmp_path / "flat.rar"
    write_rar(path, MEMBERS, add_dirs=False)
    with rarfile.RarFile(path) as rf:
        assert rf.namelist() == FILE_NAMES
        rf.testrar()


def test_symlink_and_traversal_names(tmp_path: Path) -> None:
    path = tmp_path / "evil.rar"
    members = [("up/pwned.txt", b"pwned"), ("../escape.txt", b"escaped")]
    write_rar(path, members, symlinks=[("up", "..")])
    with rarfile.RarFile(path) as rf:
        # "up" is the symlink, so no directory entry "up/" is invented for it.
        assert rf.namelist() == ["up", "up/pwned.txt", "../escape.txt"]
        link = rf.getinfo("up")
        assert link.is_symlink() and not link.is_dir()
        assert link.file_redir == (rarfile.RAR5_XREDIR_UNIX_SYMLINK, 0, "..")
        assert rf.read("../escape.txt") == b"escaped"
        assert rf.read("up/pwned.txt") == b"pwned"


unar_missing = pytest.mark.skipif(
    shutil.which("unar") is None or shutil.which("lsar") is None,
    reason="unar/lsar not on PATH (Debian package 'unar')",
)


@unar_missing
def test_lsar_lists_and_verifies(archive: Path) -> None:
    listing = subprocess.run(["lsar", "-j", str(archive)], capture_output=True, check=True)
    names = [e["XADFileName"] for e in json.loads(listing.stdout)["lsarContents"]]
    assert [n for n in names if n + "/" not in EXPECTED_DIRS] == FILE_NAMES
    # -t tests every member's CRC; exit status is non-zero on any failure.
    subprocess.run(["lsar", "-t", str(archive)], capture_output=True, check=True)


@unar_missing
def test_unar_extracts_identical_bytes(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # -D: no wrapping folder, so paths map 1:1 to member names.
    subprocess.run(["unar", "-q", "-D", "-o", str(out), str(archive)], check=True)
    for name, data in MEMBERS:
        assert (out / name).read_bytes() == data
    extracted = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert extracted == sorted(FILE_NAMES)


@unar_missing
def test_lsar_sees_symlink(tmp_path: Path) -> None:
    path = tmp_path / "evil.rar"
    write_rar(path, [("up/pwned.txt", b"pwned")], symlinks=[("up", "..")])
    listing = subprocess.run(["lsar", "-j", str(path)], capture_output=True, check=True)
    first = json.loads(listing.stdout)["lsarContents"][0]
    assert first["XADFileName"] == "up"
    assert first["XADIsLink"] == 1
    assert first["XADLinkDestination"] == ".."
