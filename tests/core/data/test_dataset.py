"""JSONL reading (errors at file:line) and the seeded train/validation split."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers.chatml_tokenizer import write_model_dir

from loraswitch.core.config import Config
from loraswitch.core.data.dataset import load_datasets, split_indices
from loraswitch.core.data.jsonl import MAX_LINE_BYTES, read_jsonl
from loraswitch.core.errors import UserError


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from loraswitch.core.data.chat_tokenizer import ChatTokenizer

    return ChatTokenizer.from_dir(write_model_dir(tmp_path_factory.mktemp("model")))


def write_lines(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- reading


def test_reads_all_three_shapes_skips_blank_lines_and_bom(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(
        "\ufeff"
        + json.dumps({"text": "t", "id": 3})
        + "\n\n   \n"
        + json.dumps({"prompt": "p", "completion": "c"})
        + "\n"
        + json.dumps(
            {
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": "u"},
                    {"role": "assistant", "content": "a", "weight": 1},
                ]
            }
        ),  # no final newline
        encoding="utf-8",
    )
    recs = read_jsonl(p)
    assert [r.kind for r in recs] == ["text", "completion", "chat"]
    assert recs[0].text == "t" and recs[1].prompt == "p" and recs[1].completion == "c"
    assert [m.role for m in recs[2].messages] == ["system", "user", "assistant"]
    assert [r.where for r in recs] == [f"{p}:1", f"{p}:4", f"{p}:5"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "a"', r"malformed JSON"),
        ("[1, 2]", r"expected a JSON object, got an array"),
        ('"hello"', r"expected a JSON object, got a string"),
        ('{"input": "x", "output": "y"}', r"unknown record shape \(keys: 'input', 'output'\)"),
        ('{"text": "a", "prompt": "b", "completion": "c"}', r"record mixes shapes"),
        ('{"text": 5}', r"'text' must be a string, got a number"),
        ('{"prompt": "a"}', r"'completion' is missing"),
        ('{"prompt": "a", "completion": null}', r"'completion' must be a string, got null"),
        ('{"messages": []}', r"'messages' must be a non-empty list"),
        ('{"messages": {"role": "user"}}', r"'messages' must be a non-empty list, got an object"),
        ('{"messages": ["hi"]}', r"messages\[0\]: expected an object"),
        ('{"messages": [{"role": "function", "content": "x"}]}', r"messages\[0\]: role 'function' is not one of"),
        ('{"messages": [{"role": "user", "content": "x", "tool_calls": []}]}', r"'tool_calls' belong to assistant"),
        (
            '{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"function": {"arguments": "{}"}}]}]}',
            r"messages\[0\]: tool_calls\[0\]: 'function.name' must be a non-empty string, got null",
        ),
        (
            '{"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{1"}}]}]}',
            r"messages\[0\]: tool_calls\[0\]: 'function.arguments': not valid JSON",
        ),
        ('{"messages": [{"role": "assistant", "content": "x"}], "tools": {}}', r"'tools': must be a list"),
        ('{"conversations": [{"from": "bot", "value": "x"}]}', r"conversations\[0\]: 'from' 'bot' is not one of"),
        ('{"conversations": [{"from": "gpt"}]}', r"conversations\[0\]: 'value' is missing"),
        (
            '{"instruction": "x", "input": ""}',
            r"an Alpaca record needs 'instruction' and 'output'; 'output' is missing",
        ),
        ('{"instruction": "x", "output": 3}', r"'output' must be a string, got a number"),
        ('{"messages": [{"role": "user"}]}', r"messages\[0\]: 'content' is missing"),
        ('{"messages": [{"role": "user", "content": ["a"]}]}', r"'content' must be a string, got an array"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', r"needs at least one assistant message"),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 0}]}',
            r"needs at least one assistant message",
        ),
        ('{"messages": [{"role": "assistant", "content": "x", "weight": 0.5}]}', r"'weight' must be 0 or 1"),
        (
            '{"messages": [{"role": "user", "content": "x", "weight": 0}, {"role": "assistant", "content": "y"}]}',
            r"'weight' applies to assistant messages only",
        ),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, line, message):
    p = write_lines(tmp_path / "train.jsonl", [{"text": "fine"}, "", line, {"text": "after"}])
    with pytest.raises(UserError, match=rf"^{re.escape(str(p))}:3: .*{message}") as err:
        read_jsonl(p)
    assert "\n" not in str(err.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(UserError, match=r"missing.jsonl: data file not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path))}: data file is a directory, not a regular file$"):
        read_jsonl(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n")
    with pytest.raises(UserError, match=rf"^{re.escape(str(empty))}: data file has no records"):
        read_jsonl(empty)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n')
    with pytest.raises(UserError, match=rf"^{re.escape(str(binary))}:2: not UTF-8 text \(byte 11 of the line\)"):
        read_jsonl(binary)


def test_huge_line_is_refused_before_parsing(tmp_path):
    p = tmp_path / "huge.jsonl"
    with p.open("w") as f:
        f.write('{"text": "a"}\n{"text": "' + "x" * MAX_LINE_BYTES + '"}\n')
    with pytest.raises(UserError, match=rf"^{re.escape(str(p))}:2: line longer than 10 MB"):
        read_jsonl(p)


# ---------------------------------------------------------------- splitting


def make_data(tmp_path, n, name="train.jsonl"):
    return write_lines(
        tmp_path / name,
        [
            {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}]}
            for i in range(n)
        ],
    )


def answers(tok, examples):
    return sorted(tok.decode(e.input_ids[e.loss_mask]) for e in examples)


def test_split_is_seeded_disjoint_complete_and_stable(tmp_path, tok):
    data = make_data(tmp_path, 25)
    cfg = Config(data=str(data), training_split=0.8, seed=3)
    a, b = load_datasets(cfg, tok), load_datasets(cfg, tok)
    assert (len(a.train), len(a.validation), a.n_examples) == (20, 5, 25)
    assert answers(tok, a.train) == answers(tok, b.train)
    assert [e.input_ids.tolist() for e in a.train] == [e.input_ids.tolist() for e in b.train]
    assert set(answers(tok, a.train)).isdisjoint(answers(tok, a.validation))
    assert sorted(answers(tok, a.train) + answers(tok, a.validation)) == sorted(f"answer {i}" for i in range(25))
    # A different seed gives a different split; the order is shuffled, not file order.
    c = load_datasets(Config(data=str(data), training_split=0.8, seed=4), tok)
    assert answers(tok, c.validation) != answers(tok, a.validation)
    assert [tok.decode(e.input_ids[e.loss_mask]) for e in a.train] != [f"answer {i}" for i in range(20)]
    # The split does not depend on max_seq_len (it is made on records).
    d = load_datasets(Config(data=str(data), training_split=0.8, seed=3, max_seq_len=900), tok)
    assert answers(tok, d.validation) == answers(tok, a.validation)


def test_split_indices_pinned_and_both_sides_nonempty():
    # Pinned: the split must never change between releases, or resumed/compared runs differ.
    train, val = split_indices(10, 0.8, 0)
    assert (train.tolist(), val.tolist()) == ([0, 9, 3, 8, 5, 6, 2, 4], [7, 1])
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(10))
    assert split_indices(10, 0.8, 0)[1].tolist() == val.tolist()
    assert [len(s) for s in split_indices(2, 0.99, 0)] == [1, 1]
    assert [len(s) for s in split_indices(3, 0.01, 0)] == [1, 2]


def test_a_split_leaving_a_side_empty_is_an_error(tmp_path, tok):
    data = make_data(tmp_path, 1)
    with pytest.raises(
        UserError,
        match=rf"^{re.escape(str(data))}: 1 record\(s\) with training_split 0.8 leave the validation split empty",
    ):
        load_datasets(Config(data=str(data)), tok)


def test_separate_validation_file(tmp_path, tok):
    data = make_data(tmp_path, 4)
    val = write_lines(tmp_path / "val.jsonl", [{"prompt": "p", "completion": "held out"}])
    ds = load_datasets(Config(data=str(data), validation_data=str(val)), tok)
    assert len(ds.train) == 4 and ds.n_examples == 5
    assert answers(tok, ds.validation) == ["held out"]
    bad = write_lines(tmp_path / "bad.jsonl", [{"text": "ok"}, "{oops"])
    with pytest.raises(UserError, match=rf"^{re.escape(str(bad))}:2: malformed JSON"):
        load_datasets(Config(data=str(data), validation_data=str(bad)), tok)


def test_truncation_counted_and_targetless_examples_dropped(tmp_path, tok):
    lines = [
        {"messages": [{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "z" * 100}]},
    ]
    lines += [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "short"}]}] * 8
    data = write_lines(tmp_path / "t.jsonl", lines)
    ds = load_datasets(Config(data=str(data), max_seq_len=40, training_split=0.5), tok)
    assert ds.n_truncated == 2 and ds.n_dropped == 1
    assert len(ds.train) + len(ds.validation) == 9
    assert all(len(e.input_ids) <= 40 and e.n_targets > 0 for e in ds.train + ds.validation)
    assert ds.summary()["dropped_examples"] == 1


def test_every_example_dropped_is_an_error(tmp_path, tok):
    data = write_lines(
        tmp_path / "t.jsonl",
        [{"messages": [{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "y"}]}] * 3,
    )
    with pytest.raises(
        UserError, match=r"split has no example with a target token left after truncation to max_seq_len 20"
    ):
        load_datasets(Config(data=str(data), max_seq_len=20), tok)


def test_no_data_key(tok):
    with pytest.raises(UserError, match=r"^data: no training data file given"):
        load_datasets(Config(), tok)
