"""The model's own tokenizer (tokenizer.json) and chat template, with loss masks.

Loss masks come from character spans, not from re-tokenising prefixes: the conversation is
rendered once, the full string is tokenised once, and a token is a target iff its characters
overlap an assistant message's content or the end-of-turn marker the template writes right
after it (as transformers' assistant masks do: a token that merges the header's last newline
with the content's first letter is needed to produce that letter, so it is trained).
Tokenising prefixes separately can merge differently at the boundary (BPE), which would
shift the mask by a token; offsets into the one real tokenisation cannot.

Reasoning blocks: an assistant content holding ``<think>...</think>`` is rewritten by templates
that know it (Qwen3 normalises the whitespace around it, and drops it from the turns before the
last user message). The loss then covers what the template kept of the message: from ``<think>``
through the answer and end-of-turn token, or only the answer where the block was dropped.
``chat_template_kwargs`` (``enable_thinking``...) reach every render as template variables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from loraswitch.core.data.records import Message, Record, encodable
from loraswitch.core.data.shapes import parse_record
from loraswitch.core.errors import UserError
from loraswitch.core.files.json_file import MAX_JSON_FILE_BYTES, read_json_object
from loraswitch.core.files.paths import read_bounded, regular_file
from loraswitch.core.types import TokenizedExample

# Strings that end a turn in the templates of common model families; those present in both the
# vocabulary and the chat template become stop ids and targets after assistant content.
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
)


@dataclass(frozen=True)
class _Span:
    start: int
    end: int


@dataclass(frozen=True)
class _Plan:
    text: str
    spans: tuple[_Span, ...]
    add_special_tokens: bool
    append_eos: bool  # text/raw completion: end with EOS; chat templates write their own
    all_targets: bool = False  # text records: every token is a target


class ChatTokenizer:
    """Encodes records and prompts the way the model was trained to see them."""

    def __init__(
        self,
        tokenizer: Any,
        chat_template: str | None = None,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        extra_eos_ids: Sequence[int] = (),
        source: str = "tokenizer",
        template_kwargs: Mapping[str, Any] | None = None,
    ):
        self._tok = tokenizer
        self.source = source
        self.template_kwargs = dict(template_kwargs or {})
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.chat_template = chat_template
        self._template = _compile_template(chat_template, source) if chat_template else None
        self.eos_id = self._id_of(eos_token)
        self._end_markers = [
            t for t in END_OF_TURN_TOKENS if self._id_of(t) is not None and chat_template and t in chat_template
        ]
        if eos_token and self.eos_id is not None and eos_token not in self._end_markers:
            self._end_markers.append(eos_token)
        ids = [self.eos_id] + [self._id_of(t) for t in self._end_markers] + list(extra_eos_ids)
        self._eos_ids = tuple(dict.fromkeys(i for i in ids if i is not None))
        pad = self._id_of(pad_token)
        self._pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dir(cls, model_dir: str | Path, template_kwargs: Mapping[str, Any] | None = None) -> ChatTokenizer:
        """Load tokenizer.json, tokenizer_config.json (special tokens, chat_template) and, when
        present, chat_template.jinja and generation_config.json's eos ids, as HF writes them.
        In a model directory (config.json beside it) every id the tokenizer can produce must be
        below the model's vocab_size (model_dir.check_tokenizer_fits).
        ``template_kwargs`` (config ``chat_template_kwargs``) go to every render."""
        from tokenizers import Tokenizer

        from loraswitch.core.models.model_dir import check_tokenizer_fits

        d = Path(model_dir)
        tok_file = regular_file(d / "tokenizer.json", missing="tokenizer.json not found in the model directory")
        try:
            tok = Tokenizer.from_file(str(tok_file))
        except Exception as e:  # the Rust error text is one line and says what is wrong
            raise UserError(f"{tok_file}: cannot load tokenizer: {str(e).splitlines()[0] if str(e) else e!r}") from e
        if (d / "config.json").exists():
            check_tokenizer_fits(tok, d)
        cfg = _read_optional_json(d / "tokenizer_config.json")
        template = cfg.get("chat_template")
        if isinstance(template, list):  # several named templates: HF uses the one named "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        jinja_file = d / "chat_template.jinja"  # transformers >= 4.47 writes the template here
        if template is None and (jinja_file.exists() or jinja_file.is_symlink()):
            template = _read_template(jinja_file)
            source = str(jinja_file)
        else:
            source = str(d / "tokenizer_config.json")
        if template is not None and not isinstance(template, str):
            raise UserError(f"{source}: chat_template must be a string, got {type(template).__name__}")
        gen = _read_optional_json(d / "generation_config.json")
        gen_eos = gen.get("eos_token_id")
        extra = [i for i in (gen_eos if isinstance(gen_eos, list) else [gen_eos]) if _is_id(i)]
        eos = _token_str(cfg.get("eos_token"))
        if eos is not None and tok.token_to_id(eos) is None:
            raise UserError(
                f"{d / 'tokenizer_config.json'}: eos_token {eos!r} is not in {tok_file.name}'s "
                "vocabulary; the two files do not belong together"
            )
        return cls(
            tok,
            template,
            bos_token=_token_str(cfg.get("bos_token")),
            eos_token=eos or _guess_eos(tok),
            pad_token=_token_str(cfg.get("pad_token")),
            extra_eos_ids=extra,
            source=source,
            template_kwargs=template_kwargs,
        )

    def _id_of(self, token: str | None) -> int | None:
        return self._tok.token_to_id(token) if token else None

    # ------------------------------------------------------------------ properties
    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Ids that end generation: EOS plus the template's end-of-turn tokens."""
        return self._eos_ids

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    # ------------------------------------------------------------------ encoding
    def encode_record(self, record: Record | dict, max_seq_len: int) -> tuple[TokenizedExample, bool]:
        """Token ids and loss mask for one record, cut to ``max_seq_len``; returns
        ``(example, truncated)``. Targets: assistant messages (chat), the completion, or every
        token (text), each followed by its end-of-turn/EOS token so the model learns to stop."""
        return self.encode_records([record], max_seq_len)[0]

    def encode_records(
        self, records: Sequence[Record | dict], max_seq_len: int, chunk: int = 1024
    ) -> list[tuple[TokenizedExample, bool]]:
        """``encode_record`` over many records; tokenises in batches, which the tokenizers
        library runs on all cores (tokenising is most of the time of loading a dataset)."""
        out: list[tuple[TokenizedExample, bool]] = []
        for lo in range(0, len(records), chunk):
            plans = [self._plan(r if isinstance(r, Record) else parse_record(r)) for r in records[lo : lo + chunk]]
            encodings: list[Any] = [None] * len(plans)
            for special in (True, False):  # encode_batch takes one add_special_tokens for all
                idx = [i for i, p in enumerate(plans) if p.add_special_tokens == special]
                if idx:
                    batch = self._tok.encode_batch([plans[i].text for i in idx], add_special_tokens=special)
                    for i, enc in zip(idx, batch):
                        encodings[i] = enc
            out.extend(self._finish(p, enc, max_seq_len) for p, enc in zip(plans, encodings))
        return out

    def encode_prompt(
        self, prompt: str | Sequence[dict[str, str] | Message], tools: Sequence[dict[str, Any]] = ()
    ) -> list[int]:
        """Ids to generate from: a string becomes one user turn; the template's generation
        prompt is appended (with the tool definitions ``tools``, if any). Without a chat
        template the string is encoded as is."""
        if isinstance(prompt, str):
            encodable(prompt, "prompt")  # undecodable bytes on the command line arrive as lone surrogates
            if self._template is None:
                return self._tok.encode(prompt, add_special_tokens=True).ids
            messages = [Message("user", prompt)]
        else:
            messages = [_as_message(m) for m in prompt]
            for i, m in enumerate(messages):
                encodable(m.content, f"prompt: messages[{i}]: 'content'")
        text = self.render(messages, add_generation_prompt=True, where="prompt", tools=tools)
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def render(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = False,
        where: str = "record",
        tools: Sequence[dict[str, Any]] = (),
    ) -> str:
        """The chat template applied to ``messages`` (and the tool definitions ``tools``);
        template errors name the record."""
        if self._template is None:
            raise UserError(f"{where}: chat records need a chat template, and {self.source} has none")
        try:
            return self._template.render(
                **self.template_kwargs,
                messages=[m.as_template_dict() for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                tools=[dict(t) for t in tools] or None,
                documents=None,
            )
        except _TemplateError as e:
            raise UserError(f"{where}: chat template of {self.source} refused this conversation: {e}") from e
        except Exception as e:
            raise UserError(f"{where}: chat template of {self.source} failed: {type(e).__name__}: {e}") from e

    # ------------------------------------------------------------------ internals
    def _plan(self, record: Record) -> _Plan:
        """The string to tokenise for a record and the character spans that are targets."""
        if record.kind == "text":
            return _Plan(record.text, (), add_special_tokens=True, append_eos=True, all_targets=True)
        if record.kind == "completion" and self._template is None:
            # No chat template: prompt and completion are concatenated as plain text.
            text = record.prompt + record.completion
            return _Plan(text, (_Span(len(record.prompt), len(text)),), add_special_tokens=True, append_eos=True)
        messages = (
            list(record.messages)
            if record.kind == "chat"
            else [Message("user", record.prompt), Message("assistant", record.completion)]
        )
        text = self.render(messages, where=record.where, tools=record.tools)
        if record.uses_tools:
            check_tools_rendered(record, text, self.source)
        # The template writes BOS itself if the model wants one, as transformers assumes.
        spans = self._assistant_spans(messages, text, record.where, record.tools)
        return _Plan(text, tuple(spans), add_special_tokens=False, append_eos=False)

    def _finish(self, plan: _Plan, enc: Any, max_seq_len: int) -> tuple[TokenizedExample, bool]:
        ids = np.asarray(enc.ids, dtype=np.int32)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        starts, ends = offsets[:, 0], offsets[:, 1]
        mask = np.zeros(len(ids), dtype=bool)
        for sp in plan.spans:
            mask |= (starts < sp.end) & (ends > sp.start)
        mask &= ends > starts  # tokens the post-processor added (BOS) cover no text
        if plan.all_targets:
            mask[:] = True  # including zero-width tokens inside the text (some SentencePiece pieces)
        if plan.append_eos and self.eos_id is not None:
            if len(ids) and ids[-1] == self.eos_id:
                mask[-1] = True  # the post-processor's own EOS still teaches the model to stop
            else:
                ids = np.append(ids, np.int32(self.eos_id))
                mask = np.append(mask, True)
        truncated = len(ids) > max_seq_len
        ids, mask = ids[:max_seq_len], mask[:max_seq_len]
        if len(mask):
            mask[0] = False  # token 0 has nothing before it to be predicted from
        return TokenizedExample(ids.astype(np.int32), mask), truncated

    def _assistant_spans(
        self, messages: list[Message], full: str, where: str, tools: Sequence[dict[str, Any]] = ()
    ) -> list[_Span]:
        """Character spans of trained assistant contents (plus their end-of-turn marker) in
        ``full``. Message i's content lies in what rendering messages[:i+1] adds to rendering
        messages[:i]; searching that region from its end skips a header that happens to
        contain the same text (content "assistant" after the header "assistant"). A template
        that renders a message differently once later turns follow (Qwen3's reasoning) is not
        prefix-preserving: the region then ends at the first end-of-turn marker."""
        spans = []
        for i, m in enumerate(messages):
            if m.role != "assistant" or not m.train:
                continue
            if m.tool_calls:
                spans.append(self._tool_call_span(messages[:i], full, where, tools))
                continue
            before = self._render_prefix(messages[:i], where, tools)
            upto = self.render(messages[: i + 1], where=where, tools=tools)
            lo = _common_prefix_len(before, full)
            hi = len(upto) if full.startswith(upto) else self._next_marker(full, lo)
            span = _find_content(full, m.content, lo, hi)
            if span is None and hi < len(full):
                span = _find_content(full, m.content, lo, len(full))
            if span is None:
                raise UserError(
                    f"{where}: the chat template of {self.source} does not reproduce assistant "
                    f"message {i}'s content verbatim, so its loss mask cannot be computed"
                )
            spans.append(_Span(span.start, self._end_of_turn(full, span.end)))
        return spans

    def _tool_call_span(self, before: list[Message], full: str, where: str, tools: Sequence[dict[str, Any]]) -> _Span:
        """An assistant turn that calls tools: everything the model writes after the generation
        prompt (content, the calls in the template's syntax, the end-of-turn marker) is a target."""
        try:
            prompt = self.render(before, add_generation_prompt=True, where=where, tools=tools)
        except UserError:
            prompt = ""
        start = _common_prefix_len(prompt, full)
        end = self._next_marker(full, start)
        return _Span(start, self._end_of_turn(full, end))

    def _next_marker(self, text: str, pos: int) -> int:
        """Where the first end-of-turn marker at or after ``pos`` starts (the text's end if none)."""
        found = [k for k in (text.find(marker, pos) for marker in self._end_markers) if k >= 0]
        return min(found, default=len(text))

    def _render_prefix(self, messages: list[Message], where: str, tools: Sequence[dict[str, Any]] = ()) -> str:
        if not messages:
            return ""
        try:
            return self.render(messages, where=where, tools=tools)
        except UserError:
            # Some templates refuse a conversation that does not yet satisfy them (e.g. must
            # start with user); the search region then starts at 0, still correct via rfind.
            return ""

    def _end_of_turn(self, text: str, pos: int) -> int:
        """Extend a content span over the end-of-turn marker that follows it (whitespace
        allowed in between, as in Llama 2's ``' ' + eos_token``)."""
        j = pos
        while j < len(text) and text[j] in " \t":
            j += 1
        for marker in self._end_markers:
            if text.startswith(marker, j):
                return j + len(marker)
        return pos


def check_tools_rendered(record: Record, text: str, source: str) -> None:
    """A template without tool support silently drops calls, tool results or definitions;
    training on that text would teach the wrong thing, so refuse naming the message."""
    from loraswitch.core.data.tool_calls import tool_name

    for i, m in enumerate(record.messages):
        missing = [tool_name(c) for c in m.tool_calls if tool_name(c) not in text]
        if missing:
            raise UserError(
                f"{record.where}: messages[{i}]: the chat template of {source} does not render tool calls "
                f"({missing[0]!r} is missing from its output); use a model whose template supports tools"
            )
        if m.role == "tool" and m.content.strip() and m.content.strip() not in text:
            raise UserError(
                f"{record.where}: messages[{i}]: the chat template of {source} does not render tool messages"
            )
    for j, t in enumerate(record.tools):
        if tool_name(t) and tool_name(t) not in text:
            raise UserError(
                f"{record.where}: 'tools'[{j}]: the chat template of {source} does not render tool definitions"
            )


def _find_content(full: str, content: str, lo: int, hi: int) -> _Span | None:
    """Last occurrence of the content (or of its stripped form, for templates that trim), or
    of its reasoning block and answer as a reasoning template rewrote them."""
    if not content.strip():
        return _empty_anchor(full, lo, hi)
    for needle in (content, content.strip()):
        k = full.rfind(needle, lo, hi)
        if k >= 0:
            return _Span(k, k + len(needle))
    return _find_reasoning(full, content, lo, hi) if THINK_END in content else None


THINK_START, THINK_END = "<think>", "</think>"


def _find_reasoning(full: str, content: str, lo: int, hi: int) -> _Span | None:
    """``<think>reasoning</think>answer`` as the template rendered it: the answer, preceded by
    the ``<think>`` block when the template kept one (Qwen3 keeps it in the turns after the
    last user message, with its own newlines, and drops it before)."""
    answer = content.split(THINK_END)[-1].strip()
    anchor = answer or THINK_END  # no answer: the block alone is the message
    k = full.rfind(anchor, lo, hi)
    if k < 0:
        return _empty_anchor(full, lo, hi) if not answer else None
    think = full.rfind(THINK_START, lo, k)
    return _Span(think if think >= 0 else k, k + len(anchor))


def _empty_anchor(full: str, lo: int, hi: int) -> _Span:
    """Empty assistant content still trains the end-of-turn marker: anchor an empty span
    right before the last marker in the region."""
    region = full[lo:hi]
    k = max(region.rfind(marker) for marker in END_OF_TURN_TOKENS)
    return _Span(lo + k, lo + k) if k >= 0 else _Span(hi, hi)


def _common_prefix_len(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


class _TemplateError(Exception):
    """What a template's ``raise_exception(...)`` raises."""


def _compile_template(source_text: str, source: str):
    """Compile as transformers does: sandboxed, trim_blocks/lstrip_blocks, raise_exception,
    strftime_now and a tojson that keeps non-ASCII text."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise _TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (templates written for transformers'
        assistant masks): render the body as is; our masks come from content spans."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", GenerationTag]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source_text)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"{source}: chat_template is not valid jinja (template line {e.lineno}): {e.message}") from e


def _read_template(path: Path) -> str:
    try:
        return read_bounded(path, MAX_JSON_FILE_BYTES, what="chat template").decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start + 1})") from e


def _read_optional_json(path: Path) -> dict[str, Any]:
    """tokenizer_config.json and generation_config.json are optional: absent reads as {}."""
    return read_json_object(path) if path.exists() or path.is_symlink() else {}


def _is_id(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _token_str(value: Any) -> str | None:
    """HF writes special tokens as strings or as AddedToken dicts {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _guess_eos(tok: Any) -> str | None:
    """No eos_token in the config: the first well-known end token the vocabulary has."""
    for t in ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>"):
        if tok.token_to_id(t) is not None:
            return t
    return None


def _as_message(m: dict[str, str] | Message) -> Message:
    return m if isinstance(m, Message) else Message(m["role"], m["content"])
