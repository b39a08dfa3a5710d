"""A data file as bytes: its compression known by its first bytes (gzip, zstd, bz2, xz; whatever its name says),
streamed as it is read, never decompressed whole; and the error and batch types of reading one."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

COMPRESSED_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
# What a decompressor raises on cut-off or corrupt data (gzip: EOFError, BadGzipFile, zlib.error; pyarrow: OSError).
DECOMPRESS_ERRORS = (EOFError, OSError, lzma.LZMAError, zlib.error)


class InputError(ValueError):
    """Input data that cannot be read; the message names the file and the place, and says what to do."""


@dataclass
class Batch:
    """Rows read from one file; `skipped` counts what salvage left out (bad lines, a truncated tail).

    `first_row` numbers rows across the whole input (ids); when the input has several files, `file` is the one
    the rows are from, `file_name` its name relative to the input and `file_row` the first row's number in it.
    """

    rows: list
    first_row: int
    skipped: dict = field(default_factory=dict)
    file: Path | None = None
    file_name: str | None = None
    file_row: int = 0


def compression(file: Path) -> str | None:
    """gzip, zstd, bz2 or xz from `file`'s first bytes (its name may say otherwise), or None."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(10)
    except OSError as exc:
        raise InputError(f"{file}: cannot be read ({exc})") from exc
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bz2"
    if head.startswith(b"PK\x03\x04"):
        raise InputError(f"{file}: a zip archive; unzip it and pass the folder, or a pattern of its files")
    return None


class _Counted(io.RawIOBase):
    """A readable stream that knows its position (pyarrow's decompressing stream cannot tell)."""

    def __init__(self, stream):
        self.stream, self.position = stream, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def close(self) -> None:
        self.stream.close()
        super().close()


@contextmanager
def open_data(file: Path, codec: str | None, *, skip_bom: bool = False) -> Iterator[io.BufferedIOBase]:
    """The (decompressed) bytes of `file` as a stream read as it is used; `skip_bom` drops a UTF-8 BOM."""
    try:
        if codec is None:
            handle = open(file, "rb")
        elif codec == "gzip":
            handle = gzip.open(file, "rb")
        elif codec == "bz2":
            handle = bz2.open(file, "rb")
        elif codec == "xz":
            handle = lzma.open(file, "rb")
        else:  # zstd, with pyarrow's codec (the zstandard package is not a dependency)
            import pyarrow as pa

            # 64 KiB reads: on cut-off data pyarrow drops what the last read decompressed (salvage keeps the rest)
            handle = io.BufferedReader(_Counted(pa.CompressedInputStream(pa.OSFile(str(file)), "zstd")), buffer_size=1 << 16)
    except OSError as exc:
        raise InputError(f"{file}: cannot be opened ({exc})") from exc
    with handle:
        if skip_bom and handle.peek(3)[:3] == b"\xef\xbb\xbf":
            handle.read(3)
        yield handle


def unreadable(file: Path, codec: str | None, exc: Exception, done: str, salvage_keeps: str) -> InputError:
    """The error for data a decompressor (or the disk) gave up on, after `done`."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if codec is None:
        return InputError(f"{file}: cannot be read after {done} ({first})")
    return InputError(f"{file}: the {codec} data is cut off or corrupt after {done} ({first}); download or compress "
                      f"it again, or pass --salvage to keep {salvage_keeps}")
