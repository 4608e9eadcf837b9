"""One model-directory rule set for every backend (core/models/model_dir.py).

Each damaged directory is handed straight to ``backend.load`` (as a model-source plugin could,
without the core's own source check): torch and jax must refuse it with the same one line. The
cases are the ones on which the backends used to disagree: a model_type that contradicts
architectures (torch trained it), integer weights (both trained zeros), an unexpected tensor
(torch refused it, jax ignored it), attention biases and a RoPE type jax does not implement
(jax refused them, torch trained them). A second test pins the core's tensor list to the one
transformers itself builds, so the core's rules cannot drift from the framework's model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from loraswitch.core.config import resolve
from loraswitch.core.errors import UserError
from loraswitch.core.models.families import spec_from_config
from loraswitch.core.models.random_model import write_random_model
from loraswitch.core.models.shapes import llama_config
from loraswitch.core.plugins import create_backend
from loraswitch.core.types import ModelSource

pytestmark = pytest.mark.usefixtures("isolated_env")


def edit_config(d, **changes):
    config = json.loads((d / "config.json").read_text())
    config.update(changes)
    (d / "config.json").write_text(json.dumps(config))


def edit_weights(d, edit):
    weights = load_file(str(d / "model.safetensors"))
    edit(weights)
    save_file(weights, str(d / "model.safetensors"), metadata={"format": "pt"})


CASES = {
    "model-type-contradicts": (
        lambda d: edit_config(d, model_type="gpt2"),
        "config.json: model_type 'gpt2' contradicts architectures ['LlamaForCausalLM']",
    ),
    "int-weights": (
        lambda d: edit_weights(d, lambda w: w.update({k: v.astype(np.int32) for k, v in w.items()})),
        "model.safetensors: tensor 'model.embed_tokens.weight' has dtype I32; base weights must be floating point",
    ),
    "unexpected-tensor": (
        lambda d: edit_weights(d, lambda w: w.update({"model.layers.0.mlp.extra.weight": np.zeros(4, np.float32)})),
        "model.safetensors: unexpected tensor 'model.layers.0.mlp.extra.weight'",
    ),
    "attention-bias": (
        lambda d: edit_config(d, attention_bias=True),
        "config.json: attention_bias = true is not supported",
    ),
    "pad-id-past-vocab": (
        lambda d: edit_config(d, pad_token_id=512),
        "config.json: key 'pad_token_id' = 512: token ids must be integers in [0, vocab_size 512)",
    ),
    "rope-yarn": (
        lambda d: edit_config(d, rope_scaling={"rope_type": "yarn", "factor": 4.0}),
        "config.json: rope type 'yarn' is not supported",
    ),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    base = write_random_model(tmp_path_factory.mktemp("rules") / "tiny", "tiny")
    out = {}
    for name, (damage, _) in CASES.items():
        d = base.parent / name
        shutil.copytree(base, d)
        damage(d)
        out[name] = d
    return out


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_backend_refuses_with_the_same_line(damaged, backend, case, tmp_path):
    pytest.importorskip({"torch": "transformers", "jax": "flax"}[backend])
    config = resolve(None, dict(backend=backend, model=str(damaged[case]), lora_r=4), environ={})
    with pytest.raises(UserError) as e:
        create_backend(backend).load(ModelSource(name="plugin:x", path=damaged[case]), config)
    assert str(e.value).startswith(f"{damaged[case]}/{CASES[case][1]}"), str(e.value)


@pytest.mark.parametrize(
    "config",
    [
        llama_config(64, 128, 2, 4, 2, 512, tied=False, rope_theta=1e4, dtype="float32"),
        llama_config(64, 96, 3, 8, 8, 300, tied=True, rope_theta=1e4, dtype="float32", head_dim=16, eos=[2, 258]),
        dict(
            llama_config(32, 64, 1, 4, 1, 100, tied=False, rope_theta=1e6, dtype="float32", bos=1, eos=2, pad=None),
            architectures=["MistralForCausalLM"],
            model_type="mistral",
            sliding_window=64,
        ),
    ],
    ids=["gqa-untied", "tied-explicit-head-dim", "mistral-mqa"],
)
def test_core_tensor_list_is_what_transformers_builds(config):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, config["architectures"][0])
    with torch.device("meta"):
        model = cls(cls.config_class(**config))
    built = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config["tie_word_embeddings"]:
        built.pop("lm_head.weight")
    assert spec_from_config(config, Path("config.json")).tensor_shapes() == built
