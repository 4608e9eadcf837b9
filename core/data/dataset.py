"""Training and validation splits: one seeded shuffle, identical on every run and backend.

The split is made on records, before tokenisation, so it depends only on the data file, the
seed and training_split: changing max_seq_len or the backend never moves an example from one
side to the other, and a resumed run sees exactly the split of the run it continues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from loraswitch.core.data.records import Record
from loraswitch.core.data.sources import data_fingerprint, read_records
from loraswitch.core.errors import UserError
from loraswitch.core.types import TokenizedExample

if TYPE_CHECKING:
    from loraswitch.core.config import Config
    from loraswitch.core.data.chat_tokenizer import ChatTokenizer

# Mixed into the split's seed so the split shuffle and the epoch orders (batching.py) are
# independent streams even though both derive from config.seed.
_SPLIT_STREAM = 0x5B117


@dataclass
class Datasets:
    train: list[TokenizedExample]
    validation: list[TokenizedExample]
    n_truncated: int  # examples cut to max_seq_len (kept, if they still have targets)
    n_dropped: int  # examples with no target token left after truncation (not used)
    n_examples: int  # records read, over both files

    def summary(self) -> dict[str, int]:
        return {
            "train_examples": len(self.train),
            "validation_examples": len(self.validation),
            "truncated_examples": self.n_truncated,
            "dropped_examples": self.n_dropped,
            "examples_read": self.n_examples,
        }


def split_indices(n: int, training_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation records: a seeded permutation, the first
    round(n * training_split) train (at least one on each side when n >= 2)."""
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n)
    n_train = min(max(int(round(n * training_split)), 1), n - 1) if n >= 2 else n
    return order[:n_train], order[n_train:]


def load_datasets(config: Config, tokenizer: ChatTokenizer) -> Datasets:
    """Read config.data (and config.validation_data), split, tokenise and truncate."""
    if not config.data:
        raise UserError("data: no training data file given; set data: path/to/train.jsonl")
    records = read_config_records(config, config.data)
    if config.validation_data:
        val_records = read_config_records(config, config.validation_data)
        train_records = records
    else:
        train_idx, val_idx = split_indices(len(records), config.training_split, config.seed)
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise UserError(
                f"{config.data}: {len(records)} record(s) with training_split {config.training_split} "
                "leave the validation split empty; add records or give validation_data"
            )
        train_records = [records[i] for i in train_idx]
        val_records = [records[i] for i in val_idx]

    counts = {"truncated": 0, "dropped": 0}
    train = _tokenize(train_records, tokenizer, config.max_seq_len, counts)
    validation = _tokenize(val_records, tokenizer, config.max_seq_len, counts)
    for name, examples, source in (
        ("training", train, config.data),
        ("validation", validation, config.validation_data or config.data),
    ):
        if not examples:
            raise UserError(
                f"{source}: the {name} split has no example with a target token left after "
                f"truncation to max_seq_len {config.max_seq_len} "
                f"({len(records)} record(s), training_split {config.training_split})"
            )
    return Datasets(
        train,
        validation,
        counts["truncated"],
        counts["dropped"],
        len(records) + (len(val_records) if config.validation_data else 0),
    )


def _tokenize(
    records: list[Record], tokenizer: ChatTokenizer, max_seq_len: int, counts: dict[str, int]
) -> list[TokenizedExample]:
    out = []
    for example, truncated in tokenizer.encode_records(records, max_seq_len):
        counts["truncated"] += int(truncated)
        if example.n_targets == 0:
            counts["dropped"] += 1  # a prompt longer than max_seq_len: nothing left to learn from
            continue
        out.append(example)
    return out


def read_config_records(config: Config, source: str) -> list[Record]:
    """The records of one data source, read with the config's data_format and data_fields."""
    return read_records(source, config.data_format, config.data_fields)


def config_fingerprint(config: Config) -> dict[str, str]:
    """data_sha256 of the run directory: each data source's fingerprint (sources.py)."""
    return {
        key: data_fingerprint(getattr(config, key), config.data_format, config.data_fields)
        for key in ("data", "validation_data")
        if getattr(config, key)
    }


__all__ = ["Datasets", "config_fingerprint", "data_fingerprint", "load_datasets", "split_indices"]
