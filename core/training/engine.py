"""The training loop as a recipe: setup -> train -> save -> cleanup, each phase one method.

The engine owns everything that must be identical on every backend: the split, the data order,
accumulation windows and their loss weights, the learning rate, evaluation, stopping and the run
directory. A backend only runs micro-steps. Run it with::

    loraswitch train examples/quickstart.yaml --backend numpy --n_steps 20
    loraswitch train --resume runs/run          # continue from the latest complete checkpoint

Resume replays the same state: the epoch order is a function of (seed, epoch), dropout keys of
(seed, step, micro), and the checkpoint holds the position inside the epoch; so a run killed at
any point and resumed ends with the same adapter bytes and metrics as one that never stopped.
A run may also resume on another backend (``--resume RUN --backend jax``): the adapter and the
AdamW state are in formats every backend reads (core/adapters/).

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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraswitch.core.config import Config, validate
from loraswitch.core.errors import UserError
from loraswitch.core.files import atomic
from loraswitch.core.files.paths import resolved
from loraswitch.core.plugins import call_hook, check_trackers, create_backend
from loraswitch.core.rundir import checkpoints, layout, names
from loraswitch.core.rundir.adapter_settings import write_adapter_settings
from loraswitch.core.training import kill_points, parallel
from loraswitch.core.training.evaluation import eval_loss
from loraswitch.core.training.interrupt import StopRequest
from loraswitch.core.training.schedule import lr_at, plan_epoch, total_steps
from loraswitch.core.training.state import TrainerState, check_checkpoint_matches
from loraswitch.core.training.stopping import StopReason, limit_reached
from loraswitch.core.types import Batch, MicroStep, RunContext

if TYPE_CHECKING:
    from loraswitch.core.data.batching import Row


def train(
    config: Config,
    *,
    resume: bool = False,
    resume_from: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train ``config`` and return the summary (also written to summary.json).

    With ``resume=True``, ``config.output_dir`` is an existing run directory and ``config``
    should come from its config.yaml (see ``resume_config``); it continues from the newest
    checkpoint, or from ``resume_from`` (``step-NNNNNN``) when that one is damaged."""
    recipe = Recipe(config, resume=resume, resume_from=resume_from, overwrite=overwrite, quiet=quiet)
    recipe.setup()
    with StopRequest() as stop:
        reason = recipe.train(stop)
    summary = recipe.save(reason)
    recipe.cleanup(summary)
    return summary


class Recipe:
    """One run. ``setup`` checks everything before touching the run directory, loads data and
    backend and restores a checkpoint; ``train`` runs windows until a stop reason; ``save``
    writes the final adapter and summary.json; ``cleanup`` tells the observers and waits for the
    other processes. Each phase can be driven (and tested) alone."""

    def __init__(
        self,
        config: Config,
        *,
        resume: bool = False,
        resume_from: str | None = None,
        overwrite: bool = False,
        quiet: bool = False,
    ):
        if resume_from is not None and not resume:
            raise UserError("--resume_from needs --resume RUN_DIR")
        self.t_start = time.perf_counter()
        # Round-trip through validation so the run trains on exactly what config.yaml will give a
        # resumed run (pydantic leaves defaults unconverted: lora_alpha 64 vs 64.0 after a reload).
        self.config = validate(_absolute_paths(config).model_dump(), "config")
        self.run_dir = Path(self.config.output_dir)
        self.resume, self.resume_from, self.overwrite, self.quiet = resume, resume_from, overwrite, quiet
        self.passed_over: tuple[Path, ...] = ()  # newer checkpoints --resume_from sets aside
        self.state = TrainerState()
        self.checkpoint: Path | None = None  # the checkpoint a resumed run continues from
        self.saved: dict[str, Any] | None = None  # its trainer_state.json
        self.saved_key: tuple[int, int | None] | None = None  # (step, eval_step) last checkpointed
        self.bad: tuple[int, float] | None = None  # (step, value) of a non-finite loss
        self.stop_signal: str | None = None
        self._order: tuple[int, Any] = (-1, None)  # (epoch, that epoch's order), computed once per epoch

    # ------------------------------------------------------------ setup

    def setup(self) -> None:
        self._check_run_dir()
        self._load_data()
        self._load_backend()
        self._restore()
        self._prepare_run_dir()
        self.run = RunContext(
            config=self.config,
            run_dir=self.run_dir,
            backend=self.config.backend,
            total_steps=total_steps(self.config, len(self.rows)),
            steps_per_epoch=self.windows_per_epoch,
            start_step=self.state.step,
            resumed=self.saved is not None,
            quiet=self.quiet,
            info={
                "backend": self.description,
                "model": self.source.name,
                "n_train": len(self.data.train),
                "n_train_rows": len(self.rows),
                "n_validation": len(self.data.validation),
                "n_truncated": self.data.n_truncated,
                "n_dropped": self.data.n_dropped,
            },
        )
        if not self.quiet and self.main:
            _print_header(self.run, self.state)
        self.notify("on_run_start", run=self.run)
        self.setup_s = time.perf_counter() - self.t_start

    def _check_run_dir(self) -> None:
        """Bad input never costs an existing run: every check runs before anything is written."""
        check_trackers(self.config.report_to)
        if self.resume:
            if not (self.run_dir / names.CONFIG).is_file():
                raise UserError(f"--resume {self.run_dir}: not a run directory (no {names.CONFIG})")
            found = checkpoints.resume_checkpoint(self.run_dir, self.resume_from)
            self.checkpoint, self.saved, self.passed_over = found.checkpoint, found.state, found.passed_over
        else:
            layout.check_new_run(self.run_dir, overwrite=self.overwrite)
        layout.check_writable(self.run_dir)

    def _load_data(self) -> None:
        from loraswitch.core.data.batching import pack
        from loraswitch.core.data.chat_tokenizer import ChatTokenizer
        from loraswitch.core.data.dataset import config_fingerprint, load_datasets
        from loraswitch.core.models.sources import resolve_model

        config = self.config
        self.source = resolve_model(config.model)
        self.tokenizer = ChatTokenizer.from_dir(self.source.path, config.chat_template_kwargs)
        self.data = load_datasets(config, self.tokenizer)
        self.fingerprint = config_fingerprint(config)
        # Packing happens once, before shuffling: the rows are then fixed, so the epoch plan (and a
        # resumed run's position in it) does not depend on the order.
        self.rows: Sequence[Row] = pack(self.data.train, config.max_seq_len) if config.packing else self.data.train
        self.windows = plan_epoch(len(self.rows), config.batch_size, config.accumulation_steps)  # every epoch
        self.windows_per_epoch = len(self.windows)
        if self.saved is not None:
            assert self.checkpoint is not None
            check_checkpoint_matches(self.saved, self._identity(), self.checkpoint, self.windows_per_epoch)

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must share with the run that resumes it."""
        return {"backend": self.config.backend, "model": self.config.model, "data_sha256": self.fingerprint}

    def _load_backend(self) -> None:
        self.backend = create_backend(self.config.backend)
        self.backend.load(self.source, self.config)
        self.comm = parallel.communicator_of(self.backend)
        parallel.activate(self.comm)
        parallel.check_divisible(self.config.batch_size, self.comm.data_parallel_size)
        self.main = self.comm.rank == 0
        if self.resume and self.comm.any_true(self.saved is None) and self.comm.any_true(self.saved is not None):
            raise UserError(
                f"--resume {self.run_dir}: some processes see a checkpoint there and others do not; "
                "put output_dir on a filesystem every host shares"
            )
        self.description = self.backend.describe()
        trainable = int(self.description.get("params_trainable") or 0)
        # adapter + two AdamW moments in fp32, for each kept checkpoint, a new one and the final adapter
        need = names.MIN_FREE_BYTES + 12 * trainable * (names.KEEP_CHECKPOINTS + 2)
        layout.check_writable(self.run_dir, need)

    def _restore(self) -> None:
        if self.saved is None:
            return
        assert self.checkpoint is not None
        written_by = self.saved.get("backend")
        if written_by != self.config.backend and self.main and not self.quiet:
            print(
                f"loraswitch: {self.checkpoint.name} was written by backend {written_by}; continuing on backend "
                f"{self.config.backend} (adapter and AdamW state are backend-independent)",
                file=sys.stderr,
            )
        self.backend.load_adapter(self.checkpoint / names.ADAPTER)
        self.backend.load_state(self.checkpoint / names.BACKEND_STATE)
        self.state = TrainerState.from_saved(self.saved)
        self.saved_key = (self.state.step, self.state.eval_step)

    def _prepare_run_dir(self) -> None:
        self.comm.barrier()  # every process has read the checkpoint and passed its checks before rank 0 writes
        if not self.main:
            return
        if self.resume:
            for moved in checkpoints.set_aside(self.passed_over):
                if not self.quiet:
                    print(
                        f"loraswitch: --resume_from: set {moved.name[len(names.SET_ASIDE_PREFIX) :]} aside as {moved}",
                        file=sys.stderr,
                    )
            layout.remove_leftovers(self.run_dir)
            layout.truncate_metrics(self.run_dir, self.state.step)
        else:
            layout.clear_run_dir(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
        layout.write_config(self.run_dir, self.config.model_dump())

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Observer plugins run on the main process only: one metrics file, one progress bar."""
        if self.main:
            call_hook(hook, **kwargs)

    # ------------------------------------------------------------ train

    def train(self, stop: StopRequest) -> StopReason:
        """Windows until a stop reason; a stop request is honoured at window boundaries."""
        self.stop = stop
        self.tokens_at_start, self.t_loop = self.state.tokens, time.perf_counter()
        self.elapsed_before = self.state.elapsed_s
        reason = self.after_step()  # a resumed run may stop at once, or owe the eval of its step
        while reason is None and not self.comm.any_true(stop.requested):
            reason = self.run_window() or self.after_step()
        if reason is None:  # the signal arrived; record the last completed step
            reason, self.stop_signal = StopReason.INTERRUPTED, stop.signal_name
            if self.state.step > 0 and self.saved_key != (self.state.step, self.state.eval_step):
                self.save_checkpoint()
        self.train_s = time.perf_counter() - self.t_loop
        return reason

    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.t_loop)

    def window_batches(self) -> list[Batch]:
        """The micro-batches of the next window, in this epoch's order."""
        from loraswitch.core.data.batching import collate, epoch_order, grouped_order

        config, state = self.config, self.state
        if self._order[0] != state.epoch:
            if config.group_by_length:
                lengths = [len(row.input_ids) for row in self.rows]
                order = grouped_order(lengths, config.batch_size, config.seed, state.epoch)
            else:
                order = epoch_order(len(self.rows), config.seed, state.epoch)
            self._order = (state.epoch, order)
        order = self._order[1]
        pad_id, multiple = self.tokenizer.pad_id, config.pad_to_multiple_of
        return [
            collate([self.rows[order[i]] for i in r], config.batch_size, pad_id, multiple, config.max_seq_len)
            for r in self.windows[state.window]
        ]

    def run_window(self) -> StopReason | None:
        """One optimizer step over the next window; NON_FINITE_LOSS if its loss is not finite."""
        state = self.state
        t_step = time.perf_counter()
        batches = self.window_batches()
        # The loss is a token mean over the whole window, not a mean of micro-batch means.
        weight = 1.0 / max(1, sum(b.n_targets for b in batches))
        lr = lr_at(state.step, self.config)
        contributions = []
        for j, b in enumerate(batches):
            kill_points.reached("step", state.step + 1, "micro", j)
            micro = MicroStep(
                batch=b,
                weight=weight,
                apply_update=j == len(batches) - 1,
                lr=lr,
                step=state.step,
                micro=j,
                window_size=len(batches),
            )
            contributions.append(self.backend.micro_step(micro))
        loss = sum(float(c) for c in contributions)  # one host sync per step
        kill_points.reached("step", state.step + 1, "applied")
        if not math.isfinite(loss):
            self.bad = (state.step + 1, loss)
            return StopReason.NON_FINITE_LOSS
        step_tokens = sum(b.n_tokens for b in batches)
        state.step, state.window = state.step + 1, state.window + 1
        if state.window == self.windows_per_epoch:
            state.epoch, state.window = state.epoch + 1, 0
        state.tokens += step_tokens
        state.train_loss = loss
        step_s = time.perf_counter() - t_step
        metrics = {
            "event": "step",
            "step": state.step,
            "epoch": state.epoch_progress(self.windows_per_epoch),
            "loss": loss,
            "lr": lr,
            "tokens": state.tokens,
            "tokens_per_s": step_tokens / step_s if step_s > 0 else 0.0,
            "elapsed_s": self.elapsed(),
        }
        self.notify("on_step_end", run=self.run, metrics=metrics)
        return None

    def after_step(self) -> StopReason | None:
        """Eval, stop checks and checkpoint for the step just completed (or resumed at)."""
        state, config = self.state, self.config
        limit = limit_reached(state, config)
        if (state.step % config.eval_every == 0 or limit) and state.eval_step != state.step and state.step > 0:
            if not self.evaluate():
                return None  # interrupted mid-eval; the resumed run evaluates this step again
        result = limit
        if state.eval_step == state.step and state.eval_loss is not None:
            if not math.isfinite(state.eval_loss):
                self.bad = (state.step, state.eval_loss)
                return StopReason.NON_FINITE_LOSS
            if result is None and state.eval_loss < config.stop_eval_loss:
                result = StopReason.STOP_EVAL_LOSS
        due = state.step % config.save_every == 0 or result is not None
        if due and self.saved_key != (state.step, state.eval_step) and state.step > 0:
            self.save_checkpoint()
        return result

    def evaluate(self) -> bool:
        """Evaluate at state.step; False if interrupted part way (nothing recorded then)."""
        state = self.state
        batch_index = itertools.count()  # should_stop is polled once before each eval batch

        def should_stop() -> bool:
            kill_points.reached("eval", state.step, "batch", next(batch_index))
            return self.comm.any_true(self.stop.requested)

        result = eval_loss(
            self.backend,
            self.data.validation,
            batch_size=self.config.batch_size,
            pad_id=self.tokenizer.pad_id,
            max_len=self.config.max_seq_len,
            max_batches=self.config.eval_batches,
            should_stop=should_stop,
            pad_to_multiple=self.config.pad_to_multiple_of,
        )
        if result is None:
            return False
        state.eval_loss, state.eval_step = result[0], state.step
        if math.isfinite(result[0]):
            self.notify(
                "on_eval",
                run=self.run,
                metrics={
                    "event": "eval",
                    "step": state.step,
                    "epoch": state.epoch_progress(self.windows_per_epoch),
                    "eval_loss": result[0],
                    "eval_tokens": result[1],
                    "elapsed_s": self.elapsed(),
                },
            )
        return True

    def save_checkpoint(self) -> None:
        state, backend = self.state, self.backend
        state.elapsed_s = self.elapsed()

        def fill(tmp: Path) -> None:
            (tmp / names.ADAPTER).mkdir()
            (tmp / names.BACKEND_STATE).mkdir()
            backend.save_adapter(tmp / names.ADAPTER)
            write_adapter_settings(tmp / names.ADAPTER, self.config.chat_template_kwargs)
            kill_points.reached("checkpoint", state.step, "adapter")
            backend.save_state(tmp / names.BACKEND_STATE)

        # The adapter and optimizer state are whole on every process: rank 0 writes them; the
        # others wait, so nobody moves on (or reads) before the checkpoint is complete.
        if self.main:
            path = checkpoints.write_checkpoint(self.run_dir, state.step, fill, state.to_saved(**self._identity()))
            checkpoints.prune_checkpoints(self.run_dir)
            self.notify("on_checkpoint", run=self.run, step=state.step, path=path)
        self.comm.barrier()
        self.saved_key = (state.step, state.eval_step)

    # ------------------------------------------------------------ save

    def save(self, reason: StopReason) -> dict[str, Any]:
        """The final adapter (the last complete checkpoint's) and summary.json."""
        latest = checkpoints.latest_complete_checkpoint(self.run_dir)
        adapter_step = None
        if latest is not None:
            # After a non-finite loss that is the last good state, never the diverged weights
            # still in the backend.
            if self.main:
                atomic.replace_dir(
                    self.run_dir / names.ADAPTER,
                    lambda tmp: shutil.copytree(latest / names.ADAPTER, tmp, dirs_exist_ok=True),
                )
            adapter_step = (checkpoints.read_trainer_state(latest) or {}).get("step")
        summary = self.summary(reason, adapter_step)
        kill_points.reached("final", "summary")
        if self.main:
            layout.write_summary(self.run_dir, summary)
        return summary

    def summary(self, reason: StopReason, adapter_step: int | None) -> dict[str, Any]:
        state, data = self.state, self.data
        summary: dict[str, Any] = {
            "stop_reason": str(reason),
            "steps": state.step,
            "epochs": state.epoch_progress(self.windows_per_epoch),
            "final_eval_loss": _finite_or_none(state.eval_loss),
            "final_train_loss": _finite_or_none(state.train_loss),
            "eval_step": state.eval_step,
            "adapter_step": adapter_step,
            "backend": self.config.backend,
            "backend_description": self.description,
            "model": self.config.model,
            "n_train": len(data.train),
            "n_validation": len(data.validation),
            "n_truncated": data.n_truncated,
            "n_dropped": data.n_dropped,
            "tokens": state.tokens,
            "timings": {
                "setup_s": self.setup_s,
                "train_s": self.train_s,
                "total_s": time.perf_counter() - self.t_start,
                "tokens_per_s": (state.tokens - self.tokens_at_start) / self.train_s if self.train_s > 0 else 0.0,
            },
        }
        if self.bad is not None:
            summary["non_finite_step"], summary["non_finite_value"] = self.bad[0], repr(self.bad[1])
        if self.stop_signal:
            summary["signal"] = self.stop_signal
        return summary

    # ------------------------------------------------------------ cleanup

    def cleanup(self, summary: dict[str, Any]) -> None:
        self.notify("on_run_end", run=self.run, summary=summary)
        self.comm.barrier()  # train() returns on every process once the run directory is final


def _absolute_paths(config: Config) -> Config:
    """Data files and a local model directory as absolute paths, so --resume and
    ``loraswitch evaluate RUN_DIR`` work from any working directory (a no-op when resuming:
    config.yaml already holds them)."""
    from loraswitch.core.data.sources import absolute_source

    update = {k: absolute_source(getattr(config, k)) for k in ("data", "validation_data") if getattr(config, k)}
    if Path(config.model).expanduser().is_dir():
        update["model"] = str(resolved(config.model))
    return config.model_copy(update=update)


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _print_header(run: RunContext, state: TrainerState) -> None:
    info = run.info
    what = f"resuming at step {state.step}" if run.resumed else "training"
    print(
        f"loraswitch: {what} {info['model']} on backend {run.backend} "
        f"({info['n_train']} train / {info['n_validation']} validation examples, "
        f"{info['n_truncated']} truncated, up to {run.total_steps} steps) -> {run.run_dir}",
        file=sys.stderr,
    )


# ---------------------------------------------------------------- resume: whose config wins

# mesh places the run on devices without changing its arithmetic, and every backend computes the
# same numbers from the same adapter and AdamW state (core/adapters/), so a resumed run may use
# another mesh or another backend.
EXTENDABLE = ("n_steps", "n_epochs", "eval_every", "save_every", "mesh", "backend")


def resume_config(run_dir: str | Path, cli: dict[str, Any] | None = None, *, quiet: bool = False) -> Config:
    """The config of a run being resumed: its config.yaml wins, except the step budget, the
    cadences, the mesh and the backend (EXTENDABLE), which the command line may change; anything
    else the command line tries to change is reported in one line and ignored."""
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
        print(
            f"loraswitch: resuming {run_dir}: its config.yaml wins for {', '.join(ignored)} "
            f"(only {', '.join(EXTENDABLE)} may change on resume)",
            file=sys.stderr,
        )
    return config
