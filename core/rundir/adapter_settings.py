"""``loraswitch.json`` in an adapter directory: what the adapter was trained with that
adapter_config.json (PEFT's file) has no key for, so ``generate`` and ``evaluate`` of a bare
adapter directory use the same. Today: ``chat_template_kwargs`` (Qwen3's ``enable_thinking``...).

peft ignores files it does not know, so the directory still loads with
``PeftModel.from_pretrained``. An adapter without the file (written by peft or an older
loraswitch) reads as having been trained with no template arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.files.atomic import atomic_write_json
from loraswitch.core.files.json_file import read_json_object
from loraswitch.core.rundir.names import ADAPTER_SETTINGS


def write_adapter_settings(adapter_dir: Path, chat_template_kwargs: dict[str, Any]) -> None:
    atomic_write_json(adapter_dir / ADAPTER_SETTINGS, {"chat_template_kwargs": chat_template_kwargs})


def read_adapter_settings(adapter_dir: Path) -> dict[str, Any]:
    """Config values recorded with the adapter ({} when it has no loraswitch.json)."""
    path = adapter_dir / ADAPTER_SETTINGS
    if not path.is_file():
        return {}
    recorded = read_json_object(path)
    kwargs = recorded.get("chat_template_kwargs", {})
    if not isinstance(kwargs, dict):
        raise UserError(f"{path}: chat_template_kwargs must be a JSON object, got {type(kwargs).__name__}")
    return {"chat_template_kwargs": kwargs}
