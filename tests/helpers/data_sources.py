"""Write the same rows as every data source loraswitch reads (core/data/sources.py): JSONL, a JSON
array, parquet, CSV, a save_to_disk directory, and a dataset placed in the datasets cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_source(tmp_path: Path, kind: str, rows: list[dict]) -> str:
    """``rows`` written as ``kind``; returns the data string a config would hold."""
    import datasets

    if kind == "jsonl":
        return str(write_jsonl(tmp_path / "d.jsonl", rows))
    if kind == "json":
        (tmp_path / "d.json").write_text(json.dumps(rows, indent=1))
        return str(tmp_path / "d.json")
    if kind == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
        return str(tmp_path / "d.parquet")
    if kind == "csv":
        import csv

        with (tmp_path / "d.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in rows)
        return str(tmp_path / "d.csv")
    if kind == "saved":
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
        return str(tmp_path / "saved")
    assert kind == "hf"
    return put_in_datasets_cache(tmp_path, "someone/tiny_set", rows)


def put_in_datasets_cache(tmp_path: Path, name: str, rows: list[dict]) -> str:
    """Write ``rows`` into the datasets cache as ``load_dataset(name)`` leaves a hub dataset
    there: ``{cache}/{owner}___{name}/default/0.0.0/{hash}/{name}-train.arrow``, by letting the
    json builder prepare it and moving its directory (no network, no hub)."""
    import datasets

    src = write_jsonl(tmp_path / "hub_rows.jsonl", rows)
    builder = datasets.load_dataset_builder("json", data_files={"train": str(src)}, cache_dir=str(tmp_path / "build"))
    builder.download_and_prepare()
    built = Path(builder.cache_dir)
    owner, short = name.split("/")
    target = Path(datasets.config.HF_DATASETS_CACHE) / f"{owner}___{short}" / "default" / "0.0.0" / built.name
    shutil.copytree(built, target)
    for f in target.glob("json-*.arrow"):
        f.rename(target / f.name.replace("json-", f"{short}-"))
    return f"hf:{name}"
