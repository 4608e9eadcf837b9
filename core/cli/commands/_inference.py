"""Load a model (and optionally an adapter) for generation or evaluation, outside a run.

The LoRA shape must match the adapter before its weights can load, so r, alpha, target modules
and rsLoRA are read from the adapter's own adapter_config.json (PEFT format, any backend), and
the chat template arguments it was trained with from its loraswitch.json; the config is built
from them before ``backend.load(source, config, train=False)``.
When ``adapter`` is a run directory, its adapter/ and its config.yaml's model and backend are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraswitch.core.adapters.peft_format import read_adapter_config
from loraswitch.core.errors import UserError
from loraswitch.core.rundir.adapter_settings import read_adapter_settings


def adapter_settings(adapter_dir: Path) -> dict[str, Any]:
    """Config keys for the LoRA layers an adapter was trained with (core/adapters/peft_format.py:
    peft's defaults for absent keys), plus ``base_model`` when the adapter names one."""
    adapter = read_adapter_config(adapter_dir)
    out: dict[str, Any] = {**adapter.run_values(), "lora_dropout": 0.0}
    if adapter.base_model_name_or_path:
        out["base_model"] = adapter.base_model_name_or_path
    out.update(read_adapter_settings(adapter_dir))
    return out


def template_kwargs_option(text: str | None) -> dict[str, Any]:
    """``--chat_template_kwargs '{enable_thinking: false}'`` as config values ({} when absent)."""
    if text is None:
        return {}
    from loraswitch.core.config import parse_cli_overrides

    return parse_cli_overrides(["--chat_template_kwargs", text])


def add_template_kwargs_argument(parser) -> None:
    parser.add_argument(
        "--chat_template_kwargs",
        metavar="MAPPING",
        help="chat template arguments, e.g. '{enable_thinking: false}' (default: those the adapter was trained with)",
    )


def locate_adapter(path: str | None) -> tuple[Path | None, dict[str, Any]]:
    """(adapter directory, the run's config values if ``path`` is a run directory)."""
    if path is None:
        return None, {}
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"--adapter: {p} is not a directory")
    from loraswitch.core.rundir import layout, names

    if (p / names.CONFIG).is_file():
        run_values = layout.read_run_config(p)
        if not (p / names.ADAPTER).is_dir():
            raise UserError(f"{p}: run directory has no {names.ADAPTER}/ yet (the run wrote no checkpoint)")
        return p / names.ADAPTER, run_values
    return p, {}


def load_for_inference(
    *, model: str | None, backend_name: str | None, adapter: str | None, extra: dict[str, Any] | None = None
):
    """(backend, tokenizer, config) ready for generate/eval_loss, adapter loaded if given."""
    from loraswitch.core.config import Config, validate
    from loraswitch.core.data.chat_tokenizer import ChatTokenizer
    from loraswitch.core.models.sources import resolve_model
    from loraswitch.core.plugins import create_backend

    adapter_dir, run_values = locate_adapter(adapter)
    values: dict[str, Any] = {k: v for k, v in run_values.items() if k in Config.model_fields}
    if model:
        values["model"] = model
    if backend_name:
        values["backend"] = backend_name
    if adapter_dir is not None:
        settings = adapter_settings(adapter_dir)
        # an adapter outside a run names its base model, as PEFT records it; a hub id (not
        # downloadable here) falls back to the default model
        base = settings.get("base_model") or ""
        if "model" not in values and (base.startswith(("random:", "builtin:")) or Path(base).is_dir()):
            values["model"] = base
        values.update({k: v for k, v in settings.items() if k != "base_model"})
    values.update(extra or {})  # explicit options (--chat_template_kwargs) win over what was recorded
    values["lora_dropout"] = 0.0
    config = validate(values, "options")
    source = resolve_model(config.model)
    tokenizer = ChatTokenizer.from_dir(source.path, config.chat_template_kwargs)
    backend = create_backend(config.backend)
    backend.load(source, config, train=False)
    if adapter_dir is not None:
        backend.load_adapter(adapter_dir)
    return backend, tokenizer, config
