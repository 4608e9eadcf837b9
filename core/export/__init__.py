"""Merge and export: from a PEFT adapter and its base to a model other runtimes load.

Framework-free (numpy, safetensors, and the ``gguf`` and ``sentencepiece`` packages for GGUF files):

- ``adapter_source.py``  reading a PEFT LoRA adapter (any backend's files) for merging
- ``fingerprint.py``     the base-weights fingerprint adapters record, and its check
- ``tensors.py``         a model directory's safetensors, read one tensor (or row block) at a time
- ``shards.py``          sharded safetensors written tensor by tensor, with the index
- ``merge.py``           the merge plan (W + scale * B @ A per target) and the merged directory
- ``gguf_families.py``   per-architecture GGUF facts: the one table a model family adds to
- ``gguf_vocab.py``      tokenizer.json -> GGUF tokenizer metadata (byte-level BPE), and which path a model takes
- ``gguf_spm_vocab.py``  tokenizer.model -> GGUF tokenizer metadata (SentencePiece, llama.cpp's ``llama``)
- ``gguf_export.py``     the merged model as one GGUF, and the adapter alone as a LoRA GGUF
- ``outputs.py``         outputs written under a temporary name and renamed at the end

Nothing here imports gguf or sentencepiece at module import time: ``loraswitch merge`` needs only numpy.
"""
