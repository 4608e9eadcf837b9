"""Reads the history rows back from W&B's own run files (``RUN_DIR/wandb/*-RUNID/run-RUNID.wandb``).

A resumed offline W&B run cannot ask a server which steps it already has: each process writes a
new ``offline-run-*`` directory for the same run id, and ``wandb sync`` uploads them later. So the
W&B plugin reads the earlier directories to learn the last step each metric reached, and logs only
later steps. wandb >= 0.19 has no Python reader for these files any more (its Go core writes
them), hence this one: the file is a LevelDB log (a 7-byte ``:W&B`` header, then 32 KiB blocks of
records, each with a 7-byte header and split into FIRST/MIDDLE/LAST pieces at block ends), each
record one ``wandb_internal_pb2.Record`` protobuf, parsed with wandb's own generated class.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FILE_HEADER = struct.Struct("<4sHB")  # ident b":W&B", magic 0xBEE1, version 0
RECORD_HEADER = struct.Struct("<IHB")  # checksum, length, piece type
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path) -> Iterator[bytes]:
    """The record payloads of one .wandb file, in order; a piece torn by a kill ends the file."""
    data = Path(path).read_bytes()
    if len(data) < FILE_HEADER.size or FILE_HEADER.unpack_from(data)[0] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, pending = FILE_HEADER.size, b""
    while pos + RECORD_HEADER.size <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < RECORD_HEADER.size:  # block trailer: padding
            pos += left_in_block
            continue
        _, length, kind = RECORD_HEADER.unpack_from(data, pos)
        start, end = pos + RECORD_HEADER.size, pos + RECORD_HEADER.size + length
        if kind == 0 or end > len(data):  # zero padding, or a record cut short
            break
        piece, pos = data[start:end], end
        if kind == FULL:
            yield piece
        elif kind == FIRST:
            pending = piece
        elif kind == MIDDLE:
            pending += piece
        elif kind == LAST:
            yield pending + piece


def records(path: Path) -> Iterator[Any]:
    """Each record parsed as wandb's ``Record`` protobuf."""
    from wandb.proto import wandb_internal_pb2

    for raw in raw_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        yield record


def history(path: Path) -> list[dict[str, Any]]:
    """The history rows of one .wandb file: {metric: value, ..., "_step": n} as W&B stored them."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def run_files(wandb_dir: Path, run_id: str) -> list[Path]:
    """Every run file W&B wrote for ``run_id`` under ``wandb_dir``, oldest first (the directory
    names start with the start time)."""

    def started(path: Path) -> str:  # run-YYYYMMDD_HHMMSS-ID or offline-run-YYYYMMDD_HHMMSS-ID
        found = re.search(r"\d{8}_\d{6}", path.parent.name)
        return found.group() if found else path.parent.name

    return sorted(Path(wandb_dir).glob(f"*-{run_id}/run-{run_id}.wandb"), key=started)


def last_steps(files: list[Path]) -> dict[str, int]:
    """Per metric, the last step any of ``files`` holds."""
    last: dict[str, int] = {}
    for path in files:
        for row in history(path):
            step = row.get("_step")
            if isinstance(step, int):
                for key in row:
                    if not key.startswith("_"):
                        last[key] = max(last.get(key, step), step)
    return last
