"""What the listing commands (backends, plugins, models) share: ``--json`` for one JSON object
per line, else one human-readable entry per row."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any


def add_json_flag(p) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def print_rows(rows: Iterable[dict[str, Any]], as_json: bool, text: Callable[[dict[str, Any]], str]) -> None:
    for row in rows:
        print(json.dumps(row) if as_json else text(row))
