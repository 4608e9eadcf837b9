"""plain-torch: a LoRA backend in plain PyTorch (transformers for the base model, no peft).

Written only against the public API (``loraswitch.core.api``) and docs/plugins.md, as a
third-party package would be; tests/outside_plugin/test_plain_torch.py registers it through the
plugin manager and holds it to the torch backend's numbers. It is test code, not a product.
"""

from loraswitch.core.api import hookimpl


def _create():
    from .backend import PlainTorchBackend  # the framework is imported only when the backend is chosen

    return PlainTorchBackend()


@hookimpl
def register_backends(register):
    register(
        "plain-torch",
        _create,
        requires=("torch", "transformers"),
        description="LoRA in plain PyTorch on a transformers Llama (test plugin)",
    )
