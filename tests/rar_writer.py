"""Minimal RAR5 archive writer for tests (stored members only, stdlib only).

Format reference: https://www.rarlab.com/technote.htm ("RAR 5.0 archive format").
Only what is needed to produce archives that ``rarfile`` and ``unar`` accept:
main header, file headers (files, directories, Unix symlinks), end-of-archive.
Data is never compressed (method 0 = store), so no RAR algorithm is needed.
"""

from __future__ import annotations

import pathlib
import stat
import struct
import zlib

SIGNATURE = b"Rar!\x1a\x07\x01\x00"  # RAR 5.0 marker; RAR4 uses a different one

# Header types and flags (technote: "General archive block format").
HEAD_MAIN, HEAD_FILE, HEAD_END = 1, 2, 5
HFL_EXTRA, HFL_DATA = 0x0001, 0x0002
# File header flags.
FHFL_DIRECTORY, FHFL_UTIME, FHFL_CRC32 = 0x0001, 0x0002, 0x0004
HOST_UNIX = 1
EXTRA_REDIR, REDIR_UNIX_SYMLINK = 5, 1

# Fixed default timestamp so archives are byte-for-byte reproducible.
DEFAULT_MTIME = 1_704_067_200  # 2024-01-01 00:00:00 UTC


def vint(value: int) -> bytes:
    """Encode a RAR5 variable-length integer: 7 bits per byte, low bits first."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _block(head_type: int, fields: bytes, extra: bytes = b"", data: bytes | None = None) -> bytes:
    """Build one block: CRC32, size, type, flags, [extra size], [data size],
    type-specific fields, extra area, then the data area (if any)."""
    flags = (HFL_EXTRA if extra else 0) | (HFL_DATA if data is not None else 0)
    header = vint(head_type) + vint(flags)
    if extra:
        header += vint(len(extra))
    if data is not None:
        header += vint(len(data))
    header += fields + extra
    # The CRC covers the size field too, so compute it over the prefixed header.
    sized = vint(len(header)) + header
    return struct.pack("<I", zlib.crc32(sized)) + sized + (data or b"")


def _file_block(
    name: str,
    mode: int,
    mtime: int,
    data: bytes | None = None,
    is_dir: bool = False,
    extra: bytes = b"",
) -> bytes:
    """File header for a file (data given), a directory, or a data-less symlink."""
    flags = FHFL_UTIME | (FHFL_DIRECTORY if is_dir else 0)
    if data is not None:
        flags |= FHFL_CRC32  # only real files carry data, hence a data CRC
    size = len(data or b"")
    fields = vint(flags) + vint(size) + vint(mode) + struct.pack("<I", mtime)
    if data is not None:
        fields += struct.pack("<I", zlib.crc32(data))
    encoded = name.encode("utf-8")
    # Compression info 0 = algorithm version 0, method 0 (store), not solid.
    fields += vint(0) + vint(HOST_UNIX) + vint(len(encoded)) + encoded
    return _block(HEAD_FILE, fields, extra, data)


def _parent_dirs(name: str) -> list[str]:
    """Ordinary parent folders of ``name`` ("a/b/c.txt" -> ["a", "a/b"]).

    Stops at ".", ".." or empty components so hostile names such as
    "../escape.txt" are written verbatim without inventing odd directory entries.
    """
    parts = name.split("/")[:-1]
    dirs = []
    for i, part in enumerate(parts):
        if part in ("", ".", ".."):
            break
        dirs.append("/".join(parts[: i + 1]))
    return dirs


def write_rar(
    path: pathlib.Path,
    members: list[tuple[str, bytes]],
    symlinks: list[tuple[str, str]] | None = None,
    *,
    add_dirs: bool = True,
    mtime: int = DEFAULT_MTIME,
) -> None:
    """Write a RAR5 archive of stored (uncompressed) members to ``path``.

    ``members`` are ``(name, data)`` pairs written in order; names use "/" and
    are stored as given (no normalisation), so traversal names are possible.
    ``symlinks`` are ``(name, target)`` Unix symlinks, written *before* the
    members so an archive like ``up -> ..`` + ``up/pwned.txt`` can be built.
    With ``add_dirs`` a directory entry precedes the first member inside each
    parent folder (as real ``rar`` output has), unless that name is already an
    entry (e.g. a symlink). Unix host, modes 0644 files / 0755 dirs / 0777 links.
    """
    # Archive flags 0: a single volume, not solid, no recovery record.
    blocks = [SIGNATURE, _block(HEAD_MAIN, vint(0))]
    seen: set[str] = set()
    for name, target in symlinks or []:
        encoded = target.encode("utf-8")
        # Redirection record: type, flags (0: target not a dir), target name.
        body = vint(REDIR_UNIX_SYMLINK) + vint(0) + vint(len(encoded)) + encoded
        record = vint(EXTRA_REDIR) + body
        # Each extra record is prefixed by the size of its type + body.
        extra = vint(len(record)) + record
        blocks.append(_file_block(name, stat.S_IFLNK | 0o777, mtime, extra=extra))
        seen.add(name)
    for name, data in members:
        for folder in _parent_dirs(name) if add_dirs else []:
            if folder not in seen:
                blocks.append(_file_block(folder, stat.S_IFDIR | 0o755, mtime, is_dir=True))
                seen.add(folder)
        blocks.append(_file_block(name, stat.S_IFREG | 0o644, mtime, data=data))
        seen.add(name)
    blocks.append(_block(HEAD_END, vint(0)))  # end flags 0: last volume
    pathlib.Path(path).write_bytes(b"".join(blocks))
