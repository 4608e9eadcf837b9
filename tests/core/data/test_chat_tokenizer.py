"""ChatTokenizer: loading a HF tokenizer directory, chat-template rendering and loss masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.chatml_tokenizer import CHATML_TEMPLATE, MERGES, write_model_dir

from loraswitch.core.data.chat_tokenizer import ChatTokenizer
from loraswitch.core.data.jsonl import parse_record
from loraswitch.core.errors import UserError


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return ChatTokenizer.from_dir(write_model_dir(tmp_path_factory.mktemp("model")))


def targets(tok, example) -> str:
    """The text the loss is computed on."""
    return tok.decode(example.input_ids[example.loss_mask], skip_special_tokens=False)


def chat(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def test_chat_masks_only_assistant_content_and_end_of_turn(tok):
    rec = chat(
        ("system", "be nice"),
        ("user", "assistant"),
        ("assistant", "Hello the assistant"),
        ("user", "more"),
        ("assistant", "ok"),
    )
    ex, truncated = tok.encode_record(rec, 1000)
    assert not truncated
    # The whole rendered conversation is encoded, unchanged.
    assert tok.decode(ex.input_ids, skip_special_tokens=False) == (
        "<|im_start|>system\nbe nice<|im_end|>\n<|im_start|>user\nassistant<|im_end|>\n"
        "<|im_start|>assistant\nHello the assistant<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n"
        "<|im_start|>assistant\nok<|im_end|>\n"
    )
    # The test tokenizer merges "\nH" into one token, so the header's newline rides along with
    # the first content letter; everything else targeted is assistant text and <|im_end|>.
    assert targets(tok, ex) == "\nHello the assistant<|im_end|>ok<|im_end|>"
    # The user's "assistant" (same text as the role header) is never a target.
    im_end = tok._tok.token_to_id("<|im_end|>")
    assert int(ex.loss_mask.sum()) == int(ex.loss_mask[ex.input_ids != im_end].sum()) + 2
    assert ex.input_ids.dtype == np.int32 and ex.loss_mask.dtype == bool
    assert not ex.loss_mask[0]


def test_mask_matches_tokens_of_assistant_text_with_unicode(tok):
    ex, _ = tok.encode_record(chat(("user", "héllo 日本"), ("assistant", "ça va 日本語 ✓")), 1000)
    assert targets(tok, ex) == "ça va 日本語 ✓<|im_end|>"


def test_weight_zero_assistant_message_is_context_only(tok):
    rec = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "first", "weight": 0},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "second"},
        ]
    }
    ex, _ = tok.encode_record(rec, 1000)
    assert targets(tok, ex) == "second<|im_end|>"


def test_empty_assistant_content_still_trains_the_stop(tok):
    ex, _ = tok.encode_record(chat(("user", "say nothing"), ("assistant", "")), 1000)
    assert targets(tok, ex) == "<|im_end|>"


def test_prompt_completion_uses_chat_template(tok):
    ex, _ = tok.encode_record({"prompt": "2+2?", "completion": "four"}, 1000)
    assert tok.decode(ex.input_ids, skip_special_tokens=False) == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\nfour<|im_end|>\n"
    )
    assert targets(tok, ex) == "four<|im_end|>"


def test_text_trains_every_token_and_appends_eos(tok):
    ex, _ = tok.encode_record({"text": "the end"}, 1000)
    assert tok.decode(ex.input_ids, skip_special_tokens=False) == "the end<|im_end|>"
    assert not ex.loss_mask[0] and ex.loss_mask[1:].all()


def test_prompt_completion_without_template_is_raw_concatenation(tmp_path):
    tok = ChatTokenizer.from_dir(write_model_dir(tmp_path, template=None, eos="<|endoftext|>"))
    ex, _ = tok.encode_record({"prompt": "Q: hi\nA:", "completion": " yo"}, 1000)
    assert tok.decode(ex.input_ids, skip_special_tokens=False) == "Q: hi\nA: yo<|endoftext|>"
    assert targets(tok, ex) == " yo<|endoftext|>"
    assert tok.encode_prompt("Q: hi") == tok._tok.encode("Q: hi").ids
    with pytest.raises(UserError, match="chat records need a chat template"):
        tok.encode_record(parse_record(chat(("user", "a"), ("assistant", "b")), "d.jsonl:3"), 1000)


def test_truncation_reports_and_keeps_the_start(tok):
    rec = chat(("user", "hi"), ("assistant", "x" * 50))
    full, truncated = tok.encode_record(rec, 1000)
    assert not truncated
    cut, truncated = tok.encode_record(rec, 20)
    assert truncated and len(cut.input_ids) == 20
    assert (cut.input_ids == full.input_ids[:20]).all() and (cut.loss_mask == full.loss_mask[:20]).all()


def test_encode_prompt_adds_generation_prompt_and_decode_round_trips(tok):
    ids = tok.encode_prompt("hi")
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids2 = tok.encode_prompt([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}])
    assert tok.decode(ids2, skip_special_tokens=False).startswith("<|im_start|>system\ns<|im_end|>")
    assert tok.decode(tok._tok.encode("héllo").ids) == "héllo"


def test_special_token_properties(tmp_path):
    tok = ChatTokenizer.from_dir(
        write_model_dir(tmp_path, eos={"content": "<|endoftext|>", "special": True}, pad={"content": "<|im_start|>"})
    )
    vocab = tok._tok.get_vocab(with_added_tokens=True)
    assert tok.vocab_size == len(vocab) == 256 + len(MERGES) + 3
    assert tok.pad_id == vocab["<|im_start|>"]
    # eos plus the end-of-turn token the template writes
    assert set(tok.eos_ids) == {vocab["<|endoftext|>"], vocab["<|im_end|>"]}
    assert tok.eos_ids[0] == vocab["<|endoftext|>"]


def test_pad_falls_back_to_eos_and_generation_config_adds_stops(tmp_path):
    d = write_model_dir(tmp_path)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 8]}))
    tok = ChatTokenizer.from_dir(d)
    im_end = tok._tok.token_to_id("<|im_end|>")
    assert tok.pad_id == im_end
    assert tok.eos_ids == (im_end, 7, 8)


def test_chat_template_jinja_file_and_named_templates(tmp_path):
    d = write_model_dir(tmp_path / "a", template=None)
    (d / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    assert ChatTokenizer.from_dir(d).has_chat_template
    d2 = write_model_dir(
        tmp_path / "b",
        template=[{"name": "tool_use", "template": "x"}, {"name": "default", "template": CHATML_TEMPLATE}],
    )
    tok = ChatTokenizer.from_dir(d2)
    assert tok.chat_template == CHATML_TEMPLATE


def test_template_is_sandboxed_and_raise_exception_names_the_line(tmp_path):
    strict = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}"
        + CHATML_TEMPLATE
    )
    tok = ChatTokenizer.from_dir(write_model_dir(tmp_path / "s", template=strict))
    rec = parse_record(chat(("assistant", "a"), ("user", "b"), ("assistant", "c")), "train.jsonl:7")
    with pytest.raises(UserError, match=r"^train.jsonl:7: .*first message must be user"):
        tok.encode_record(rec, 100)
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    tok = ChatTokenizer.from_dir(write_model_dir(tmp_path / "e", template=evil))
    with pytest.raises(UserError, match="chat template"):
        tok.encode_prompt("hi")
    # an immutable sandbox also refuses mutation of the messages
    mut = "{% set _ = messages.append(1) %}" + CHATML_TEMPLATE
    tok = ChatTokenizer.from_dir(write_model_dir(tmp_path / "m", template=mut))
    with pytest.raises(UserError, match="chat template"):
        tok.encode_prompt("hi")


def test_template_that_rewrites_content_is_an_error_not_a_wrong_mask(tmp_path):
    upper = CHATML_TEMPLATE.replace("message['content']", "message['content'] | upper")
    tok = ChatTokenizer.from_dir(write_model_dir(tmp_path, template=upper))
    with pytest.raises(UserError, match=r"d.jsonl:2: .*does not reproduce assistant message 1"):
        tok.encode_record(parse_record(chat(("user", "a"), ("assistant", "hello")), "d.jsonl:2"), 100)


def test_trimming_template_still_masks(tmp_path):
    trim = CHATML_TEMPLATE.replace("message['content']", "message['content'] | trim")
    tok = ChatTokenizer.from_dir(write_model_dir(tmp_path, template=trim))
    ex, _ = tok.encode_record(chat(("user", "a"), ("assistant", "  hi there \n")), 100)
    assert targets(tok, ex) == "hi there<|im_end|>"


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: (d / "tokenizer.json").unlink(), r"tokenizer.json: tokenizer.json not found"),
        (lambda d: (d / "tokenizer.json").write_text("{not json"), r"tokenizer.json: cannot load tokenizer"),
        (lambda d: (d / "tokenizer_config.json").write_text("[1,"), r"tokenizer_config.json: not valid JSON"),
        (
            lambda d: (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for %}"})),
            r"tokenizer_config.json: chat_template is not valid jinja",
        ),
        (
            lambda d: (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": 3})),
            r"tokenizer_config.json: chat_template must be a string",
        ),
        (
            lambda d: (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"})),
            r"tokenizer_config.json: eos_token '</s>' is not in tokenizer.json's vocabulary",
        ),
    ],
)
def test_bad_model_directory_names_the_file(tmp_path, setup, message):
    d = write_model_dir(tmp_path)
    setup(d)
    with pytest.raises(UserError, match=message) as err:
        ChatTokenizer.from_dir(d)
    assert "\n" not in str(err.value)


def test_eos_token_variable_after_a_space_is_a_target(tmp_path):
    # Llama 2 / Mistral style: the template writes ' ' + eos_token after assistant content.
    inst = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
    )
    tok = ChatTokenizer.from_dir(write_model_dir(tmp_path, template=inst, eos="<|endoftext|>", bos="<|im_start|>"))
    ex, _ = tok.encode_record(chat(("user", "hi"), ("assistant", "yo"), ("user", "again"), ("assistant", "bye")), 100)
    assert tok.decode(ex.input_ids, skip_special_tokens=False) == (
        "<|im_start|>[INST] hi [/INST] yo <|endoftext|>[INST] again [/INST] bye <|endoftext|>"
    )
    assert targets(tok, ex) == "yo <|endoftext|>bye <|endoftext|>"
    assert tok.eos_ids == (tok._tok.token_to_id("<|endoftext|>"),)


def test_generation_tags_are_accepted(tmp_path):
    tagged = CHATML_TEMPLATE.replace(
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
        "{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{'\n'}}{% else %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}",
    )
    tok = ChatTokenizer.from_dir(write_model_dir(tmp_path, template=tagged))
    ex, _ = tok.encode_record(chat(("user", "a"), ("assistant", "b c")), 100)
    assert tok.decode(ex.input_ids, skip_special_tokens=False) == (
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb c<|im_end|>\n"
    )
    assert targets(tok, ex) == "b c<|im_end|>"


def test_core_data_modules_import_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, loraswitch.core.data.jsonl, loraswitch.core.data.chat_tokenizer, loraswitch.core.data.dataset, "
        "loraswitch.core.data.batching; print([m for m in ('torch', 'jax', 'flax') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_batch_encoding_equals_one_by_one(tok):
    records = [
        {"text": "plain words"},
        chat(("user", "q"), ("assistant", "Hello")),
        {"prompt": "p", "completion": "c"},
        chat(("user", "x" * 40), ("assistant", "y")),
    ]
    batched = tok.encode_records(records, 30, chunk=3)
    for rec, (ex, truncated) in zip(records, batched):
        one, one_truncated = tok.encode_record(rec, 30)
        assert ex.input_ids.tolist() == one.input_ids.tolist()
        assert ex.loss_mask.tolist() == one.loss_mask.tolist() and truncated == one_truncated
    assert [t for _, t in batched] == [False, False, False, True]


def test_text_keeps_an_eos_the_post_processor_already_added(tmp_path):
    from helpers.chatml_tokenizer import build_tokenizer
    from tokenizers import processors

    d = write_model_dir(tmp_path, eos="<|endoftext|>")
    raw = build_tokenizer()
    raw.post_processor = processors.TemplateProcessing(  # BOS ... EOS, as Llama-style tokenizers add
        single="<|im_start|> $A <|endoftext|>",
        special_tokens=[(t, raw.token_to_id(t)) for t in ("<|im_start|>", "<|endoftext|>")],
    )
    raw.save(str(d / "tokenizer.json"))
    tok = ChatTokenizer.from_dir(d)
    ex, _ = tok.encode_record({"text": "ab"}, 100)
    assert tok.decode(ex.input_ids, skip_special_tokens=False) == "<|im_start|>ab<|endoftext|>"
    assert ex.loss_mask.tolist() == [False, True, True, True]
