"""Build the peft model with its base weights sharded by FSDP2, never whole on one device.

Why not load, then shard: a model larger than one device cannot be loaded first. So the model
is built on the meta device (shapes only), its decoder layers are sharded with ``fully_shard``,
and only then is memory allocated (``to_empty``): each process reads from the safetensors files
just the rows of its own shards (``get_slice``), one tensor at a time.

The LoRA weights stay outside the sharding (``ignored_params``): whole on every process, fp32
under a bf16 base. peft creates them on the meta device with the base layers; ``to_empty``
allocates them and ``TorchBackend.load`` then copies in the core's initial adapter, exactly as on
one process. The embedding (tied to lm_head in many models) and lm_head stay whole too: the
chunked loss reads lm_head's weight directly.
"""

from __future__ import annotations

import torch
from safetensors import safe_open

from loraswitch.backends.torch_peft import adapter, random_init
from loraswitch.backends.torch_peft.model import (
    Placement,
    _hf_config,
    _model_class,
    _quiet_transformers,
    architecture_of,
    attention_implementation,
)
from loraswitch.backends.torch_peft.processes import ProcessGroup
from loraswitch.core.files.safetensors_file import read_header
from loraswitch.core.models import model_dir
from loraswitch.core.types import ModelSource


def load_sharded_peft_model(
    model: ModelSource, placement: Placement, lora_config, group: ProcessGroup
) -> torch.nn.Module:
    """The peft model on ``placement.device``, decoder layers sharded over ``group``; the LoRA
    weights allocated but not initialised (the caller copies the core's initial adapter in)."""
    from peft import get_peft_model
    from torch.distributed.fsdp import fully_shard

    model_dir.validate_model_dir(model.path, weights=not model.random_init)
    architecture = architecture_of(model)
    hf_config = _hf_config(model, architecture)
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    with _quiet_transformers(), torch.device("meta"):
        base = _model_class(architecture)._from_config(
            hf_config, dtype=placement.dtype, attn_implementation=attention_implementation(model)
        )
    base.requires_grad_(False)
    base.config.use_cache = False

    peft_model = get_peft_model(base, lora_config, autocast_adapter_dtype=True)
    lora = adapter.lora_parameters(peft_model)

    decoder = peft_model.get_base_model().model
    mesh = group.device_mesh()
    lora_set = set(lora.values())
    for layer in decoder.layers:
        fully_shard(layer, mesh=mesh, ignored_params=lora_set)
    fully_shard(decoder, mesh=mesh, ignored_params=lora_set | {decoder.embed_tokens.weight})

    peft_model.to_empty(device=placement.device)
    causal_lm = peft_model.get_base_model()
    if tied:  # to_empty gives every module its own storage; the head reads the embedding again
        head = causal_lm.lm_head
        getattr(head, "base_layer", head).weight = causal_lm.model.embed_tokens.weight
    _rebuild_buffers(causal_lm, placement.device)
    with torch.no_grad():
        if model.random_init:
            # each process draws only its own rows: the model every backend and device count draws
            random_init.fill_model(causal_lm, model.init_seed, lambda p: _local_rows(p)[:2])
        else:
            _load_shards(causal_lm, model)
    return peft_model


def _rebuild_buffers(causal_lm: torch.nn.Module, device: torch.device) -> None:
    """Buffers made on the meta device (rotary tables) hold garbage after to_empty: rebuild each
    such module from its config on the host and take its buffers."""
    for name, module in causal_lm.named_modules():
        own = dict(module.named_buffers(recurse=False))
        if not own:
            continue
        config = getattr(module, "config", None)
        if config is None:
            raise RuntimeError(f"sharded loading cannot rebuild the buffers of {name} ({type(module).__name__})")
        fresh = type(module)(config)
        for key in own:
            module._buffers[key] = fresh._buffers[key].to(device)
        for key, value in vars(fresh).items():  # plain attributes computed with the buffers (attention_scaling)
            if not key.startswith("_") and isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(module, key, value)


def _weight_key(name: str) -> str:
    """The safetensors key of a base parameter inside the peft model."""
    return name.replace(".base_layer.", ".")


def _local_rows(param: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(local tensor, first row, row count) of a parameter: sharded on dim 0 (FSDP2's torch.chunk
    layout) or whole."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(param, DTensor):
        return param, 0, param.shape[0] if param.dim() else 0
    local = param.to_local()
    start = 0
    for mesh_dim, placement in enumerate(param.placements):
        if isinstance(placement, Shard):
            if placement.dim != 0:
                raise RuntimeError(f"unexpected FSDP placement {placement}")
            chunk = -(-param.shape[0] // param.device_mesh.size(mesh_dim))
            start = chunk * param.device_mesh.get_local_rank(mesh_dim)
    return local, start, local.shape[0]


def _load_shards(causal_lm: torch.nn.Module, model: ModelSource) -> None:
    where: dict[str, object] = {}
    for file in model_dir.weight_files(model.path):
        for key in read_header(file):
            if key != "__metadata__":
                where[key] = file
    handles = {}
    try:
        for name, param in causal_lm.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                continue
            key = _weight_key(name)
            file = where[key]
            if file not in handles:
                handles[file] = safe_open(str(file), framework="pt", device="cpu")
            local, start, rows = _local_rows(param)
            if local.dim() == 0:
                local.copy_(handles[file].get_tensor(key))
            elif rows:
                local.copy_(handles[file].get_slice(key)[start : start + rows].to(local.dtype))
    finally:
        handles.clear()
