"""What observer plugins are told about the run in progress."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config


@dataclass
class RunContext:
    """Shared, read-only for plugins: the resolved config, where the run directory is, and the
    step budget (for progress bars and ETAs)."""

    config: Config
    run_dir: Path
    backend: str
    total_steps: int  # min(n_steps, n_epochs x steps_per_epoch)
    steps_per_epoch: int
    start_step: int = 0  # > 0 when resumed
    resumed: bool = False
    quiet: bool = False  # no progress bar (tests, --quiet)
    info: dict[str, Any] = field(default_factory=dict)  # backend.describe(), dataset stats
