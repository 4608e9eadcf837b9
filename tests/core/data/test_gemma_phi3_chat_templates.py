"""The Gemma and Phi-3 chat templates (core/models/families/templates/gemma.jinja, phi3.jinja):
rendering equals transformers' own ``apply_chat_template``, and the loss mask covers exactly each
answer and its end-of-turn marker (``<end_of_turn>``, ``<|end|>``), which is also a stop id.

Gemma has no system role: the template (Gemma 3's, as released) prepends a system message to the
first user turn, separated by a blank line. Phi-3's renders ``<|system|>`` as a turn of its own.
"""

from __future__ import annotations

import pytest

from loraswitch.core.data.chat_tokenizer import ChatTokenizer
from loraswitch.core.data.jsonl import Message
from loraswitch.core.models.random_model import write_random_model


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return {
        name: write_random_model(tmp_path_factory.mktemp(name), f"tiny-{name}", with_weights=False)
        for name in ("gemma3", "phi3")
    }


def chat(*turns):
    return [{"role": r, "content": c} for r, c in turns]


CONVERSATION = chat(
    ("system", "be brief"), ("user", "2+2?"), ("assistant", "four"), ("user", "3+3?"), ("assistant", "six")
)


@pytest.mark.parametrize("name", ["gemma3", "phi3"])
def test_rendering_equals_transformers(model_dirs, name):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(model_dirs[name]))
    ours = ChatTokenizer.from_dir(model_dirs[name])
    for messages in (CONVERSATION, CONVERSATION[1:3], CONVERSATION[:2]):
        for prompt in (False, True):
            expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            got = ours.render([Message(m["role"], m["content"]) for m in messages], add_generation_prompt=prompt)
            assert got == expected


def encode(tok, messages):
    example, _ = tok.encode_record({"messages": messages}, 1000)
    text = tok.decode(example.input_ids, skip_special_tokens=False)
    targets = tok.decode(example.input_ids[example.loss_mask], skip_special_tokens=False)
    return text, targets


def test_gemma_system_message_joins_the_first_user_turn_and_masks_answers(model_dirs):
    tok = ChatTokenizer.from_dir(model_dirs["gemma3"])
    text, targets = encode(tok, CONVERSATION)
    assert text == (
        "<|endoftext|><start_of_turn>user\nbe brief\n\n2+2?<end_of_turn>\n<start_of_turn>model\nfour<end_of_turn>\n"
        "<start_of_turn>user\n3+3?<end_of_turn>\n<start_of_turn>model\nsix<end_of_turn>\n"
    )
    assert targets == "four<end_of_turn>six<end_of_turn>"
    assert tok._tok.token_to_id("<end_of_turn>") in tok.eos_ids  # generation stops at the end of the turn


def test_phi3_masks_answers_and_end(model_dirs):
    tok = ChatTokenizer.from_dir(model_dirs["phi3"])
    text, targets = encode(tok, CONVERSATION)
    assert text == (
        "<|system|>\nbe brief<|end|>\n<|user|>\n2+2?<|end|>\n<|assistant|>\nfour<|end|>\n"
        "<|user|>\n3+3?<|end|>\n<|assistant|>\nsix<|end|>\n<|im_end|>"  # the template's eos_token
    )
    assert targets == "four<|end|>six<|end|>"
    assert tok._tok.token_to_id("<|end|>") in tok.eos_ids
