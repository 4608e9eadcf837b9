"""The ``jax`` backend plugin: a hand-written Flax NNX decoder (Llama, Mistral, Qwen2, Qwen3) with LoRA and optax.MultiSteps.

Registered through the same hook as third-party backends. Nothing here imports jax: the
factory imports the backend module only once ``--backend jax`` is chosen.
"""

from loraswitch.core import hookimpl


def _create():
    import jax

    from loraswitch.backends.jax_flax.backend import JaxBackend
    from loraswitch.core.models.cache import compile_cache_dir

    # XLA's compiled programs persist between runs (jax's own cache, off unless configured), so a
    # second run of the same shapes skips most of its warm-up.
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(compile_cache_dir("jax")))
    return JaxBackend()


@hookimpl
def register_backends(register):
    register(
        "jax",
        _create,
        requires=("jax", "flax", "optax"),
        extra="jax",
        description="Flax NNX decoder (Llama/Mistral/Qwen) + hand-written LoRA, optax.MultiSteps; bf16 + cuDNN attention on GPU",
    )
