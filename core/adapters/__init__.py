"""What every backend must agree on about a LoRA adapter, owned by the framework-free core.

- ``modules.py``: which linear layers LoRA adapts and their PEFT module paths;
- ``peft_format.py``: adapter_config.json and adapter_model.safetensors, read, checked and written;
- ``init.py``: the initial LoRA weights, drawn with numpy from (seed, module path);
- ``dropout.py``: the portable dropout mask, a counter-based hash every framework computes alike;
- ``optimizer_state.py``: AdamW's moments in one portable file format.

Because these live here, as numpy and plain integers, two backends given the same seed start
from the same adapter bit for bit, drop the same elements, write the same files and can resume
each other's checkpoints.
"""
