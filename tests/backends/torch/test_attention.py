"""The torch backend's SDPA kernel preference (LORASWITCH_TORCH_ATTENTION): parsed strictly,
a no-op off CUDA, and on CUDA a priority order that puts the chosen kernel first and restores
torch's own order afterwards."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from loraswitch.backends.torch_peft.attention import attention_choice, attention_context  # noqa: E402
from loraswitch.core.errors import UserError  # noqa: E402


def test_cpu_keeps_torch_default(monkeypatch):
    monkeypatch.setenv("LORASWITCH_TORCH_ATTENTION", "cudnn")
    assert attention_choice(torch.device("cpu")) == "default"


def test_unknown_choice_is_a_user_error(monkeypatch):
    monkeypatch.setenv("LORASWITCH_TORCH_ATTENTION", "fastest")
    with pytest.raises(UserError, match="LORASWITCH_TORCH_ATTENTION='fastest'"):
        attention_choice(torch.device("cpu"))


@pytest.mark.parametrize("choice", ["cudnn", "flash"])
def test_context_puts_the_choice_first_and_restores(choice):
    from torch.nn.attention import SDPBackend

    before = torch._C._get_sdp_priority_order()
    with attention_context(choice)():
        first = torch._C._get_sdp_priority_order()[0]
    assert first == int({"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[choice])
    assert torch._C._get_sdp_priority_order() == before
