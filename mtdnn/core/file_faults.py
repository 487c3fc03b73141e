"""Where a data file is broken, in one line: the line number and the cause.

`datasets` reports every parse failure as "An error occurred while generating the dataset", with the cause
two exceptions down and the position either missing, relative to a parse block, or a byte offset. So when a
read fails we read the file once more ourselves, as plain text, and find the first line that breaks the format
(bad encoding, invalid JSON, a ragged CSV row, a truncated archive). Only on the failure path: a good file is
read once, by `datasets`.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import zipfile
from pathlib import Path
from typing import IO, Any

from mtdnn.core.errors import first_line

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed as its suffix says."""
    if path.suffix == ".zip":
        archive = zipfile.ZipFile(path)
        return archive.open(archive.namelist()[0])
    if path.suffix == ".zst":
        import zstandard  # a dependency of datasets' .zst support; only reached for .zst files

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
    return _OPENERS.get(path.suffix, open)(path, "rb")


def diagnose(path: Path, fmt: str, options: dict[str, Any], err: BaseException) -> str:
    """'line N: cause' for the first broken line, or the deepest cause `datasets` gave when none is found."""
    try:
        with _open_binary(path) as raw:
            data = raw.read()
    except Exception as fault:  # noqa: BLE001  (each decompressor has its own errors: zlib, lzma, EOF, zip, ...)
        return (
            f"the file is truncated or not valid {path.suffix.lstrip('.') or fmt} data ({first_line(fault)})"
        )
    return _first_fault(data, fmt, options) or root_cause(err)


def root_cause(err: BaseException) -> str:
    """The innermost exception's first line: datasets' own wrapper says nothing about the cause."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return f"{type(err).__name__}: {first_line(err)}"


def _first_fault(data: bytes, fmt: str, options: dict[str, Any]) -> str | None:
    encoding = options.get("encoding", "utf-8")
    text, fault = _decode(data, encoding)
    if fault:
        return fault
    if fmt == "json" and text.lstrip().startswith(("[", "{")) and not _is_json_lines(text):
        return _json_fault(text)
    if fmt in ("json", "jsonl"):
        return _json_lines_fault(text)
    if fmt in ("csv", "tsv"):
        return _csv_fault(text, options.get("delimiter", options.get("sep", "\t" if fmt == "tsv" else ",")))
    return None


def _decode(data: bytes, encoding: str) -> tuple[str, str | None]:
    try:
        return data.decode(encoding), None
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        byte = data[err.start : err.start + 1].hex()
        return "", (
            f"line {line}: not valid {encoding} (byte 0x{byte}); if the file is in another encoding, "
            "set source.read_options.encoding (e.g. latin-1)"
        )


def _is_json_lines(text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0]
    try:
        return isinstance(json.loads(first), dict) and "\n" in text.strip()
    except ValueError:
        return False


def _json_fault(text: str) -> str | None:
    try:
        json.loads(text)
    except ValueError as err:
        return f"line {getattr(err, 'lineno', '?')}: not valid JSON: {getattr(err, 'msg', first_line(err))}"
    return None


def _json_lines_fault(text: str) -> str | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as err:
            return f"line {number}: not valid JSON: {getattr(err, 'msg', first_line(err))}"
        if not isinstance(value, dict):
            return f"line {number}: a JSON lines row must be an object, got {type(value).__name__}"
    return None


def _csv_fault(text: str, delimiter: str) -> str | None:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return None
        for row in reader:
            if len(row) > len(header):  # a short row is read with empty values, and the row checks name it
                return (
                    f"line {reader.line_num}: {len(row)} fields where the header has {len(header)} "
                    "(a delimiter or quote inside a value?)"
                )
    except csv.Error as err:
        return f"line {reader.line_num}: {err}"
    return None
