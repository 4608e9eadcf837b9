"""What ``merge`` and ``export`` share: RUN_DIR | --adapter DIR [--model SOURCE], resolved to an
adapter and a base directory with weights on disk, the base checked against the adapter's
fingerprint, and the gguf package's install hint.

The base is, in order: --model; the run's model (RUN_DIR); the base the adapter names
(base_model_name_or_path) when that is a local directory, builtin: or random: source. A
directory is used as it is (merging checks every tensor it touches), so a family the trainer
does not load yet still merges.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from loraswitch.core.errors import UserError

INSTALL_HINT = "pip install 'loraswitch[export]'"


@dataclass
class Inputs:
    adapter_dir: Path | None
    base_dir: Path
    base_label: str
    fingerprint: str | None
    warning: str | None = None  # shown once the inputs are known to be usable

    def warn(self) -> None:
        if self.warning:
            print(f"warning: {self.warning}", file=sys.stderr)


def add_input_arguments(p) -> None:
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run directory (its adapter/ and model)")
    p.add_argument("--adapter", metavar="DIR", help="a PEFT adapter directory (instead of RUN_DIR)")
    p.add_argument(
        "--model",
        metavar="SOURCE",
        help="the base: a directory, builtin:NAME or random:SHAPE (default: the run's, else the adapter's base)",
    )
    p.add_argument("--out", required=True, metavar="PATH", help="where to write (must not exist, unless --overwrite)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out if it exists (only once the new output is complete)"
    )
    p.add_argument(
        "--force", action="store_true", help="merge even if the base's fingerprint differs from the adapter's"
    )


def resolve_inputs(args, *, adapter_required: bool = True) -> Inputs:
    from loraswitch.core.cli.commands._inference import locate_adapter
    from loraswitch.core.export.fingerprint import base_fingerprint, check_base

    if args.run_dir is not None and args.adapter is not None:
        raise UserError(f"{args._command}: give RUN_DIR or --adapter DIR, not both")
    if args.run_dir is None and args.adapter is None and (adapter_required or args.model is None):
        raise UserError(
            f"{args._command}: give RUN_DIR or --adapter DIR" + ("" if adapter_required else " (or --model alone)")
        )
    adapter_dir, run_values = locate_adapter(args.run_dir or args.adapter)
    base_dir, label = resolve_base(args.model, run_values.get("model"), adapter_dir)
    if adapter_dir is None:
        return Inputs(None, base_dir, label, base_fingerprint(base_dir))
    warning = check_base(adapter_dir, base_dir, label, force=args.force)
    return Inputs(adapter_dir, base_dir, label, base_fingerprint(base_dir), warning)


def resolve_base(model: str | None, run_model: str | None, adapter_dir: Path | None) -> tuple[Path, str]:
    from loraswitch.core.models.sources import resolve_model

    source = model or run_model
    if source is None and adapter_dir is not None:
        named = _adapter_base(adapter_dir)
        if named and (named.startswith(("random:", "builtin:")) or Path(named).expanduser().is_dir()):
            source = named
        elif named:
            raise UserError(
                f"{adapter_dir / 'adapter_config.json'}: the base {named!r} is not a local directory, builtin: or random: "
                "source; give --model SOURCE"
            )
    if source is None:
        raise UserError("--model: the adapter does not name its base; give --model SOURCE")
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve(), source
    resolved = resolve_model(source)
    if resolved.random_init:
        raise UserError(
            f"model: {source} has no weights on disk (its backend draws them at load); merging needs safetensors"
        )
    return Path(resolved.path), source


def _adapter_base(adapter_dir: Path) -> str | None:
    from loraswitch.core.files.json_file import read_json_object

    config = read_json_object(
        adapter_dir / "adapter_config.json", if_missing="--adapter must be a PEFT adapter directory"
    )
    base = config.get("base_model_name_or_path")
    return base if isinstance(base, str) and base else None


def read_adapter(adapter_dir: Path):
    from loraswitch.core.export.adapter_source import read_lora_adapter

    return read_lora_adapter(adapter_dir)


def require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise UserError(f"export: writing GGUF needs the gguf package; install it with: {INSTALL_HINT}") from e
