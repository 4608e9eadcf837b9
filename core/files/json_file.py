"""Read one JSON object from a file, every problem a one-line UserError naming the file.

Model directories, adapters, tokenizer configs and backends' state files all need exactly this;
one helper keeps their messages the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError


def read_json_object(path: Path, *, if_missing: str = "") -> dict[str, Any]:
    """The JSON object in ``path``. A missing file is reported as "PATH: missing; IF_MISSING",
    so the caller can say what the file belongs to."""
    if not path.is_file():
        raise UserError(f"{path}: missing" + (f"; {if_missing}" if if_missing else ""))
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        raise UserError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise UserError(f"{path}: must be a JSON object, not {type(value).__name__}")
    return value
