"""Which shape a record has, and how each shape becomes a ``Record``; errors name the field.

Shapes (``data_format`` names them; ``auto`` detects each record's shape from its keys, so a
file may mix shapes):

- ``messages``: OpenAI chat, ``{"messages": [{"role", "content"}...], "tools"?: [...]}`` with
  the roles system, user, assistant and tool; an assistant message may carry ``tool_calls``
  and ``"weight": 0`` (context, not trained);
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}...]}``;
- ``alpaca``: ``{"instruction", "input"?, "output"}``, the prompt being the instruction, a
  blank line and the input when there is one;
- ``prompt_completion``: ``{"prompt", "completion"}``;
- ``text``: ``{"text"}`` (every token is a target).

``data_fields`` renames a file's own keys to these (``{prompt: question, completion: answer}``)
before detection. Other keys (ids, metadata) are ignored, so exported datasets load unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loraswitch.core.data.records import Message, Record, encodable, json_type
from loraswitch.core.errors import UserError

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
# The keys that make a record of each shape (any one of them is enough to detect it).
SIGNATURES: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
# Every key data_fields may map a file's column to.
FIELDS = ("messages", "tools", "conversations", "instruction", "input", "output", "prompt", "completion", "text")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def parse_record(
    obj: Any, where: str = "record", data_format: str = "auto", fields: Mapping[str, str] | None = None
) -> Record:
    """Validate one decoded value and return its Record; a bad shape or field raises UserError."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {json_type(obj)}")
    if fields:
        obj = rename_fields(obj, fields, where)
    shape = detect_shape(obj, where) if data_format == "auto" else data_format
    return PARSERS[shape](obj, where)


def rename_fields(obj: dict, fields: Mapping[str, str], where: str) -> dict:
    """``obj`` with the file's keys (``fields``' values) under loraswitch's names (its keys)."""
    # a mapped name is taken from the mapping only, and a mapped-from key is not read again
    # under its own name ({completion: text} must not also make a text record)
    taken = set(fields) | set(fields.values())
    out = {k: v for k, v in obj.items() if k not in taken}
    for ours, theirs in fields.items():
        if theirs in obj:
            out[ours] = obj[theirs]
    return out


def detect_shape(obj: dict, where: str) -> str:
    shapes = [s for s, keys in SIGNATURES.items() if any(k in obj for k in keys)]
    if not shapes:
        keys = ", ".join(sorted(map(repr, obj))) or "none"
        raise UserError(
            f"{where}: unknown record shape (keys: {keys}); expected messages, conversations (ShareGPT), "
            "instruction/output (Alpaca), prompt/completion or text; map other keys with data_fields"
        )
    if len(shapes) > 1:
        raise UserError(f"{where}: record mixes shapes ({' and '.join(shapes)}); use exactly one or set data_format")
    return shapes[0]


def _text(obj: dict, where: str) -> Record:
    return Record("text", where, text=_string(obj, "text", where))


def _prompt_completion(obj: dict, where: str) -> Record:
    for key in ("prompt", "completion"):
        if key not in obj:
            raise UserError(f"{where}: a prompt/completion record needs both keys; {key!r} is missing")
    return Record(
        "completion", where, prompt=_string(obj, "prompt", where), completion=_string(obj, "completion", where)
    )


def _alpaca(obj: dict, where: str) -> Record:
    for key in ("instruction", "output"):
        if key not in obj:
            raise UserError(f"{where}: an Alpaca record needs 'instruction' and 'output'; {key!r} is missing")
    prompt = _string(obj, "instruction", where)
    extra = _string(obj, "input", where) if obj.get("input") is not None else ""
    if extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    return Record("completion", where, prompt=prompt, completion=_string(obj, "output", where))


def _sharegpt(obj: dict, where: str) -> Record:
    turns = _required(obj, "conversations", where)
    if not isinstance(turns, list) or not turns:
        raise UserError(f"{where}: 'conversations' must be a non-empty list, got {json_type(turns)}")
    messages = []
    for i, t in enumerate(turns):
        at = f"{where}: conversations[{i}]"
        if not isinstance(t, dict):
            raise UserError(f"{at}: expected an object with 'from' and 'value', got {json_type(t)}")
        speaker = t.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise UserError(f"{at}: 'from' {speaker!r} is not one of human, gpt, system")
        if "value" not in t:
            raise UserError(f"{at}: 'value' is missing")
        if not isinstance(t["value"], str):
            raise UserError(f"{at}: 'value' must be a string, got {json_type(t['value'])}")
        messages.append(Message(SHAREGPT_ROLES[speaker], encodable(t["value"], f"{at}: 'value'")))
    return Record("chat", where, messages=_with_assistant(messages, where))


def _messages(obj: dict, where: str) -> Record:
    from loraswitch.core.data.tool_calls import parse_message, parse_tools

    value = _required(obj, "messages", where)
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: 'messages' must be a non-empty list, got {json_type(value)}")
    messages = [parse_message(m, f"{where}: messages[{i}]") for i, m in enumerate(value)]
    tools = parse_tools(obj.get("tools"), f"{where}: 'tools'")
    return Record("chat", where, messages=_with_assistant(messages, where), tools=tools)


PARSERS = {
    "messages": _messages,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
    "prompt_completion": _prompt_completion,
    "text": _text,
}


def _with_assistant(messages: list[Message], where: str) -> tuple[Message, ...]:
    if not any(m.role == "assistant" and m.train for m in messages):
        raise UserError(f"{where}: a chat record needs at least one assistant message to train on")
    return tuple(messages)


def _required(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        raise UserError(f"{where}: {key!r} is missing")
    return obj[key]


def _string(obj: dict, key: str, where: str) -> str:
    value = _required(obj, key, where)
    if not isinstance(value, str):
        raise UserError(f"{where}: {key!r} must be a string, got {json_type(value)}")
    return encodable(value, f"{where}: {key!r}")
