"""``loraswitch bench``: the same LoRA training job timed on every system, one process each.

The protocol (docs/benchmarks.md, "The protocol"): one settings object for all systems (same model
shape, data, hyperparameters and precision), warm-up excluded from the timing, and every speed
reported beside the loss it reached, because a fast step that computes the wrong loss is no win.

    loraswitch bench --shape llama-1b --systems torch,jax,hf-reference

Modules: ``protocol`` (settings, synthetic data, FLOPs), ``runner`` (one subprocess per system),
``worker`` (what runs inside that subprocess), ``hf_reference`` (plain transformers + peft, the
baseline), ``report`` (table, JSON, chart); the CLI subcommand is ``core/cli/commands/bench.py``. Nothing here imports
torch or jax at module level: the frameworks are imported only inside the worker process.
"""
