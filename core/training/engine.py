"""The training loop: setup -> train -> save -> cleanup, read top to bottom.

The engine owns everything that must be identical on every backend: the split, the data order,
accumulation windows and their loss weights, the learning rate, evaluation, stopping and the run
directory. A backend only runs micro-steps. Run it with::

    loraswitch train examples/quickstart.yaml --backend numpy --n_steps 20
    loraswitch train --resume runs/run          # continue from the latest complete checkpoint

Resume replays the same state: the epoch order is a function of (seed, epoch), dropout keys of
(seed, step, micro), and the checkpoint holds the position inside the epoch; so a run killed at
any point and resumed ends with the same adapter bytes and metrics as one that never stopped.

Under torchrun (or any multi-process backend) every process runs this same loop on the same
global micro-batches; only the main process writes the run directory and calls the observer
plugins, and stop requests are agreed on by all processes (core/training/parallel.py).
"""
from __future__ import annotations

import itertools
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loraswitch.core.training import parallel
from loraswitch.core.training import kill_points
from loraswitch.core.rundir import checkpoints, layout, names
from loraswitch.core.files import atomic
from loraswitch.core.types import MicroStep
from loraswitch.core.data.batching import collate, epoch_order, pack
from loraswitch.core.config import Config, validate
from loraswitch.core.errors import UserError
from loraswitch.core.training.evaluation import PAD_TO_MULTIPLE, eval_loss
from loraswitch.core.training.interrupt import StopRequest
from loraswitch.core.plugins import call_hook, create_backend
from loraswitch.core.types import RunContext
from loraswitch.core.training.schedule import lr_at, plan_epoch, total_steps

STOP_REASONS = ("n_steps", "n_epochs", "stop_eval_loss", "non_finite_loss", "interrupted")
STATE_VERSION = 1


@dataclass
class TrainerState:
    """Where the loop is; saved as trainer_state.json in every checkpoint."""

    step: int = 0  # completed optimizer updates
    epoch: int = 0  # the epoch the next window belongs to
    window: int = 0  # index of the next window inside that epoch
    tokens: int = 0  # real (unpadded) training tokens seen
    elapsed_s: float = 0.0  # training wall time, summed over resumed sessions
    train_loss: float | None = None  # loss of the last completed step
    eval_loss: float | None = None  # last eval loss
    eval_step: int | None = None  # the step that eval was run at

    def epoch_progress(self, windows_per_epoch: int) -> float:
        return self.epoch + self.window / windows_per_epoch


def train(config: Config, *, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train ``config`` and return the summary (also written to summary.json).

    With ``resume=True``, ``config.output_dir`` is an existing run directory and ``config``
    should come from its config.yaml (see ``resume_config``)."""
    t_start = time.perf_counter()
    # Round-trip through validation so the run trains on exactly what config.yaml will give a
    # resumed run (pydantic leaves defaults unconverted: lora_alpha 64 vs 64.0 after a reload).
    config = validate(_absolute_paths(config).model_dump(), "config")
    run_dir = Path(config.output_dir)

    # ------------------------------------------------------------ setup: check before touching anything
    checkpoint, saved = None, None
    if resume:
        if not (run_dir / names.CONFIG).is_file():
            raise UserError(f"--resume {run_dir}: not a run directory (no {names.CONFIG})")
        checkpoint = checkpoints.resume_checkpoint(run_dir)
        saved = checkpoints.verify_checkpoint(checkpoint) if checkpoint else None
    else:
        layout.check_new_run(run_dir, overwrite=overwrite)
    layout.check_writable(run_dir)

    from loraswitch.core.data.dataset import data_fingerprint, load_datasets
    from loraswitch.core.models.sources import resolve_model
    from loraswitch.core.data.chat_tokenizer import ChatTokenizer

    source = resolve_model(config.model)
    tokenizer = ChatTokenizer.from_dir(source.path)
    data = load_datasets(config, tokenizer)
    fingerprint = {key: data_fingerprint(getattr(config, key)) for key in ("data", "validation_data") if getattr(config, key)}
    # Packing happens once, before shuffling: the rows are then fixed, so the epoch plan (and a
    # resumed run's position in it) does not depend on the order.
    rows = pack(data.train, config.max_seq_len) if config.packing else data.train
    windows = plan_epoch(len(rows), config.batch_size, config.accumulation_steps)  # the same every epoch
    windows_per_epoch = len(windows)
    if saved is not None:
        _check_checkpoint_matches(saved, config, fingerprint, checkpoint, windows_per_epoch)

    backend = create_backend(config.backend)
    backend.load(source, config)
    comm = parallel.communicator_of(backend)
    parallel.activate(comm)
    parallel.check_divisible(config.batch_size, comm.data_parallel_size)
    main = comm.rank == 0
    if resume and comm.any_true(saved is None) and comm.any_true(saved is not None):
        raise UserError(f"--resume {run_dir}: some processes see a checkpoint there and others do not; "
                        "put output_dir on a filesystem every host shares")

    def notify(hook: str, **kwargs: Any) -> None:
        """Observer plugins run on the main process only: one metrics file, one progress bar."""
        if main:
            call_hook(hook, **kwargs)

    description = backend.describe()
    trainable = int(description.get("params_trainable") or 0)
    # adapter + two AdamW moments in fp32, for each kept checkpoint, a new one and the final adapter
    layout.check_writable(run_dir, names.MIN_FREE_BYTES + 12 * trainable * (names.KEEP_CHECKPOINTS + 2))

    state = TrainerState()
    if saved is not None:
        backend.load_adapter(checkpoint / names.ADAPTER)
        backend.load_state(checkpoint / "backend_state")
        state = TrainerState(**{k: saved[k] for k in asdict(state)})
    comm.barrier()  # every process has read the checkpoint and passed its checks before rank 0 writes
    if main:
        if resume:
            layout.remove_leftovers(run_dir)
            layout.truncate_metrics(run_dir, state.step)
        else:
            layout.clear_run_dir(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
        layout.write_config(run_dir, config.model_dump())

    run = RunContext(config=config, run_dir=run_dir, backend=config.backend,
                     total_steps=total_steps(config, len(rows)), steps_per_epoch=windows_per_epoch,
                     start_step=state.step, resumed=resume and saved is not None, quiet=quiet,
                     info={"backend": description, "model": source.name, "n_train": len(data.train),
                           "n_train_rows": len(rows), "n_validation": len(data.validation),
                           "n_truncated": data.n_truncated, "n_dropped": data.n_dropped})
    if not quiet and main:
        _print_header(run, state)
    notify("on_run_start", run=run)
    setup_s = time.perf_counter() - t_start

    # ------------------------------------------------------------ train
    pad_id = tokenizer.pad_id
    saved_key = (state.step, state.eval_step) if saved is not None else None
    tokens_at_start, t_loop = state.tokens, time.perf_counter()
    elapsed_before = state.elapsed_s
    reason: str | None = None
    stop_signal: str | None = None
    bad: tuple[int, float] | None = None  # (step, value) of a non-finite loss

    def elapsed() -> float:
        return elapsed_before + (time.perf_counter() - t_loop)

    def run_eval() -> bool:
        """Evaluate at state.step; False if interrupted part way (nothing recorded then)."""
        batch_index = itertools.count()  # should_stop is polled once before each eval batch

        def should_stop() -> bool:
            kill_points.reached("eval", state.step, "batch", next(batch_index))
            return comm.any_true(stop.requested)

        result = eval_loss(backend, data.validation, batch_size=config.batch_size, pad_id=pad_id,
                           max_len=config.max_seq_len, max_batches=config.eval_batches, should_stop=should_stop)
        if result is None:
            return False
        state.eval_loss, state.eval_step = result[0], state.step
        if math.isfinite(result[0]):
            notify("on_eval", run=run, metrics={
                "event": "eval", "step": state.step, "epoch": state.epoch_progress(windows_per_epoch),
                "eval_loss": result[0], "eval_tokens": result[1], "elapsed_s": elapsed()})
        return True

    def save_checkpoint() -> None:
        nonlocal saved_key
        state.elapsed_s = elapsed()
        trainer_state = dict(asdict(state), version=STATE_VERSION, backend=config.backend, model=config.model,
                             data_sha256=fingerprint)

        def fill(tmp: Path) -> None:
            backend.save_adapter(tmp / names.ADAPTER)
            kill_points.reached("checkpoint", state.step, "adapter")
            backend.save_state(tmp / "backend_state")

        # The adapter and optimizer state are whole on every process: rank 0 writes them; the
        # others wait, so nobody moves on (or reads) before the checkpoint is complete.
        if main:
            path = checkpoints.write_checkpoint(run_dir, state.step, _mkdirs_then(fill), trainer_state)
            checkpoints.prune_checkpoints(run_dir)
            notify("on_checkpoint", run=run, step=state.step, path=path)
        comm.barrier()
        saved_key = (state.step, state.eval_step)

    def after_step() -> str | None:
        """Eval, stop checks and checkpoint for the step just completed (or resumed at)."""
        nonlocal bad
        limit = _limit_reached(state, config)
        if (state.step % config.eval_every == 0 or limit) and state.eval_step != state.step and state.step > 0:
            if not run_eval():
                return None  # interrupted mid-eval; the resumed run evaluates this step again
        result = limit
        if state.eval_step == state.step and state.eval_loss is not None:
            if not math.isfinite(state.eval_loss):
                bad = (state.step, state.eval_loss)
                return "non_finite_loss"
            if result is None and state.eval_loss < config.stop_eval_loss:
                result = "stop_eval_loss"
        if (state.step % config.save_every == 0 or result) and saved_key != (state.step, state.eval_step) and state.step > 0:
            save_checkpoint()
        return result

    with StopRequest() as stop:
        reason = after_step()  # a resumed run may stop at once, or owe the eval of its step
        order = epoch_order(len(rows), config.seed, state.epoch)
        while reason is None and not comm.any_true(stop.requested):
            window = windows[state.window]
            t_step = time.perf_counter()
            batches = [collate([rows[order[i]] for i in r], config.batch_size, pad_id, PAD_TO_MULTIPLE,
                               config.max_seq_len) for r in window]
            # The loss is a token mean over the whole window, not a mean of micro-batch means.
            weight = 1.0 / max(1, sum(b.n_targets for b in batches))
            lr = lr_at(state.step, config)
            contributions = []
            for j, b in enumerate(batches):
                kill_points.reached("step", state.step + 1, "micro", j)
                contributions.append(backend.micro_step(MicroStep(batch=b, weight=weight, apply_update=j == len(batches) - 1,
                                                                  lr=lr, step=state.step, micro=j, window_size=len(batches))))
            loss = sum(float(c) for c in contributions)  # one host sync per step
            kill_points.reached("step", state.step + 1, "applied")
            if not math.isfinite(loss):
                reason, bad = "non_finite_loss", (state.step + 1, loss)
                break
            step_tokens = sum(b.n_tokens for b in batches)
            state.step += 1
            state.window += 1
            if state.window == windows_per_epoch:
                state.epoch, state.window = state.epoch + 1, 0
                order = epoch_order(len(rows), config.seed, state.epoch)
            state.tokens += step_tokens
            state.train_loss = loss
            step_s = time.perf_counter() - t_step
            notify("on_step_end", run=run, metrics={
                "event": "step", "step": state.step, "epoch": state.epoch_progress(windows_per_epoch),
                "loss": loss, "lr": lr, "tokens": state.tokens,
                "tokens_per_s": step_tokens / step_s if step_s > 0 else 0.0, "elapsed_s": elapsed()})
            reason = after_step()
        if reason is None:  # the signal arrived; record the last completed step
            reason, stop_signal = "interrupted", stop.signal_name
            if state.step > 0 and saved_key != (state.step, state.eval_step):
                save_checkpoint()

    # ------------------------------------------------------------ save
    train_s = time.perf_counter() - t_loop
    latest = checkpoints.latest_complete_checkpoint(run_dir)
    adapter_step = None
    if latest is not None:
        # The final adapter is the last complete checkpoint's: after a non-finite loss that is
        # the last good state, never the diverged weights still in the backend.
        if main:
            atomic.replace_dir(run_dir / names.ADAPTER,
                               lambda tmp: shutil.copytree(latest / names.ADAPTER, tmp, dirs_exist_ok=True))
        adapter_step = checkpoints.read_trainer_state(latest)["step"]
    summary = {
        "stop_reason": reason,
        "steps": state.step,
        "epochs": state.epoch_progress(windows_per_epoch),
        "final_eval_loss": _finite_or_none(state.eval_loss),
        "final_train_loss": _finite_or_none(state.train_loss),
        "eval_step": state.eval_step,
        "adapter_step": adapter_step,
        "backend": config.backend,
        "backend_description": description,
        "model": config.model,
        "n_train": len(data.train),
        "n_validation": len(data.validation),
        "n_truncated": data.n_truncated,
        "n_dropped": data.n_dropped,
        "tokens": state.tokens,
        "timings": {
            "setup_s": setup_s,
            "train_s": train_s,
            "total_s": time.perf_counter() - t_start,
            "tokens_per_s": (state.tokens - tokens_at_start) / train_s if train_s > 0 else 0.0,
        },
    }
    if bad is not None:
        summary["non_finite_step"], summary["non_finite_value"] = bad[0], repr(bad[1])
    if stop_signal:
        summary["signal"] = stop_signal
    kill_points.reached("final", "summary")
    if main:
        layout.write_summary(run_dir, summary)

    # ------------------------------------------------------------ cleanup
    notify("on_run_end", run=run, summary=summary)
    comm.barrier()  # train() returns on every process once the run directory is final
    return summary


def _mkdirs_then(fill):
    """Give the backend existing adapter/ and backend_state/ directories to write into."""
    def wrapped(tmp: Path) -> None:
        (tmp / names.ADAPTER).mkdir()
        (tmp / "backend_state").mkdir()
        fill(tmp)
    return wrapped


def _absolute_paths(config: Config) -> Config:
    """Data files and a local model directory as absolute paths, so --resume and
    ``loraswitch evaluate RUN_DIR`` work from any working directory (a no-op when resuming:
    config.yaml already holds them)."""
    update = {k: str(Path(getattr(config, k)).resolve()) for k in ("data", "validation_data") if getattr(config, k)}
    if Path(config.model).expanduser().is_dir():
        update["model"] = str(Path(config.model).expanduser().resolve())
    return config.model_copy(update=update)


def _limit_reached(state: TrainerState, config: Config) -> str | None:
    if state.step >= config.n_steps:
        return "n_steps"
    if state.epoch >= config.n_epochs:
        return "n_epochs"
    return None


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _check_checkpoint_matches(saved: dict[str, Any], config: Config, fingerprint: dict[str, str], checkpoint: Path,
                              windows_per_epoch: int) -> None:
    """A checkpoint from another backend, model or data set cannot continue this run."""
    where = checkpoint / names.TRAINER_STATE
    if saved.get("version") != STATE_VERSION:
        raise UserError(f"{where}: trainer state version {saved.get('version')!r}, expected {STATE_VERSION}")
    for key in ("backend", "model"):
        if saved.get(key) != getattr(config, key):
            raise UserError(f"{where}: checkpoint was written by {key} {saved.get(key)!r}, but the run uses "
                            f"{getattr(config, key)!r}; resume with the same {key}")
    if saved.get("data_sha256") != fingerprint:
        raise UserError(f"{where}: the data files changed since this checkpoint was written; resuming would "
                        "not continue the same run (restore the data or start a new run)")
    missing = [k for k in asdict(TrainerState()) if k not in saved]
    if missing:
        raise UserError(f"{where}: missing keys {', '.join(missing)}")
    for key in ("step", "epoch", "window", "tokens"):
        if not isinstance(saved[key], int) or isinstance(saved[key], bool) or saved[key] < 0:
            raise UserError(f"{where}: {key} = {saved[key]!r}: must be a non-negative integer")
    for key in ("elapsed_s", "train_loss", "eval_loss"):
        if not (isinstance(saved[key], (int, float)) or (saved[key] is None and key != "elapsed_s")):
            raise UserError(f"{where}: {key} = {saved[key]!r}: must be a number")
    if saved["eval_step"] is not None and not isinstance(saved["eval_step"], int):
        raise UserError(f"{where}: eval_step = {saved['eval_step']!r}: must be an integer or null")
    if saved["window"] >= windows_per_epoch:
        raise UserError(f"{where}: window = {saved['window']} but an epoch of this run has {windows_per_epoch} windows")


def _print_header(run: RunContext, state: TrainerState) -> None:
    info = run.info
    what = f"resuming at step {state.step}" if run.resumed else "training"
    print(f"loraswitch: {what} {info['model']} on backend {run.backend} "
          f"({info['n_train']} train / {info['n_validation']} validation examples, "
          f"{info['n_truncated']} truncated, up to {run.total_steps} steps) -> {run.run_dir}", file=sys.stderr)


# ---------------------------------------------------------------- resume: whose config wins

# mesh places the run on devices without changing its arithmetic, so a resumed run may use another one.
EXTENDABLE = ("n_steps", "n_epochs", "eval_every", "save_every", "mesh")


def resume_config(run_dir: str | Path, cli: dict[str, Any] | None = None, *, quiet: bool = False) -> Config:
    """The config of a run being resumed: its config.yaml wins, except the step budget and
    cadences (EXTENDABLE) which the command line may change; anything else the command line
    tries to change is reported in one line and ignored."""
    run_dir = Path(run_dir)
    values = layout.read_run_config(run_dir)
    values["output_dir"] = str(run_dir)
    cli = dict(cli or {})
    cli.pop("output_dir", None)
    ignored = []
    for key, value in cli.items():
        if key in EXTENDABLE:
            values[key] = value
        elif values.get(key) != value:
            ignored.append(key)
    config = validate(values, str(run_dir / names.CONFIG))
    if ignored and not quiet:
        print(f"loraswitch: resuming {run_dir}: its config.yaml wins for {', '.join(ignored)} "
              f"(only {', '.join(EXTENDABLE)} may change on resume)", file=sys.stderr)
    return config
