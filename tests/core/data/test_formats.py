"""Every data source and record shape (core/data/sources.py, shapes.py, tables.py, tool_calls.py):
the same examples written as JSONL, a JSON array, parquet, CSV, a save_to_disk directory and a
dataset in the local datasets cache read back as the same records; ShareGPT, Alpaca,
prompt/completion, text and data_fields; tool calls rendered by a template that supports them,
with the loss on the assistant's calls; errors that name the file, the record and the field;
fingerprints that change with the data and with how it is read.
"""

from __future__ import annotations

import json
import re

import pytest
from helpers.chatml_tokenizer import write_model_dir
from helpers.data_sources import put_in_datasets_cache, write_jsonl, write_source

from loraswitch.core.data.chat_tokenizer import ChatTokenizer
from loraswitch.core.data.sources import data_fingerprint, read_records
from loraswitch.core.errors import UserError
from loraswitch.core.models.families import chat_template

QA = [{"question": "1+1", "answer": "2"}, {"question": "2+2", "answer": "4"}, {"question": "3+3", "answer": "6"}]
FIELDS = {"prompt": "question", "completion": "answer"}


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """A private datasets cache per test: hf: names resolve only from it."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


CHAT = [
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "1+1"},
            {"role": "assistant", "content": "2"},
        ]
    },
    {"messages": [{"role": "user", "content": "2+2"}, {"role": "assistant", "content": "4"}]},
]


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "saved", "hf"])
def test_every_source_reads_the_same_records(tmp_path, kind):
    source = write_source(tmp_path, kind, QA)
    records = read_records(source, fields=FIELDS)
    assert [(r.kind, r.prompt, r.completion) for r in records] == [
        ("completion", q["question"], q["answer"]) for q in QA
    ]


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "saved"])
def test_chat_records_survive_every_source(tmp_path, kind):
    """Nested messages through arrow (missing keys become nulls) and CSV (JSON text cells)."""
    rows = [dict(CHAT[0]), {"messages": CHAT[1]["messages"][:1] + [{"role": "assistant", "content": "4", "weight": 1}]}]
    records = read_records(write_source(tmp_path, kind, rows))
    assert [[(m.role, m.content, m.train) for m in r.messages] for r in records] == [
        [("system", "be brief", True), ("user", "1+1", True), ("assistant", "2", True)],
        [("user", "2+2", True), ("assistant", "4", True)],
    ]


def test_shapes_and_explicit_format(tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "s"},
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "yo"},
            ]
        },
        {"instruction": "Add.", "input": "1+1", "output": "2"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"prompt": "p", "completion": "c"},
        {"text": "t"},
    ]
    records = read_records(write_jsonl(tmp_path / "d.jsonl", rows))
    assert [r.kind for r in records] == ["chat", "completion", "completion", "completion", "text"]
    assert [(m.role, m.content) for m in records[0].messages] == [("system", "s"), ("user", "hi"), ("assistant", "yo")]
    assert (records[1].prompt, records[1].completion) == ("Add.\n\n1+1", "2")
    assert records[2].prompt == "Say hi."
    # an explicit data_format reads every record as that shape: the text record lacks 'prompt'
    with pytest.raises(UserError, match=r"d\.jsonl:1: a prompt/completion record needs both keys; 'prompt' is missing"):
        read_records(tmp_path / "d.jsonl", data_format="prompt_completion")


def test_data_fields_map_any_keys(tmp_path):
    rows = [{"q": "1+1", "a": "2", "id": 7}]
    (r,) = read_records(write_jsonl(tmp_path / "d.jsonl", rows), fields={"instruction": "q", "output": "a"})
    assert (r.prompt, r.completion) == ("1+1", "2")
    rows = [{"dialog": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
    (r,) = read_records(write_jsonl(tmp_path / "e.jsonl", rows), fields={"conversations": "dialog"})
    assert [m.content for m in r.messages] == ["hi", "yo"]
    # a key mapped from is not read again under its own name: "text" here is a completion
    (r,) = read_records(
        write_jsonl(tmp_path / "f.jsonl", [{"q": "a", "text": "b"}]), fields={"prompt": "q", "completion": "text"}
    )
    assert (r.kind, r.prompt, r.completion) == ("completion", "a", "b")


@pytest.mark.parametrize(
    "kind, rows, where, message",
    [
        (
            "jsonl",
            [{"prompt": "y", "completion": "z"}, {"prompt": "x", "completion": 3}],
            r"d\.jsonl:2: ",
            r"'completion' must be a string, got a number",
        ),
        ("json", [{"text": "a"}, {"text": "b"}, {"prompt": "x"}], r"d\.json\[2\]: ", r"'completion' is missing"),
        (
            "parquet",
            [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": None}],
            r"d\.parquet: row 1: ",
            r"'completion' must be a string, got null",
        ),
        ("csv", [{"prompt": "a", "other": "b"}], r"d\.csv: row 0: ", r"'completion' is missing"),
        (
            "saved",
            [{"conversations": [{"from": "robot", "value": "x"}]}],
            r"saved: row 0: ",
            r"conversations\[0\]: 'from' 'robot'",
        ),
        ("hf", [{"instruction": "x", "input": "y"}], r"hf:someone/tiny_set: row 0: ", r"'output' is missing"),
    ],
)
def test_errors_name_file_record_and_field(tmp_path, kind, rows, where, message):
    source = write_source(tmp_path, kind, rows)
    with pytest.raises(
        UserError, match=rf"^{re.escape(str(tmp_path))}/{where}.*{message}" if kind != "hf" else rf"^{where}.*{message}"
    ) as e:
        read_records(source)
    assert "\n" not in str(e.value)


def test_source_level_errors(tmp_path):
    (tmp_path / "obj.json").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert [r.text for r in read_records(tmp_path / "obj.json")] == ["a", "b"]  # .json holding JSON lines
    (tmp_path / "bad.json").write_text('[{"text": "a"}, ')
    with pytest.raises(UserError, match=r"bad\.json: malformed JSON"):
        read_records(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(UserError, match=r"empty\.json: data file has no records"):
        read_records(tmp_path / "empty.json")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match=r"broken\.parquet: cannot read parquet data"):
        read_records(tmp_path / "broken.parquet")
    (tmp_path / "notsaved").mkdir()
    with pytest.raises(UserError, match=r"notsaved: not a datasets save_to_disk directory"):
        read_records(tmp_path / "notsaved")
    with pytest.raises(
        UserError, match=r"^data: hf:nobody/nothing is not in the local datasets cache .*never downloads"
    ):
        read_records("hf:nobody/nothing")
    source = put_in_datasets_cache(tmp_path, "someone/tiny_set", QA)
    with pytest.raises(UserError, match=r"hf:someone/tiny_set in the cache has no split 'test'; it has train"):
        read_records(source + ":test", fields=FIELDS)


def test_fingerprint_follows_data_and_reading(tmp_path):
    jsonl = write_jsonl(tmp_path / "d.jsonl", QA)
    import hashlib

    plain = data_fingerprint(jsonl)
    assert plain == hashlib.sha256(jsonl.read_bytes()).hexdigest()  # as before formats: old runs still resume
    assert data_fingerprint(jsonl, "prompt_completion") != plain
    assert data_fingerprint(jsonl, fields=FIELDS) != data_fingerprint(jsonl, fields={"prompt": "answer"})
    saved = write_source(tmp_path, "saved", QA)
    hf = write_source(tmp_path, "hf", QA)
    before = {data_fingerprint(saved), data_fingerprint(hf)}
    assert len(before) == 2 and plain not in before
    import datasets

    datasets.Dataset.from_list(QA[:2]).save_to_disk(saved)  # other rows, same place
    assert data_fingerprint(saved) not in before


# ---------------------------------------------------------------- tool calls


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("q"), template=chat_template("qwen2_5.jinja"))


TOOLS = [{"type": "function", "function": {"name": "add", "description": "add", "parameters": {"type": "object"}}}]
TOOL_RECORD = {
    "tools": TOOLS,
    "messages": [
        {"role": "user", "content": "1+1?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
        {"role": "assistant", "content": "It is 2."},
    ],
}


def test_tool_calls_render_as_transformers_and_are_trained(tmp_path, qwen_dir):
    from transformers import PreTrainedTokenizerFast

    qwen = ChatTokenizer.from_dir(qwen_dir)
    (record,) = read_records(write_jsonl(tmp_path / "t.jsonl", [TOOL_RECORD]))
    example, _ = qwen.encode_record(record, 2000)
    text = qwen.decode(example.input_ids, skip_special_tokens=False)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(qwen_dir / "tokenizer.json"))
    hf.chat_template = chat_template("qwen2_5.jinja")
    expected_messages = json.loads(json.dumps(TOOL_RECORD["messages"]))
    expected_messages[1]["content"] = ""
    expected_messages[1]["tool_calls"][0]["function"]["arguments"] = {"a": 1, "b": 1}
    assert text == hf.apply_chat_template(expected_messages, tools=TOOLS, tokenize=False)
    targets = qwen.decode(example.input_ids[example.loss_mask], skip_special_tokens=False)
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 1}}\n</tool_call><|im_end|>'
    assert targets == call + "It is 2.<|im_end|>"  # the call and the answer; not the tool's result "2"


def test_a_template_without_tool_support_is_refused(tmp_path):
    plain = ChatTokenizer.from_dir(write_model_dir(tmp_path / "m"))  # ChatML that prints content only
    (record,) = read_records(write_jsonl(tmp_path / "t.jsonl", [TOOL_RECORD]))
    with pytest.raises(
        UserError, match=r"t\.jsonl:1: messages\[1\]: the chat template of .* does not render tool calls"
    ):
        plain.encode_record(record, 2000)
