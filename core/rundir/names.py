"""The names inside a run directory, in one place: every module that reads or writes a run
uses these constants, never the literals::

    config.yaml        the resolved config (what --resume reads)
    metrics.jsonl      one JSON object a line (written by the metrics_file plugin)
    summary.json       stop_reason, steps, epochs, losses, timings
    loss.png           the loss curve (loss_plot plugin)
    adapter/           the final adapter, PEFT format, plus loraswitch.json (what PEFT does not record)
    checkpoints/step-NNNNNN/{adapter/, backend_state/, trainer_state.json}
    checkpoints/set-aside-step-NNNNNN/   newer checkpoints that --resume_from passed over
    trackers.json      each experiment tracker's run id, so --resume continues the same tracker run
    tensorboard/       TensorBoard event files (report_to: tensorboard)
    mlflow.db          the MLflow store when MLFLOW_TRACKING_URI is not set (report_to: mlflow)
    wandb/             W&B's run files, offline runs included (report_to: wandb)
    samples.json       sample answers before and after training (written by the quickstart)
    quickstart.json    the quickstart's before/after exact match
    evaluation.jsonl   `loraswitch evaluate RUN_DIR`: one line per generated example (prediction, reference, metrics)
    evaluation.json    `loraswitch evaluate RUN_DIR`: the loss and each metric's mean
    report.html        `loraswitch report RUN_DIR`'s default output
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
TRACKERS = "trackers.json"
TENSORBOARD = "tensorboard"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
WANDB = "wandb"
SAMPLES = "samples.json"
QUICKSTART = "quickstart.json"
EVALUATION_EXAMPLES = "evaluation.jsonl"
EVALUATION = "evaluation.json"
REPORT = "report.html"
KEEP_CHECKPOINTS = 2
MIN_FREE_BYTES = 64 * 1024 * 1024
CHECKPOINT_PREFIX, CHECKPOINT_TMP_PREFIX = "step-", ".tmp-step-"
SET_ASIDE_PREFIX = "set-aside-"  # checkpoints that --resume_from passed over: kept, never read again


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"
