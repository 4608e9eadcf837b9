"""The boundary rules every user file goes through: core/files/json_file.py and paths.py."""

from __future__ import annotations

import json
import os

import pytest

from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import MAX_JSON_DEPTH, parse_json, read_json_object
from loraswitch.core.files.paths import directory, read_bounded, regular_file, resolved


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_depth_limit_is_exact():
    assert parse_json(nested(MAX_JSON_DEPTH), "f") == json.loads(nested(MAX_JSON_DEPTH))
    with pytest.raises(UserError, match=rf"^f: JSON nested {MAX_JSON_DEPTH + 1} levels deep; at most {MAX_JSON_DEPTH}"):
        parse_json(nested(MAX_JSON_DEPTH + 1), "f")


def test_brackets_inside_strings_are_not_levels():
    text = json.dumps({"a": "[" * 5000 + '\\"{' * 300, "b": ["]" * 40]})
    assert parse_json(text, "f")["b"] == ["]" * 40]


@pytest.mark.parametrize(
    "text",
    ['"' + "[" * 50_000, '["\\' * 20_000, '"\\"' * 50_000 + "[" * 200],
    ids=["unterminated-string", "escape-at-end", "many-escaped-quotes"],
)
def test_malformed_deep_input_is_one_line(text):
    with pytest.raises(UserError, match=r"^f: (JSON nested \d+ levels deep|not valid JSON)"):
        parse_json(text, "f")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(literal):
    with pytest.raises(UserError, match=rf"^f: not valid JSON: {literal} is not a JSON number$"):
        parse_json('{"x": ' + literal + "}", "f")


def test_huge_integers_are_one_line():
    with pytest.raises(UserError, match=r"^f: not valid JSON: Exceeds the limit \(4300 digits\)"):
        parse_json("9" * 5000, "f")


def test_surrogate_pairs_pass_and_lone_surrogates_are_named():
    assert parse_json('"\\ud83d\\ude00"', "f") == "\U0001f600"
    for text, bad in [('"\\ud83d"', "\\ud83d"), ('{"\\ude00": 1}', "\\ude00"), ('["ok", "x\\uDBFF"]', "\\udbff")]:
        with pytest.raises(
            UserError, match=rf"^f: a string holds the lone UTF-16 surrogate \{bad}; it is not valid Unicode"
        ):
            parse_json(text, "f")


def test_bytes_must_be_utf8():
    with pytest.raises(UserError, match=r"^f: not UTF-8 text \(byte 3\)$"):
        parse_json(b'"a\xff"', "f")


def test_read_json_object_names_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match=r"a.json: missing; needed for x$"):
        read_json_object(tmp_path / "a.json", if_missing="needed for x")
    (tmp_path / "b.json").write_text("[1]")
    with pytest.raises(UserError, match=r"b.json: must be a JSON object, not list$"):
        read_json_object(tmp_path / "b.json")


def test_paths_that_are_not_regular_files(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path / "pipe": "data file is a FIFO (named pipe), not a regular file",
        "/dev/null": "data file is a device, not a regular file",
        tmp_path: "data file is a directory, not a regular file",
        tmp_path / "loop": "symlink loop",
        tmp_path / "dangling": f"a symlink to '{tmp_path / 'nowhere'}', which does not exist",
        tmp_path / "absent": "data file not found",
    }
    for path, message in cases.items():
        with pytest.raises(UserError) as e:
            regular_file(path, what="data file")
        assert str(e.value) == f"{path}: {message}"
    assert regular_file(tmp_path / "file") == tmp_path / "file"
    with pytest.raises(UserError, match=r"file: model directory is a regular file, not a directory$"):
        directory(tmp_path / "file", what="model directory")
    with pytest.raises(UserError, match=r"loop: cannot resolve the path"):
        resolved(tmp_path / "loop")


def test_read_bounded_refuses_more_than_its_limit(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * (3 * 2**20 + 1))
    assert len(read_bounded(tmp_path / "big", 4 * 2**20)) == 3 * 2**20 + 1
    with pytest.raises(UserError, match=r"big: larger than 3 MiB"):
        read_bounded(tmp_path / "big", 3 * 2**20)
