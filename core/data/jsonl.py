"""Read fine-tuning JSONL into validated records; every error names ``file:line``.

Three shapes, as hosted fine-tuning APIs accept them:

- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`` with at
  least one assistant message (an assistant message may carry ``"weight": 0`` to be shown as
  context but not trained on, as in OpenAI's format);
- completion: ``{"prompt": "...", "completion": "..."}``;
- text: ``{"text": "..."}`` (every token is a target).

Other keys (ids, metadata) are ignored, so exported datasets load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import parse_json
from loraswitch.core.files.paths import regular_file

MAX_LINE_BYTES = 10 * 1024 * 1024  # a longer line is almost surely not one example; refuse before parsing it
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    train: bool = True  # only meaningful for assistant messages ("weight": 0 -> False)


@dataclass(frozen=True)
class Record:
    """One example. ``where`` is ``file:line`` so later stages (tokeniser, chat template) can
    report errors at the line the user must edit."""

    kind: Literal["chat", "completion", "text"]
    where: str
    messages: tuple[Message, ...] = ()
    prompt: str = ""
    completion: str = ""
    text: str = ""


def parse_record(obj: Any, where: str = "record") -> Record:
    """Validate one decoded JSON value and return its Record; bad shapes raise UserError."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {_json_type(obj)}")
    shapes = [
        s
        for s, keys in (
            ("messages", ("messages",)),
            ("prompt/completion", ("prompt", "completion")),
            ("text", ("text",)),
        )
        if any(k in obj for k in keys)
    ]
    if not shapes:
        keys = ", ".join(sorted(map(repr, obj))) or "none"
        raise UserError(
            f"{where}: unknown record shape (keys: {keys}); expected "
            '{"messages": [...]}, {"prompt": ..., "completion": ...} or {"text": ...}'
        )
    if len(shapes) > 1:
        raise UserError(f"{where}: record mixes shapes ({' and '.join(shapes)}); use exactly one")
    if shapes[0] == "messages":
        return Record("chat", where, messages=_parse_messages(obj["messages"], where))
    if shapes[0] == "text":
        return Record("text", where, text=_string(obj, "text", where))
    for key in ("prompt", "completion"):
        if key not in obj:
            raise UserError(f"{where}: a prompt/completion record needs both keys; {key!r} is missing")
    return Record(
        "completion", where, prompt=_string(obj, "prompt", where), completion=_string(obj, "completion", where)
    )


def read_jsonl(path: str | Path) -> list[Record]:
    """All records of a JSONL file, in file order. Blank lines are skipped; a file with no
    records, a line that is not UTF-8, not JSON, too long or of an unknown shape is an error."""
    p = regular_file(path, what="data file")  # a FIFO or device would block or never end
    records = []
    try:
        f = p.open("rb")
    except OSError as e:
        raise UserError(f"{p}: cannot read data file: {e.strerror}") from e
    with f:
        lineno = 0
        while True:
            # Bounded read, so a multi-gigabyte single "line" (a JSON array, a binary file)
            # fails fast instead of exhausting memory.
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            lineno += 1
            where = f"{p}:{lineno}"
            if len(raw) > MAX_LINE_BYTES:
                raise UserError(
                    f"{where}: line longer than {MAX_LINE_BYTES // (1024 * 1024)} MB; JSONL needs one example per line"
                )
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{where}: not UTF-8 text (byte {e.start + 1} of the line)") from e
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # editors on Windows write a BOM
            if not line.strip():
                continue
            records.append(parse_record(parse_json(line, where, invalid="malformed JSON"), where))
    if not records:
        raise UserError(f"{p}: data file has no records (it is empty or only blank lines)")
    return records


def _parse_messages(value: Any, where: str) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: 'messages' must be a non-empty list, got {_json_type(value)}")
    messages = []
    for i, m in enumerate(value):
        at = f"{where}: messages[{i}]"
        if not isinstance(m, dict):
            raise UserError(f"{at}: expected an object with 'role' and 'content', got {_json_type(m)}")
        role = m.get("role")
        if role not in ROLES:
            raise UserError(f"{at}: role {role!r} is not one of {', '.join(ROLES)}")
        if "content" not in m:
            raise UserError(f"{at}: 'content' is missing")
        if not isinstance(m["content"], str):
            raise UserError(f"{at}: 'content' must be a string, got {_json_type(m['content'])}")
        weight = m.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise UserError(f"{at}: 'weight' must be 0 or 1, got {weight!r}")
        if weight == 0 and role != "assistant":
            raise UserError(f"{at}: 'weight' applies to assistant messages only")
        messages.append(Message(role, encodable(m["content"], f"{at}: 'content'"), train=weight == 1))
    if not any(m.role == "assistant" and m.train for m in messages):
        raise UserError(f"{where}: a chat record needs at least one assistant message to train on")
    return tuple(messages)


def _string(obj: dict, key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise UserError(f"{where}: {key!r} must be a string, got {_json_type(value)}")
    return encodable(value, f"{where}: {key!r}")


def encodable(text: str, where: str) -> str:
    """``text`` if the tokenizer can take it: a lone surrogate (from a ``\\ud800`` escape, or
    from undecodable bytes in a command-line argument) cannot be encoded and would surface as a
    TypeError deep inside the tokenizer."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = text[e.start : e.end].encode("unicode_escape").decode()
            raise UserError(
                f"{where}: holds the lone UTF-16 surrogate {bad} at character {e.start}; it is not valid Unicode"
            ) from None
    return text


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, as the user wrote it."""
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)
