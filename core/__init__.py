"""loraswitch's framework-free core: schema, data, engine, plugin contract.

Importing this package never imports torch, jax or flax; a test checks it.
Plugins need one import: ``from loraswitch.core import hookimpl``.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("loraswitch")

__all__ = ["hookimpl", "__version__"]
