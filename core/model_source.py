"""What a backend is told about the model to load: always a Hugging Face style directory."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelSource:
    """A resolved model source.

    ``path`` holds config.json, tokenizer.json and tokenizer_config.json (with the chat
    template). It holds *.safetensors weights unless ``random_init`` is True, in which case the
    backend initialises random weights of that config itself, seeded by ``init_seed`` (used for
    large benchmark shapes that are not worth writing to disk).
    """

    name: str
    path: Path
    random_init: bool = False
    init_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())
