"""Shows training progress: a rich progress bar on a terminal (step/total, loss, lr, tokens/s,
ETA), a plain line every ``log_every`` steps when the output is not a terminal (CI logs, pipes),
and nothing when the run is quiet.

It writes to stderr, like the engine's header line, so stdout stays free for the machine
readable output of a command. Its one piece of state, the live bar of each run, is kept in this
module, which is registered under its name ``loraswitch.plugins.progress``; unregister that name
to replace the display.
"""

from __future__ import annotations

import sys
from typing import Any

from loraswitch.core import hookimpl

_bars: dict[int, Any] = {}  # id(run) -> rich Progress, while that run is going


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _stats(m: dict[str, Any]) -> str:
    return (
        f"loss {_fmt(m.get('loss'), '.4f')}  lr {_fmt(m.get('lr'), '.2e')}  {_fmt(m.get('tokens_per_s'), ',.0f')} tok/s"
    )


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@hookimpl
def on_run_start(run):
    if run.quiet or not sys.stderr.isatty():
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn(f"[bold]{run.backend}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    bar.add_task("train", total=run.total_steps, completed=run.start_step, stats="")
    bar.start()
    _bars[id(run)] = bar


@hookimpl
def on_step_end(run, metrics):
    bar = _bars.get(id(run))
    if bar is not None:
        bar.update(bar.task_ids[0], completed=metrics.get("step", 0), stats=_stats(metrics))
    elif not run.quiet and metrics.get("step", 0) % run.config.log_every == 0:
        _say(
            f"step {metrics.get('step')}/{run.total_steps}  epoch {_fmt(metrics.get('epoch'), '.2f')}  {_stats(metrics)}"
        )


@hookimpl
def on_eval(run, metrics):
    if run.quiet:
        return
    line = (
        f"eval at step {metrics.get('step')}: loss {_fmt(metrics.get('eval_loss'), '.4f')} "
        f"over {metrics.get('eval_tokens')} tokens"
    )
    bar = _bars.get(id(run))
    if bar is not None:
        bar.console.print(line, highlight=False)  # printed above the live bar, which stays at the bottom
    else:
        _say(line)


@hookimpl
def on_run_end(run, summary):
    bar = _bars.pop(id(run), None)
    if bar is not None:
        bar.stop()  # the engine prints the one-line outcome itself
