"""Answer metrics for ``loraswitch evaluate``: the ``register_metrics`` hook and the built-ins.

A metric is ``fn(prediction, reference) -> float`` on one example (the greedy answer and the
record's reference answer, both strings); evaluate reports its mean over the examples and
writes every example's value to the run directory. Plugins add metrics through the same hook
the built-ins use (core/hookspecs.py); this module is itself registered as a built-in plugin.

Built-ins:
- ``exact_match``: equal after stripping surrounding whitespace (strict on purpose: following
  an output format is the task, so a right answer wrapped in prose counts as wrong);
- ``json_valid``: the prediction parses as JSON (for tasks whose answers are JSON);
- ``token_f1``: SQuAD's token F1, the harmonic mean of precision and recall of the
  lower-cased whitespace tokens the prediction shares with the reference (partial credit).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loraswitch.core import hookimpl
from loraswitch.core.errors import UserError

Metric = Callable[[str, str], float]


@dataclass(frozen=True)
class MetricInfo:
    name: str
    fn: Metric
    plugin: str
    description: str = ""


def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


def json_valid(prediction: str, reference: str) -> float:
    try:
        json.loads(prediction)
    except (ValueError, RecursionError):
        return 0.0
    return 1.0


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = prediction.lower().split(), reference.lower().split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


@hookimpl
def register_metrics(register: Callable[..., None]) -> None:
    register("exact_match", exact_match, description="answer equals the reference (surrounding whitespace ignored)")
    register("json_valid", json_valid, description="answer parses as JSON")
    register("token_f1", token_f1, description="SQuAD token F1 against the reference")


def get_metrics() -> dict[str, MetricInfo]:
    """Every registered metric by name; a name registered twice is an error naming both plugins."""
    from loraswitch.core.plugins import get_plugin_manager

    metrics: dict[str, MetricInfo] = {}
    for impl in reversed(get_plugin_manager().hook.register_metrics.get_hookimpls()):

        def register(name: str, fn: Metric, *, description: str = "", _plugin: str = impl.plugin_name) -> None:
            if name in metrics:
                raise UserError(
                    f'metric "{name}" is registered by both plugin "{metrics[name].plugin}" and plugin "{_plugin}"'
                )
            if not callable(fn):
                raise UserError(f'plugin "{_plugin}": metric "{name}" is not callable')
            metrics[name] = MetricInfo(name, fn, _plugin, description)

        impl.function(register=register)
    return metrics


def choose_metrics(names: list[str] | None) -> dict[str, MetricInfo]:
    """The metrics ``--metrics`` names (all registered ones when None), unknown names refused."""
    metrics = get_metrics()
    if names is None:
        return metrics
    unknown = [n for n in names if n not in metrics]
    if unknown:
        raise UserError(f"--metrics: unknown metric {unknown[0]!r}; registered: {', '.join(sorted(metrics))}")
    return {n: metrics[n] for n in names}


def score(info: MetricInfo, prediction: str, reference: str, where: str) -> float:
    """One metric on one example; a plugin's metric that raises or returns a non-number is named."""
    try:
        value: Any = info.fn(prediction, reference)
        return float(value)
    except Exception as e:
        raise UserError(
            f'{where}: metric "{info.name}" of plugin "{info.plugin}" failed: {type(e).__name__}: {e}'
        ) from e
