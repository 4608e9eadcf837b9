"""Tabular data through the ``datasets`` library (the ``data`` extra), imported only here.

parquet and CSV files, a directory written by ``Dataset.save_to_disk`` (or
``DatasetDict.save_to_disk``: its ``train`` split, or its only one), and ``hf:NAME[:SPLIT]``:
a dataset already in the local ``datasets`` cache (``HF_DATASETS_CACHE``). That last one is
read with the cache's own builder (``datasets.packaged_modules.cache``), which only looks in
the cache directory, and with offline mode forced on: loraswitch never downloads data.

Rows come back as plain dicts. Table columns of nested records (lists of message structs)
carry ``None`` for a key another row has and this one lacks; those ``None`` are dropped inside
nested objects so that a message without ``weight`` reads as the JSONL one does. A CSV cell
holding ``messages``, ``conversations`` or ``tools`` is JSON text and is decoded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError

JSON_COLUMNS = ("messages", "conversations", "tools")
DEFAULT_SPLIT = "train"


def table_rows(text: str) -> tuple[str, list[dict[str, Any]]]:
    """(label for errors, rows) of a parquet/CSV file, save_to_disk directory or ``hf:`` name."""
    if text.startswith("hf:"):
        name, split = parse_hf(text)
        return text, _rows(_hf_dataset(name, split), text)
    p = Path(text)
    if p.is_dir():
        return str(p), _rows(_saved_dataset(p), str(p))
    from loraswitch.core.files.paths import regular_file

    regular_file(p, what="data file")
    datasets = import_datasets(p.suffix.lstrip(".").lower() + " data", str(p))
    with tempfile.TemporaryDirectory(prefix="loraswitch-data-") as cache:  # datasets' arrow files, not kept
        try:
            if p.suffix.lower() == ".csv":
                # every cell as written (no int/NaN guessing): a CSV answer "4" stays the string "4"
                features = datasets.Features({c: datasets.Value("string") for c in _csv_header(p)})
                ds = datasets.Dataset.from_csv(
                    str(p), cache_dir=cache, keep_in_memory=True, features=features, na_filter=False
                )
            else:
                ds = datasets.Dataset.from_parquet(str(p), cache_dir=cache, keep_in_memory=True)
        except Exception as e:
            raise UserError(f"{p}: cannot read {p.suffix.lstrip('.')} data: {_first_line(e)}") from e
        return str(p), _rows(ds, str(p))


def parse_hf(text: str) -> tuple[str, str]:
    """``hf:NAME[:SPLIT]`` -> (NAME, SPLIT); NAME may be ``owner/name``."""
    body = text.removeprefix("hf:")
    name, _, split = body.partition(":")
    if not name or name.count("/") > 1:
        raise UserError(f"data: {text!r}: expected hf:NAME[:SPLIT], e.g. hf:tatsu-lab/alpaca:train")
    return name, split or DEFAULT_SPLIT


def hf_cache_files(text: str) -> list[Path]:
    """The arrow files holding an ``hf:`` dataset in the cache (what its fingerprint hashes)."""
    name, split = parse_hf(text)
    return [Path(f["filename"]) for f in _hf_dataset(name, split).cache_files]


def import_datasets(what: str, where: str):
    """The datasets module, offline; a missing extra is a one-line UserError."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"  # read at import; the module flags are set below too
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError as e:
        raise UserError(f"{where}: reading {what} needs the datasets library: pip install 'loraswitch[data]'") from e
    datasets.config.HF_HUB_OFFLINE = True
    datasets.config.HF_DATASETS_OFFLINE = True
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _hf_dataset(name: str, split: str):
    datasets = import_datasets("hf: datasets", f"hf:{name}")
    from datasets.packaged_modules.cache.cache import Cache

    cache_dir = datasets.config.HF_DATASETS_CACHE
    try:
        builder = Cache(repo_id=name, dataset_name=name.split("/")[-1], hash="auto", version="auto")
    except Exception as e:
        raise UserError(
            f"data: hf:{name} is not in the local datasets cache ({cache_dir}); loraswitch never downloads: "
            f"load it once with datasets.load_dataset({name!r}) where there is network, or give a file"
        ) from e
    splits = list(builder.info.splits or {})
    if split not in splits:
        raise UserError(f"data: hf:{name} in the cache has no split {split!r}; it has {', '.join(splits) or 'none'}")
    try:
        return builder.as_dataset(split=split)
    except Exception as e:
        raise UserError(f"data: hf:{name}:{split}: cannot read the cached dataset: {_first_line(e)}") from e


def _saved_dataset(p: Path):
    datasets = import_datasets("a save_to_disk directory", str(p))
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:
        raise UserError(f"{p}: not a datasets save_to_disk directory: {_first_line(e)}") from e
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if DEFAULT_SPLIT in ds:
            return ds[DEFAULT_SPLIT]
        if len(splits) == 1:
            return ds[splits[0]]
        raise UserError(f"{p}: a DatasetDict with splits {', '.join(splits)} and no 'train'; save one split")
    return ds


def _rows(ds, label: str) -> list[dict[str, Any]]:
    return [_clean(row, f"{label}: row {i}") for i, row in enumerate(ds)]


def _csv_header(p: Path) -> list[str]:
    import csv

    with p.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise UserError(f"{p}: a CSV data file needs a header row naming its columns")
    return header


def _clean(row: dict[str, Any], where: str) -> dict[str, Any]:
    from loraswitch.core.files.json_file import parse_json

    out = {}
    for key, value in row.items():
        if key in JSON_COLUMNS and isinstance(value, str):
            value = parse_json(value, f"{where}: {key!r}", invalid="not valid JSON")
        out[key] = _drop_nested_nulls(value)
    return out


def _drop_nested_nulls(value: Any) -> Any:
    if isinstance(value, list):
        return [_drop_nested_nulls(v) if isinstance(v, dict | list) else v for v in value]
    if isinstance(value, dict):
        return {k: _drop_nested_nulls(v) for k, v in value.items() if v is not None}
    return value


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
