"""JSON from user files, every problem a one-line UserError naming the file (or ``file:line``).

Model directories, adapters, tokenizer configs, checkpoints, data lines and backends' state files
all go through ``parse_json`` (or ``read_json_object`` for a whole file), so they share three
boundary rules that the standard library does not enforce:

- nesting depth: ``json.loads`` recurses once per level and a line of 100,000 ``[`` raises
  RecursionError; the depth is measured first, without recursion, and more than
  ``MAX_JSON_DEPTH`` levels is refused (no file loraswitch reads needs more than a handful);
- Unicode: JSON's ``\\ud800`` escape decodes to a lone surrogate, a Python str that cannot be
  encoded (the tokenizer then raises TypeError); such a string is refused where it is read;
- size: a whole-file read is bounded (``MAX_JSON_FILE_BYTES``), and only regular files are
  opened, so a FIFO or a device cannot hang or exhaust the reader.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from loraswitch.core.errors import UserError
from loraswitch.core.files.paths import read_bounded

MAX_JSON_DEPTH = 100
MAX_JSON_FILE_BYTES = 64 * 1024 * 1024
# A JSON string, escapes included, removed before brackets are counted ("[" in text is no level).
# The closing quote is optional so that an unterminated string never makes the regex backtrack.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json(text: str | bytes, where: str, *, invalid: str = "not valid JSON") -> Any:
    """The value of one JSON document (bytes must be UTF-8). ``where`` starts every message (a
    path or ``file:line``); ``invalid`` is how a syntax error is described."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    depth = too_deep(raw)
    if depth:
        raise UserError(f"{where}: JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 text (byte {e.start + 1})") from e
    except json.JSONDecodeError as e:
        at = f"column {e.colno}" if e.lineno == 1 else f"line {e.lineno} column {e.colno}"
        raise UserError(f"{where}: {invalid}: {e.msg} ({at})") from e
    except ValueError as e:  # NaN/Infinity (below), an integer of more than 4300 digits
        raise UserError(f"{where}: {invalid}: {str(e).split(';')[0]}") from e
    if _SURROGATE_ESCAPE.search(raw):  # only a \\uD800-\\uDFFF escape can make a lone surrogate
        check_unicode(value, where)
    return value


def too_deep(raw: bytes) -> int:
    """0 if ``raw`` nests arrays and objects at most MAX_JSON_DEPTH deep, else its depth.
    Counted without recursion and in linear time; brackets inside strings do not count.
    Malformed input gives some number; json.loads then reports the syntax error."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # the common case: too few brackets to be too deep
    code = np.frombuffer(_STRING.sub(b"", raw), dtype=np.uint8)
    steps = np.zeros(len(code), dtype=np.int32)
    steps[(code == ord("[")) | (code == ord("{"))] = 1
    steps[(code == ord("]")) | (code == ord("}"))] = -1
    deepest = int(np.cumsum(steps).max(initial=0))
    return deepest if deepest > MAX_JSON_DEPTH else 0


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_unicode(value: Any, where: str) -> None:
    """Every string (and object key) in a decoded JSON value can be encoded as UTF-8: a lone
    surrogate from a ``\\ud800`` escape is refused, naming the escape."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start : e.end]
        raise UserError(
            f"{where}: a string holds the lone UTF-16 surrogate {bad.encode('unicode_escape').decode()}; "
            "it is not valid Unicode (escapes \\ud800-\\udfff must come in high/low pairs)"
        ) from None


def read_json_object(path: Path, *, if_missing: str = "") -> dict[str, Any]:
    """The JSON object in ``path``. A missing file is reported as "PATH: missing; IF_MISSING",
    so the caller can say what the file belongs to."""
    raw = read_bounded(path, MAX_JSON_FILE_BYTES, missing="missing" + (f"; {if_missing}" if if_missing else ""))
    value = parse_json(raw, str(path))
    if not isinstance(value, dict):
        raise UserError(f"{path}: must be a JSON object, not {type(value).__name__}")
    return value
