"""The names inside a run directory, in one place: every module that reads or writes a run
uses these constants, never the literals::

    config.yaml        the resolved config (what --resume reads)
    metrics.jsonl      one JSON object a line (written by the metrics_file plugin)
    summary.json       stop_reason, steps, epochs, losses, timings
    loss.png           the loss curve (loss_plot plugin)
    adapter/           the final adapter, PEFT format, plus loraswitch.json (what PEFT does not record)
    checkpoints/step-NNNNNN/{adapter/, backend_state/, trainer_state.json}
"""

from __future__ import annotations

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LOSS_PLOT = "loss.png"
ADAPTER = "adapter"
ADAPTER_SETTINGS = "loraswitch.json"  # inside an adapter directory: chat_template_kwargs
CHECKPOINTS = "checkpoints"
BACKEND_STATE = "backend_state"
TRAINER_STATE = "trainer_state.json"
KEEP_CHECKPOINTS = 2
MIN_FREE_BYTES = 64 * 1024 * 1024
CHECKPOINT_PREFIX, CHECKPOINT_TMP_PREFIX = "step-", ".tmp-step-"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"
