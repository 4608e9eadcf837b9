"""The ``jax`` backend plugin: a hand-written Flax NNX decoder (Llama, Mistral, Qwen2, Qwen3) with LoRA and optax.MultiSteps.

Registered through the same hook as third-party backends. Nothing here imports jax: the
factory imports the backend module only once ``--backend jax`` is chosen.
"""

from loraswitch.core import hookimpl


def _create():
    from loraswitch.backends.jax_flax.backend import JaxBackend

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
