"""loraswitch-numpy: an example third-party backend plugin.

Installing this package is enough: its ``loraswitch`` entry point names this module, and
loraswitch calls the ``@hookimpl`` functions below. The backend class is imported only inside
the factory, as a real backend must do with its framework, so listing backends stays cheap.
"""

from loraswitch.core.api import hookimpl

__version__ = "0.1.0"


def _create():
    from .backend import NumpyBackend

    return NumpyBackend()


@hookimpl
def register_backends(register):
    register(
        "numpy",
        _create,
        requires=("numpy",),
        description="tiny numpy bigram model with a LoRA update (example plugin, for tests)",
    )
