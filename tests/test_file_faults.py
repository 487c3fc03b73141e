"""A broken data file is one line naming the file, the line and the cause, for every format and
compression."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path
from types import SimpleNamespace

import pytest

from mtdnn.core.errors import MtdnnError
from mtdnn.data.loading import _load_file

CSV = "text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(400))


def _truncated(compress, text: str) -> bytes:
    data = compress(text.encode())
    return data[: len(data) // 2]


CASES = {  # file name, bytes, what the one line must say
    "broken jsonl line": (
        "d.jsonl",
        b'{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", "lab\n',
        "line 3: not valid JSON",
    ),
    "jsonl row that is not an object": (
        "d.jsonl",
        b'{"text": "a", "label": 0}\n[1, 2]\n{"text": "b", "label": 1}\n',
        "line 2: a JSON lines row must be an object",
    ),
    "latin-1 csv": (
        "d.csv",
        "text,label\nhello,0\ncaf\xe9 au lait,1\n".encode("latin-1"),
        "line 3: not valid utf-8 (byte 0xe9); if the file is in another encoding, set "
        "source.read_options.encoding",
    ),
    "ragged csv row": (
        "d.csv",
        b"text,label\na,0\nb,0\nc,1,oops\nd,0\n",
        "line 4: 3 fields where the header has 2",
    ),
    "ragged tsv row": (
        "d.tsv",
        b"text\tlabel\na\t0\nb\t1\textra\n",
        "line 3: 3 fields where the header has 2",
    ),
    "truncated csv.gz": (
        "d.csv.gz",
        _truncated(gzip.compress, CSV),
        "the file is truncated or not valid gz data",
    ),
    "truncated csv.bz2": (
        "d.csv.bz2",
        _truncated(bz2.compress, CSV),
        "the file is truncated or not valid bz2 data",
    ),
    "broken json array": ("d.json", b'[{"text": "a", "label": 0},\n {"text": ', "line 2: not valid JSON"),
    "not parquet": ("d.parquet", b"PAR1 this is not parquet", "ArrowInvalid: Parquet magic bytes not found"),
}


def _spec(tmp_path: Path, **read_options) -> SimpleNamespace:
    return SimpleNamespace(
        file=str(tmp_path / "t.yaml"), source=SimpleNamespace(format=None, read_options=read_options)
    )


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_file_is_one_line_with_file_line_and_cause(tmp_path, case):
    name, data, expected = CASES[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(MtdnnError) as info:
        _load_file(_spec(tmp_path), tmp_path / name, "source.splits.train")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 't.yaml'}: source.splits.train: cannot read {tmp_path / name}")
    assert expected in message, message


def test_the_encoding_hint_is_the_fix(tmp_path):
    name, data, _ = CASES["latin-1 csv"]
    (tmp_path / name).write_bytes(data)
    ds = _load_file(_spec(tmp_path, encoding="latin-1"), tmp_path / name, "source.file")
    assert ds["text"] == ["hello", "café au lait"]


def test_datasets_does_not_print_the_cause_on_a_line_of_its_own(tmp_path, capfd):
    name, data, _ = CASES["ragged csv row"]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(MtdnnError):
        _load_file(_spec(tmp_path), tmp_path / name, "source.file")
    assert "Failed to read file" not in capfd.readouterr().err
