"""The real Qwen2.5 and Qwen3 chat templates (core/models/families/templates/): rendering equals
transformers' own ``apply_chat_template``, ``chat_template_kwargs`` (Qwen3's ``enable_thinking``)
reach the template, and the loss mask covers exactly the answer and its ``<|im_end|>``.

Qwen3's template rewrites reasoning: an assistant content ``<think>r</think>a`` is rendered as
``<think>\\nr\\n</think>\\n\\na`` in the turns after the last user message and as ``a`` alone in
the turns before it (past reasoning is stripped), and the last assistant turn always gets a think
block, empty when there was no reasoning. Targets are what the template kept of the message.
"""

from __future__ import annotations

import pytest
from helpers.chatml_tokenizer import write_model_dir

from loraswitch.core.data.chat_tokenizer import ChatTokenizer
from loraswitch.core.data.jsonl import Message
from loraswitch.core.models.families import chat_template


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return {
        name: write_model_dir(tmp_path_factory.mktemp(name), template=chat_template(f"{name}.jinja"))
        for name in ("qwen2_5", "qwen3")
    }


def tokenizer(model_dirs, name, **kwargs) -> ChatTokenizer:
    return ChatTokenizer.from_dir(model_dirs[name], kwargs)


def chat(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def encode(tok, record):
    example, _ = tok.encode_record(record, 1000)
    text = tok.decode(example.input_ids, skip_special_tokens=False)
    targets = tok.decode(example.input_ids[example.loss_mask], skip_special_tokens=False)
    return text, targets, example


CONVERSATION = chat(
    ("system", "be brief"),
    ("user", "2+2?"),
    ("assistant", "<think>\nadd them\n</think>\n\nfour"),
    ("user", "and 3+3?"),
    ("assistant", "<think>add again</think>six"),
)


@pytest.mark.parametrize("name", ["qwen2_5", "qwen3"])
@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": False}, {"enable_thinking": True}])
def test_rendering_equals_transformers(model_dirs, name, kwargs):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(model_dirs[name] / "tokenizer.json"))
    hf.chat_template = chat_template(f"{name}.jinja")
    ours = tokenizer(model_dirs, name, **kwargs)
    for messages in (CONVERSATION["messages"], CONVERSATION["messages"][:2], chat(("user", "hi"))["messages"]):
        for prompt in (False, True):
            expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt, **kwargs)
            got = ours.render([Message(m["role"], m["content"]) for m in messages], add_generation_prompt=prompt)
            assert got == expected


def test_qwen2_5_masks_exactly_the_answer_and_im_end(model_dirs):
    tok = tokenizer(model_dirs, "qwen2_5")
    text, targets, example = encode(tok, {"prompt": "2+2?", "completion": "four"})
    # No system message: Qwen2.5's template writes its default one.
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\nfour<|im_end|>\n"
    )
    assert targets == "four<|im_end|>"
    im_end = tok._tok.token_to_id("<|im_end|>")
    masked = example.input_ids[example.loss_mask]
    assert masked[-1] == im_end and list(masked[:-1]) == tok._tok.encode("four", add_special_tokens=False).ids
    assert tok.eos_ids == (im_end,)  # generation stops at <|im_end|>


def test_qwen3_empty_think_block_of_the_last_turn_is_context(model_dirs):
    text, targets, _ = encode(tokenizer(model_dirs, "qwen3"), chat(("user", "2+2?"), ("assistant", "four")))
    assert text == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nfour<|im_end|>\n"
    assert targets == "four<|im_end|>"


def test_qwen3_past_reasoning_is_stripped_and_the_last_is_trained(model_dirs):
    text, targets, _ = encode(tokenizer(model_dirs, "qwen3"), CONVERSATION)
    assert text == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\nfour<|im_end|>\n<|im_start|>user\nand 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nadd again\n</think>\n\nsix<|im_end|>\n"
    )
    assert targets == "four<|im_end|><think>\nadd again\n</think>\n\nsix<|im_end|>"


def test_qwen3_repeated_answers_are_each_trained_once(model_dirs):
    """Qwen3's template is not prefix-preserving (the last turn gains a think block), so each
    answer is searched up to its own <|im_end|>, not to the end of the conversation."""
    record = chat(("user", "a"), ("assistant", "ok"), ("user", "b"), ("assistant", "ok"))
    _, targets, example = encode(tokenizer(model_dirs, "qwen3"), record)
    assert targets == "ok<|im_end|>ok<|im_end|>"
    starts = [i for i in range(1, len(example.loss_mask)) if example.loss_mask[i] and not example.loss_mask[i - 1]]
    assert len(starts) == 2


def test_enable_thinking_reaches_the_template(model_dirs):
    on, off = tokenizer(model_dirs, "qwen3"), tokenizer(model_dirs, "qwen3", enable_thinking=False)
    assert on.decode(on.encode_prompt("hi"), False).endswith("<|im_start|>assistant\n")
    assert off.decode(off.encode_prompt("hi"), False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # Training renders have no generation prompt: the switch leaves the targets alone.
    assert encode(off, CONVERSATION)[1] == encode(on, CONVERSATION)[1]
