"""The ``torch`` backend: a transformers Llama-family model with a peft LoRA.

This module only registers the backend. torch, transformers and peft are imported by the
factory, when a run chooses ``--backend torch``, so listing backends stays fast and works
where torch is not installed.
"""

from __future__ import annotations

from loraswitch.core import hookimpl


def _create_torch_backend():
    import os

    from loraswitch.core.models.cache import compile_cache_dir

    # torch.compile's cold warm-up (90 s for llama-1b on an H200) is paid once: inductor's FX
    # graph and autograd caches live in the user cache directory, not a /tmp a reboot clears.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir("torch"))
    from loraswitch.backends.torch_peft.backend import TorchBackend  # heavy imports happen here, only when chosen

    return TorchBackend.from_environment()


@hookimpl
def register_backends(register):
    register(
        "torch",
        _create_torch_backend,
        requires=("torch", "transformers", "peft"),
        extra="torch",
        description="PyTorch + transformers + peft LoRA; bf16 on CUDA, fp32 on CPU; SDPA attention; optional torch.compile",
    )
