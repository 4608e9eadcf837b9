"""The validated example every data source turns into: a ``Record`` of ``Message``s, or a
prompt/completion pair, or plain text. Nothing here reads files (sources.py) or decides which
shape a file holds (shapes.py); it is the plain data the tokenizer and evaluation consume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    train: bool = True  # only meaningful for assistant messages ("weight": 0 -> False)
    # OpenAI style tool calls of an assistant message: {"type": "function", "id"?, "function":
    # {"name": str, "arguments": dict}} (arguments given as a JSON string are decoded, as
    # Hugging Face chat templates expect a mapping).
    tool_calls: tuple[dict[str, Any], ...] = ()
    tool_call_id: str | None = None  # a tool message: the call it answers
    name: str | None = None  # a tool message: the tool's name

    def as_template_dict(self) -> dict[str, Any]:
        """What a chat template sees for this message (keys absent when unset, as templates
        test ``message.tool_calls is defined``)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [dict(c) for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class Record:
    """One example. ``where`` names the file and the record (``file:line`` for JSONL,
    ``file[index]`` for a JSON array, ``file: row N`` for a table) so later stages (tokeniser,
    chat template) can report errors at the record the user must edit."""

    kind: Literal["chat", "completion", "text"]
    where: str
    messages: tuple[Message, ...] = ()
    prompt: str = ""
    completion: str = ""
    text: str = ""
    tools: tuple[dict[str, Any], ...] = ()  # chat records: the tool definitions offered to the model

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) or any(m.tool_calls or m.role == "tool" for m in self.messages)


def encodable(text: str, where: str) -> str:
    """``text`` if the tokenizer can take it: a lone surrogate (from a ``\\ud800`` escape, or
    from undecodable bytes in a command-line argument) cannot be encoded and would surface as a
    TypeError deep inside the tokenizer."""
    from loraswitch.core.errors import UserError

    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = text[e.start : e.end].encode("unicode_escape").decode()
            raise UserError(
                f"{where}: holds the lone UTF-16 surrogate {bad} at character {e.start}; it is not valid Unicode"
            ) from None
    return text


def json_type(value: Any) -> str:
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
