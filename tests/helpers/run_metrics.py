"""Reading a run directory's metrics.jsonl the way resume-equivalence tests compare runs."""

from __future__ import annotations

import json
from pathlib import Path

# Wall-clock fields: they differ between two runs that are otherwise the same.
TIMING = {"elapsed_s", "tokens_per_s"}


def metrics_lines(run_dir: Path, events=("step", "eval")) -> list[dict]:
    """The metrics lines of the given events, in order, without their timing fields."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        obj = json.loads(line)
        if obj["event"] in events:
            out.append({k: v for k, v in obj.items() if k not in TIMING})
    return out
