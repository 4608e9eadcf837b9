"""The public API for plugin authors: import everything a backend or an observer needs from here.

    from loraswitch.core.api import hookimpl, Backend, MicroStep, UserError, initial_adapter, ...

What is named here is the contract (docs/plugins.md describes each part); everything else in
``loraswitch.core`` may change between releases. Importing this module imports no framework.

- plugin hooks: ``hookimpl`` (the hook specifications are in ``loraswitch.core.hookspecs``);
- the backend contract: ``Backend``, ``LossValue``, the data it receives (``Batch``,
  ``MicroStep``, ``ModelSource``, ``TokenizedExample``, ``IGNORE_INDEX``), ``Config``, and
  ``RunContext`` for observers; ``UserError`` for anything the user can fix;
- the PEFT adapter format: ``AdapterConfig``, ``read_adapter_config``, ``check_matches_run``,
  ``read_adapter_weights``, ``write_adapter``, ``tensor_name``, ``expected_shapes``;
- the initial LoRA weights: ``lora_a``, ``initial_adapter``;
- the portable dropout: ``key_table``, ``element_hash``, ``threshold``, ``scale``, ``keep_mask``
  (the numpy reference), ``dropout_site``;
- LoRA modules and their names: ``PROJECTIONS``, ``module_path``, ``module_paths``,
  ``resolve_target_modules``;
- the optimizer: ``ADAMW_BETAS``, ``ADAMW_EPS``, ``AdamWState``, ``read_optimizer_state``,
  ``write_optimizer_state``;
- files: ``read_tensors``, ``write_tensors`` (safetensors), ``read_json_object``,
  ``atomic_write_bytes``, ``atomic_write_text``, ``atomic_write_json``;
- several processes or devices: ``Communicator``, ``mesh_sizes``, ``shard_rows``, ``check_divisible``.
"""

from __future__ import annotations

from loraswitch.core import hookimpl
from loraswitch.core.adapters.dropout import element_hash, keep_mask, key_table, scale, threshold
from loraswitch.core.adapters.init import initial_adapter, lora_a
from loraswitch.core.adapters.modules import (
    PROJECTIONS,
    dropout_site,
    module_path,
    module_paths,
    resolve_target_modules,
)
from loraswitch.core.adapters.optimizer_state import BETAS as ADAMW_BETAS
from loraswitch.core.adapters.optimizer_state import EPS as ADAMW_EPS
from loraswitch.core.adapters.optimizer_state import AdamWState
from loraswitch.core.adapters.optimizer_state import read_state as read_optimizer_state
from loraswitch.core.adapters.optimizer_state import write_state as write_optimizer_state
from loraswitch.core.adapters.peft_format import (
    AdapterConfig,
    check_matches_run,
    expected_shapes,
    read_adapter_config,
    read_adapter_weights,
    tensor_name,
    write_adapter,
)
from loraswitch.core.backend import Backend, LossValue
from loraswitch.core.config import Config
from loraswitch.core.errors import UserError
from loraswitch.core.files.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from loraswitch.core.files.json_file import read_json_object
from loraswitch.core.files.safetensors_file import read_tensors, write_tensors
from loraswitch.core.training.parallel import Communicator, check_divisible, mesh_sizes, shard_rows
from loraswitch.core.types import IGNORE_INDEX, Batch, MicroStep, ModelSource, RunContext, TokenizedExample

__all__ = [
    "ADAMW_BETAS",
    "ADAMW_EPS",
    "IGNORE_INDEX",
    "PROJECTIONS",
    "AdamWState",
    "AdapterConfig",
    "Backend",
    "Batch",
    "Communicator",
    "Config",
    "LossValue",
    "MicroStep",
    "ModelSource",
    "RunContext",
    "TokenizedExample",
    "UserError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_divisible",
    "check_matches_run",
    "dropout_site",
    "element_hash",
    "expected_shapes",
    "hookimpl",
    "initial_adapter",
    "keep_mask",
    "key_table",
    "lora_a",
    "mesh_sizes",
    "module_path",
    "module_paths",
    "read_adapter_config",
    "read_adapter_weights",
    "read_json_object",
    "read_optimizer_state",
    "read_tensors",
    "resolve_target_modules",
    "scale",
    "shard_rows",
    "tensor_name",
    "threshold",
    "write_adapter",
    "write_optimizer_state",
    "write_tensors",
]
