"""A run directory read back for the report: its config, metrics, summary and samples.

Only files the run directory contract names (core/rundir/names.py) are read, and a run still in
progress or killed is fine: metrics.jsonl is read up to its last complete line and a missing
summary.json or samples.json is simply absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import read_json_object
from loraswitch.core.rundir import layout, names


@dataclass
class Run:
    path: Path
    label: str  # how charts and tables name the run: its directory name, made unique among the runs shown
    config: dict[str, Any]
    steps: list[dict[str, Any]]  # metrics.jsonl step lines, one per step, in step order
    evals: list[dict[str, Any]]  # metrics.jsonl eval lines, one per step, in step order
    summary: dict[str, Any] | None  # summary.json; None while running or after a kill
    samples: dict[str, Any] | None  # samples.json (quickstart): before/after answers

    def tokens_at(self, step: int) -> int | None:
        """Training tokens seen after ``step`` (for drawing evals against tokens)."""
        for line in self.steps:
            if line["step"] == step:
                return line.get("tokens")
        return None


def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Step and eval lines of metrics.jsonl; a torn last line is skipped and, should a step
    appear twice, the later line wins (the engine truncates on resume, so it does not)."""
    path = run_dir / names.METRICS
    by_event: dict[str, dict[int, dict[str, Any]]] = {"step": {}, "eval": {}}
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") in by_event and isinstance(record.get("step"), int):
                by_event[record["event"]][record["step"]] = record
    steps, evals = by_event["step"], by_event["eval"]
    return [steps[s] for s in sorted(steps)], [evals[s] for s in sorted(evals)]


def load_run(path: str | Path) -> Run:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found")
    config = layout.read_run_config(run_dir)
    steps, evals = read_metrics(run_dir)
    summary = _optional_json(run_dir / names.SUMMARY)
    samples = _optional_json(run_dir / names.SAMPLES)
    return Run(run_dir, run_dir.name, config, steps, evals, summary, samples)


def _optional_json(path: Path) -> dict[str, Any] | None:
    return read_json_object(path) if path.exists() else None


def load_runs(paths: list[str | Path]) -> list[Run]:
    """The runs in the order given, each labelled by the shortest path tail that tells it apart."""
    if not paths:
        raise UserError("report: give at least one run directory")
    runs = [load_run(p) for p in paths]
    resolved = [r.path.resolve() for r in runs]
    if len(set(resolved)) < len(resolved):
        raise UserError("report: the same run directory is given twice")
    depth = 1
    while len({"/".join(p.parts[-depth:]) for p in resolved}) < len(resolved):
        depth += 1  # distinct resolved paths differ somewhere, so this ends
    for run, path in zip(runs, resolved):
        run.label = "/".join(path.parts[-depth:])
    return runs
