"""Read JSONL data into records; every error names ``file:line``.

One JSON object per line, in any shape of shapes.py (messages, ShareGPT, Alpaca,
prompt/completion, text). Blank lines are skipped and a UTF-8 BOM is allowed. Each line is
read with a bound, so a multi-gigabyte single "line" fails fast instead of exhausting memory.
The record types live in records.py and are re-exported here for older imports.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from loraswitch.core.data.records import ROLES, Message, Record, encodable, json_type
from loraswitch.core.data.shapes import parse_record
from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import parse_json
from loraswitch.core.files.paths import regular_file

__all__ = ["MAX_LINE_BYTES", "ROLES", "Message", "Record", "encodable", "json_type", "parse_record", "read_jsonl"]

MAX_LINE_BYTES = 10 * 1024 * 1024  # a longer line is almost surely not one example; refuse before parsing it


def read_jsonl(path: str | Path, data_format: str = "auto", fields: Mapping[str, str] | None = None) -> list[Record]:
    """All records of a JSONL file, in file order. A file with no records, a line that is not
    UTF-8, not JSON, too long or of an unknown shape is an error."""
    p = regular_file(path, what="data file")  # a FIFO or device would block or never end
    records = [parse_record(obj, where, data_format, fields) for where, obj in jsonl_values(p)]
    if not records:
        raise UserError(f"{p}: data file has no records (it is empty or only blank lines)")
    return records


def jsonl_values(p: Path) -> Iterator[tuple[str, Any]]:
    """(``file:line``, decoded value) for each non-blank line."""
    try:
        f = p.open("rb")
    except OSError as e:
        raise UserError(f"{p}: cannot read data file: {e.strerror}") from e
    with f:
        lineno = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            lineno += 1
            where = f"{p}:{lineno}"
            if len(raw) > MAX_LINE_BYTES:
                raise UserError(
                    f"{where}: line longer than {MAX_LINE_BYTES // (1024 * 1024)} MB; JSONL needs one example per line"
                )
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{where}: not UTF-8 text (byte {e.start + 1} of the line)") from e
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # editors on Windows write a BOM
            if line.strip():
                yield where, parse_json(line, where, invalid="malformed JSON")
