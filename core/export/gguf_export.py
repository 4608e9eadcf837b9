"""Write GGUF files with the gguf package's GGUFWriter: the merged model as one GGUF, and the
adapter alone as a llama.cpp LoRA GGUF.

Model GGUF: every tensor of the merge plan under its GGUF name (``gguf.TensorNameMap``), with
the family's row permutation (Llama q/k), in the requested type. Following llama.cpp's
converter, 1-D tensors and biases stay F32, and a matrix whose rows are not a multiple of the
Q8_0 block (32) falls back to F16. Tensors are computed one at a time while the file is written
(header and tensor infos first, then the data), so memory holds one tensor, not the model.

LoRA GGUF: what llama.cpp's convert_lora_to_gguf.py writes: ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``, and for each target ``<gguf name>.lora_a``
(PEFT's A, [r, in]) and ``.lora_b`` (B, [out, r], rows permuted like the base weight). llama.cpp
scales by alpha / r, so an rsLoRA adapter (alpha / sqrt(r)) is written with alpha * sqrt(r).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from loraswitch.core.errors import UserError
from loraswitch.core.export.gguf_families import GGUFFamily, family_for
from loraswitch.core.export.merge import LM_HEAD, MergePlan, Planned
from loraswitch.core.export.outputs import staged_file

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
LORA_DTYPES = ("f32", "f16", "bf16")
_SKIPPED = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved; llama.cpp computes them


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType
    data: Callable[[], np.ndarray]  # computed when written

    @property
    def nbytes(self) -> int:
        return gguf_nbytes(self.shape, self.qtype)


def gguf_nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=np.int64)) // block * size


def gguf_qtype(name: str, shape: tuple[int, ...], dtype: str) -> Any:
    import gguf

    T = gguf.GGMLQuantizationType
    if len(shape) <= 1 or not name.endswith((".weight", ".lora_a", ".lora_b")):
        return T.F32
    wanted = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}[dtype]
    if wanted == T.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0]:
        return T.F16  # as llama.cpp's converter falls back
    return wanted


def encode(array: np.ndarray, qtype: Any) -> np.ndarray:
    import gguf

    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def _file_type(dtype: str) -> int:
    import gguf

    F = gguf.LlamaFileType
    return int({"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0}[dtype])


def new_writer(path: Path | None, arch: str) -> Any:
    """A gguf.GGUFWriter that also writes empty arrays (the package refuses them, but a BPE
    tokenizer without merges still needs the ``tokenizer.ggml.merges`` key for llama.cpp)."""
    import gguf

    class Writer(gguf.GGUFWriter):
        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if vtype == gguf.GGUFValueType.ARRAY and sub_type is not None and len(val) == 0:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer(path, arch)


def write_gguf_file(
    out: Path,
    arch: str,
    metadata: Callable[[Any], None],
    tensors: list[GGUFTensor],
    before_write: Callable[[], None] | None = None,
) -> None:
    """Collect the metadata and tensor infos (every check runs here, before any file exists),
    call ``before_write``, then stage, write each tensor's data as it is computed, rename."""
    writer = new_writer(None, arch)
    metadata(writer)
    for t in tensors:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
    if before_write is not None:
        before_write()
    with staged_file(out) as tmp:
        try:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t in tensors:
                writer.write_tensor_data(t.data())
        finally:
            writer.close()


# ---------------------------------------------------------------- the merged model


def gguf_name(tmap: Any, hf_name: str, arch: str) -> str:
    name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise UserError(f"tensor {hf_name!r} has no GGUF name for architecture {arch!r} (gguf package's TensorNameMap)")
    return name


def model_tensors(plan: MergePlan, family: GGUFFamily, dtype: str) -> list[GGUFTensor]:
    import gguf

    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[family.arch]
    tmap = gguf.get_tensor_name_map(arch, plan.config["num_hidden_layers"])
    out = [
        GGUFTensor(
            name,
            tuple(array.shape),
            gguf.GGMLQuantizationType.F32,
            partial(encode, array, gguf.GGMLQuantizationType.F32),
        )
        for name, array in family.extra_tensors(plan.config)
    ]
    for p in plan.tensors:
        if p.name.endswith(_SKIPPED):
            continue
        if family.values is not None:
            for hf_name, array in family.values(p.name, plan.float32(p), plan.config):
                name = gguf_name(tmap, hf_name, family.arch)
                qtype = gguf_qtype(name, array.shape, dtype)
                out.append(GGUFTensor(name, tuple(array.shape), qtype, partial(encode, array, qtype)))
            continue
        name = gguf_name(tmap, p.name, family.arch)
        shape = plan.base.entries[p.source].shape
        qtype = gguf_qtype(name, shape, dtype)
        out.append(GGUFTensor(name, shape, qtype, partial(_merged_data, plan, family, p, qtype)))
    return out


def _merged_data(plan: MergePlan, family: GGUFFamily, p: Planned, qtype: Any) -> np.ndarray:
    rows = family.rows(p.name, plan.config)
    if rows is not None:
        return encode(rows(plan.float32(p)), qtype)
    # row blocks encode independently (Q8_0 blocks run along a row), so only the output is held whole
    shape = plan.base.entries[p.source].shape
    out = np.empty(gguf_nbytes(shape, qtype), np.uint8)
    pos = 0
    for block in plan.blocks(p, "F32"):
        data = encode(block, qtype).view(np.uint8).reshape(-1)
        out[pos : pos + data.size] = data
        pos += data.size
    return out


def export_gguf(
    plan: MergePlan, out: Path, dtype: str, name: str, before_write: Callable[[], None] | None = None
) -> int:
    """Write the planned (merged) model as one GGUF file; returns the number of tensors."""
    from loraswitch.core.export.gguf_vocab import add_tokenizer

    if dtype not in GGUF_DTYPES:
        raise UserError(f"--dtype {dtype}: unknown for GGUF; choose one of {', '.join(GGUF_DTYPES)}")
    family = family_for(plan.config)
    tensors = model_tensors(plan, family, dtype)

    def metadata(w: Any) -> None:
        w.add_type("model")
        w.add_name(name)
        w.add_quantization_version(_quant_version())
        w.add_file_type(_file_type(dtype))
        family.hparams(w, plan.config)
        add_tokenizer(w, plan.base_dir, plan.config["vocab_size"])

    write_gguf_file(out, family.arch, metadata, tensors, before_write)
    return len(tensors)


def _quant_version() -> int:
    import gguf

    return int(gguf.GGML_QUANT_VERSION)


# ---------------------------------------------------------------- the adapter alone


def lora_alpha_for_llama_cpp(plan: MergePlan) -> float:
    """llama.cpp scales a LoRA by alpha / r; this alpha gives peft's scale (rsLoRA included)."""
    assert plan.adapter is not None
    return plan.adapter.scale * plan.adapter.r


def lora_tensors(plan: MergePlan, family: GGUFFamily, dtype: str) -> list[GGUFTensor]:
    import gguf

    assert plan.adapter is not None
    if family.values is not None and not family.values_spare_linears:
        raise UserError(
            f"architecture {family.arch!r} changes tensor values on export; a LoRA GGUF cannot follow it, merge instead"
        )
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[family.arch]
    tmap = gguf.get_tensor_name_map(arch, plan.config["num_hidden_layers"])
    out = []
    for p in plan.tensors:
        if p.lora is None:
            continue
        if p.name == LM_HEAD and plan.untied:
            raise UserError(
                f"{plan.adapter.weights_file}: a LoRA on lm_head of a model with tied embeddings cannot be a llama.cpp "
                "LoRA (llama.cpp applies it to the shared matrix); use --format gguf, which merges it"
            )
        a, b = plan.adapter.modules[p.lora]
        rows = family.rows(p.name, plan.config)
        b = rows(b) if rows is not None else b
        base = gguf_name(tmap, p.name, family.arch)
        for suffix, array in ((".lora_a", a), (".lora_b", b)):
            qtype = gguf_qtype(base + suffix, array.shape, dtype)
            out.append(GGUFTensor(base + suffix, tuple(array.shape), qtype, partial(encode, array, qtype)))
    return out


def export_gguf_lora(
    plan: MergePlan, out: Path, dtype: str, name: str, before_write: Callable[[], None] | None = None
) -> int:
    """Write the adapter of ``plan`` as a llama.cpp LoRA GGUF; returns the number of tensors."""
    import gguf

    if dtype not in LORA_DTYPES:
        raise UserError(f"--dtype {dtype}: unknown for gguf-lora; choose one of {', '.join(LORA_DTYPES)}")
    family = family_for(plan.config)
    tensors = lora_tensors(plan, family, dtype)
    alpha = lora_alpha_for_llama_cpp(plan)

    def metadata(w: Any) -> None:
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        w.add_name(name)
        w.add_quantization_version(_quant_version())
        w.add_file_type(_file_type(dtype))

    write_gguf_file(out, family.arch, metadata, tensors, before_write)
    return len(tensors)
