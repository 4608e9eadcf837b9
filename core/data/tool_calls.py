"""OpenAI-style chat messages, tool calls and tool definitions, validated field by field.

An assistant message may carry ``tool_calls`` (then its ``content`` may be null or absent);
a ``tool`` message answers one (``tool_call_id`` and ``name`` optional). A call's
``arguments`` may be an object or, as OpenAI writes it, a JSON string holding one: it is
decoded, because Hugging Face chat templates render ``tool_call.arguments | tojson``.
The chat template decides how calls and tools look; chat_tokenizer.py checks that it rendered them.
"""

from __future__ import annotations

from typing import Any

from loraswitch.core.data.records import ROLES, Message, encodable, json_type
from loraswitch.core.errors import UserError


def parse_message(m: Any, at: str) -> Message:
    """One entry of ``messages``; ``at`` is ``file:line: messages[i]``."""
    if not isinstance(m, dict):
        raise UserError(f"{at}: expected an object with 'role' and 'content', got {json_type(m)}")
    role = m.get("role")
    if role not in ROLES:
        raise UserError(f"{at}: role {role!r} is not one of {', '.join(ROLES)}")
    calls = _tool_calls(m.get("tool_calls"), role, at)
    content = m.get("content")
    if content is None and calls:
        content = ""  # OpenAI writes "content": null on a message that only calls tools
    elif "content" not in m:
        raise UserError(f"{at}: 'content' is missing")
    if not isinstance(content, str):
        raise UserError(f"{at}: 'content' must be a string, got {json_type(content)}")
    weight = m.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise UserError(f"{at}: 'weight' must be 0 or 1, got {weight!r}")
    if weight == 0 and role != "assistant":
        raise UserError(f"{at}: 'weight' applies to assistant messages only")
    return Message(
        role,
        encodable(content, f"{at}: 'content'"),
        train=weight == 1,
        tool_calls=calls,
        tool_call_id=_optional_string(m, "tool_call_id", at) if role == "tool" else None,
        name=_optional_string(m, "name", at) if role == "tool" else None,
    )


def parse_tools(value: Any, at: str) -> tuple[dict[str, Any], ...]:
    """The record's ``tools`` (function definitions), passed to the template as they are."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise UserError(f"{at}: must be a list of tool definitions, got {json_type(value)}")
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise UserError(f"{at}[{i}]: a tool definition must be an object, got {json_type(tool)}")
    return tuple(value)


def tool_name(call_or_tool: dict[str, Any]) -> str:
    """The function name of a normalised tool call or of a tool definition (either layout)."""
    inner = call_or_tool.get("function")
    return str((inner if isinstance(inner, dict) else call_or_tool).get("name", ""))


def _tool_calls(value: Any, role: Any, at: str) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    if role != "assistant":
        raise UserError(f"{at}: 'tool_calls' belong to assistant messages only")
    if not isinstance(value, list) or not value:
        raise UserError(f"{at}: 'tool_calls' must be a non-empty list, got {json_type(value)}")
    return tuple(_tool_call(c, f"{at}: tool_calls[{j}]") for j, c in enumerate(value))


def _tool_call(call: Any, at: str) -> dict[str, Any]:
    """``{"type": "function", "id"?, "function": {"name", "arguments"}}``; the flat
    ``{"name", "arguments"}`` some datasets use is accepted and normalised to it."""
    if not isinstance(call, dict):
        raise UserError(f"{at}: expected an object, got {json_type(call)}")
    fn = call.get("function", call)
    if not isinstance(fn, dict):
        raise UserError(f"{at}: 'function' must be an object, got {json_type(fn)}")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise UserError(f"{at}: 'function.name' must be a non-empty string, got {json_type(name)}")
    arguments = fn.get("arguments", {})
    if isinstance(arguments, str):
        from loraswitch.core.files.json_file import parse_json

        arguments = parse_json(arguments, f"{at}: 'function.arguments'")
    if not isinstance(arguments, dict):
        raise UserError(f"{at}: 'function.arguments' must be an object (or a JSON string of one)")
    out: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def _optional_string(m: dict, key: str, at: str) -> str | None:
    value = m.get(key)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{at}: {key!r} must be a string, got {json_type(value)}")
    return value
