"""Where records come from: the ``data`` string resolved to a reader, and its fingerprint.

- ``*.jsonl`` (and any other name): JSON lines, errors at ``file:line`` (jsonl.py);
- ``*.json``: a JSON array of records (errors at ``file[index]``), or JSON lines if the file
  does not start with ``[``;
- ``*.parquet``, ``*.csv``, a directory written by ``datasets.Dataset.save_to_disk`` and
  ``hf:NAME[:SPLIT]`` (the local ``datasets`` cache only): read through the ``datasets``
  library, imported only then (tables.py, the ``data`` extra); errors at ``file: row N``.

The seeded split (dataset.py) is made afterwards over the records, whatever the source.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from loraswitch.core.data.records import Record, json_type
from loraswitch.core.data.shapes import parse_record
from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import parse_json
from loraswitch.core.files.paths import directory, read_bounded, regular_file, resolved

HF_PREFIX = "hf:"
TABLE_SUFFIXES = (".parquet", ".csv")
MAX_JSON_ARRAY_BYTES = 2 * 1024**3  # a JSON array is parsed whole; beyond this, use JSONL or parquet


def read_records(
    source: str | Path, data_format: str = "auto", fields: Mapping[str, str] | None = None
) -> list[Record]:
    """Every record of ``source`` in its order; one-line UserErrors name the file and record."""
    from loraswitch.core.data import jsonl

    text = str(source)
    if text.startswith(HF_PREFIX) or Path(text).is_dir() or Path(text).suffix.lower() in TABLE_SUFFIXES:
        from loraswitch.core.data import tables

        label, rows = tables.table_rows(text)
        values = ((f"{label}: row {i}", row) for i, row in enumerate(rows))
    else:
        p = regular_file(text, what="data file")  # a FIFO or device would block or never end
        label = str(p)
        values = _json_array_values(p) if _is_json_array(p) else jsonl.jsonl_values(p)
    records = [parse_record(obj, where, data_format, fields) for where, obj in values]
    if not records:
        raise UserError(f"{label}: data file has no records (it is empty or only blank lines)")
    return records


def absolute_source(text: str) -> str:
    """The data string with its path made absolute (``hf:`` names stay as they are), checked to
    exist: a regular file, or a directory (save_to_disk)."""
    if text.startswith(HF_PREFIX):
        return text
    if Path(text).is_dir():
        return str(resolved(directory(text, what="data directory")))
    return str(resolved(regular_file(text, what="data file")))


def _is_json_array(p: Path) -> bool:
    """A ``.json`` file whose first non-blank character is ``[`` (many ``.json`` files are JSON lines)."""
    if p.suffix.lower() != ".json":
        return False
    with p.open("rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return head.startswith(b"[")


def _json_array_values(p: Path):
    raw = read_bounded(p, MAX_JSON_ARRAY_BYTES, what="data file").removeprefix(b"\xef\xbb\xbf")
    value = parse_json(raw, str(p), invalid="malformed JSON")
    if not isinstance(value, list):
        raise UserError(f"{p}: a .json data file must hold an array of records, got {json_type(value)}")
    return ((f"{p}[{i}]", obj) for i, obj in enumerate(value))


def data_fingerprint(source: str | Path, data_format: str = "auto", fields: Mapping[str, str] | None = None) -> str:
    """sha256 of the data, for the run directory: resume checks the data did not change. A file
    hashes its bytes (as before formats existed, so older runs still resume); a directory or
    ``hf:`` dataset hashes its files' names and bytes; a ``data_format``/``data_fields`` that
    changes how records are read is mixed in."""
    files = _source_files(str(source))
    h = hashlib.sha256()
    if len(files) == 1 and files[0][0] == "":
        _hash_file(h, files[0][1])
    else:
        for name, path in files:
            h.update(name.encode("utf-8") + b"\0")
            _hash_file(h, path)
    digest = h.hexdigest()
    if data_format == "auto" and not fields:
        return digest
    reading = json.dumps({"data_format": data_format, "data_fields": dict(fields or {})}, sort_keys=True)
    return hashlib.sha256(f"{digest}\n{reading}".encode()).hexdigest()


def _source_files(text: str) -> list[tuple[str, Path]]:
    """(name, path) of the files that hold the data; a single file is named ''."""
    if text.startswith(HF_PREFIX):
        from loraswitch.core.data import tables

        return [(p.name, p) for p in tables.hf_cache_files(text)]
    p = Path(text)
    if p.is_dir():
        return [(f.relative_to(p).as_posix(), f) for f in sorted(p.rglob("*")) if f.is_file()]
    return [("", p)]


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
