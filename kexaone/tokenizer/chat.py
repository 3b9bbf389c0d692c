"""The K-EXAONE chat format (SPEC section 2): render conversations, encode them with an SFT loss mask, and parse
generated assistant text back into reasoning, answer and tool calls.

Format, one turn per message, each ending `<|endofturn|>\\n`:
    <|system|>\\n{system}<|endofturn|>\\n
    <|tool_declare|>\\n<tool>{json schema}</tool>\\n<tool>...</tool><|endofturn|>\\n   (when tools are given; after
                                                                               a leading system turn)
    <|user|>\\n{question}<|endofturn|>\\n
    <|assistant|>\\n<think>\\n{reasoning}\\n</think>\\n\\n{answer}
        \\n<tool_call>{"name": ..., "arguments": {...}}</tool_call><|endofturn|>\\n    (one line; calls optional)
    <|tool|>\\n<tool_result>{result}</tool_result><|endofturn|>\\n
Reasoning is on by default; with it off (or with no reasoning) an assistant turn opens with the empty block
`<think>\\n\\n</think>\\n\\n`. Earlier assistant turns, those before the last user message, keep only their answer:
their reasoning is dropped, the common convention for reasoning models (the reasoning of a finished exchange is
not shown to the model again, which keeps contexts short). Turns after the last user message, i.e. the current
step of an agentic loop with its tool calls, keep their reasoning.

The format has one source: `template.jinja`, the Hugging Face chat template saved with every tokenizer. `render`
runs it with jinja2 with the settings of transformers' `apply_chat_template` (trim_blocks, lstrip_blocks,
loopcontrols, a `tojson` that keeps non-ASCII), so both give the same text (tested); its `{% generation %}` block, which
marks an assistant body for transformers' `return_assistant_tokens_mask`, gives `render_segments` and the SFT loss
mask here. This module checks the inputs (clear errors instead of template failures) but writes no format itself.
It does not sample or run tools.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kexaone.tokenizer.specials import ENDOFTURN, THINK_CLOSE, THINK_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN

ROLES = ("system", "user", "assistant", "tool")
TEMPLATE_PATH = Path(__file__).with_name("template.jinja")
# Marks around each {% generation %} block in the rendered text: Unicode noncharacters (reserved for a program's
# internal use), refused in the input so that they can only come from the marks.
_BODY_OPEN, _BODY_CLOSE = "\ufdd0", "\ufdd1"


@functools.lru_cache(maxsize=1)
def _template():
    """template.jinja compiled once, with the jinja2 settings transformers uses for chat templates. Rendering costs
    about 0.3 ms per conversation (10x the hand-written renderer it replaced; macros dominate)."""
    from jinja2 import Environment, nodes
    from jinja2.ext import Extension, loopcontrols

    class GenerationMarks(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            return _BODY_OPEN + caller() + _BODY_CLOSE

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message):
        raise ValueError(message)

    # Not sandboxed (transformers sandboxes templates that come with downloaded models): this is the package's own
    # file, and the sandbox's checks on every attribute access cost a quarter of the render time.
    env = Environment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationMarks, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(TEMPLATE_PATH.read_text(encoding="utf-8"))


def _check_content(content, where: str) -> None:
    if content is None or isinstance(content, str):
        return
    if isinstance(content, list):
        if not all(isinstance(part, dict) for part in content):
            raise ValueError(f"{where}: content parts must be dicts like {{'type': 'text', 'text': ...}}")
        return
    raise ValueError(f"{where}: content must be a string, a list of text parts or None, got {type(content).__name__}")


def _check_tool_call(call, where: str) -> None:
    if not isinstance(call, dict):
        raise ValueError(f"{where}: a tool call must be a dict, got {type(call).__name__}")
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValueError(f"{where}: a tool call needs a string 'name' (or 'function': {{'name': ...}}), got {call!r}")


def _check(messages, tools) -> None:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"message {i}: role must be one of {ROLES}, got {m!r:.120}")
        where = f"message {i} ({m['role']})"
        if m["role"] != "tool":  # a tool result may be any JSON value (it is written as JSON)
            _check_content(m.get("content"), where)
        for call in m.get("tool_calls") or []:
            _check_tool_call(call, where)
    if tools is not None and not all(isinstance(t, dict) for t in tools):
        raise ValueError("tools must be a list of JSON-schema dicts")
    raw = json.dumps([list(messages), tools], ensure_ascii=False, default=str)
    for mark in (_BODY_OPEN, _BODY_CLOSE):
        if mark in raw:
            raise ValueError(f"the conversation contains U+{ord(mark):04X}, a Unicode noncharacter this renderer "
                             "reserves for its own marks")


def render_segments(
    messages: Sequence[dict],
    tools: Sequence[dict] | None = None,
    enable_thinking: bool = True,
    add_generation_prompt: bool = False,
) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant_body) pieces; their concatenation is `render(...)`.
    An assistant body is everything the assistant writes in its turn: from after `<|assistant|>\\n` up to and
    including `<|endofturn|>` (the think block, the answer and the tool calls): the template's generation blocks."""
    _check(messages, tools)
    text = _template().render(messages=list(messages), tools=list(tools) if tools else None,
                              enable_thinking=enable_thinking, add_generation_prompt=add_generation_prompt)
    segs: list[tuple[str, bool]] = []
    for n, piece in enumerate(text.split(_BODY_OPEN)):
        if n == 0:
            segs.append((piece, False))
            continue
        body, _, rest = piece.partition(_BODY_CLOSE)
        segs += [(body, True), (rest, False)]
    return [(t, b) for t, b in segs if t]


def render(
    messages: Sequence[dict],
    tools: Sequence[dict] | None = None,
    enable_thinking: bool = True,
    add_generation_prompt: bool = False,
) -> str:
    """The conversation as K-EXAONE chat text (see the module docstring). `messages` are OpenAI-style dicts: role
    system/user/assistant/tool, `content`, optional `reasoning_content` and `tool_calls` (OpenAI
    `{"function": {"name", "arguments"}}` or flat `{"name", "arguments"}`; string arguments are inserted verbatim)."""
    return "".join(s for s, _ in render_segments(messages, tools, enable_thinking, add_generation_prompt))


def encode_chat(
    tokenizer,
    messages: Sequence[dict],
    tools: Sequence[dict] | None = None,
    enable_thinking: bool = True,
    add_generation_prompt: bool = False,
) -> tuple[list[int], list[int]]:
    """Ids of `render(...)` and a loss mask: 1 on the tokens of assistant bodies (think block, answer, tool calls
    and the closing `<|endofturn|>`), 0 elsewhere. The text is encoded in one piece, so ids equal
    `tokenizer.encode(render(...))`; a token belongs to the body its first character falls in."""
    segs = render_segments(messages, tools, enable_thinking, add_generation_prompt)
    text = "".join(s for s, _ in segs)
    spans: list[tuple[int, int]] = []
    pos = 0
    for s, is_body in segs:
        if is_body:
            spans.append((pos, pos + len(s)))
        pos += len(s)
    ids, offsets = tokenizer.encode_with_offsets(text)
    mask = [0] * len(ids)
    j = 0
    for n, (start, _end) in enumerate(offsets):
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        if j < len(spans) and spans[j][0] <= start < spans[j][1]:
            mask[n] = 1
    return ids, mask


@dataclass
class ParsedReply:
    """An assistant reply split into its parts. `reasoning` is None when there was no (or an empty) think block;
    `tool_calls` are `{"name": str, "arguments": dict}`; `errors` describe what could not be parsed."""

    reasoning: str | None
    content: str
    tool_calls: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


_TOOL_CALL_RE = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)


def _parse_call(raw: str, n: int, errors: list[str]) -> dict | None:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        errors.append(f"tool call {n}: invalid JSON ({e.msg} at char {e.pos}): {raw.strip()[:200]!r}")
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        errors.append(f"tool call {n}: expected an object with a string 'name', got {raw.strip()[:200]!r}")
        return None
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            errors.append(f"tool call {n} ({obj['name']}): arguments string is not JSON ({e.msg})")
            return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        errors.append(f"tool call {n} ({obj['name']}): arguments must be an object, got {type(args).__name__}")
        return None
    return {"name": obj["name"], "arguments": args}


def parse_assistant(text: str) -> ParsedReply:
    """Split generated assistant text (what follows the generation prompt, with or without the opening `<think>`)
    into reasoning, answer and tool calls. Never raises on malformed output: problems go to `errors`."""
    errors: list[str] = []
    end = text.find(ENDOFTURN)
    if end >= 0:
        text = text[:end]
    reasoning: str | None = None
    close = text.find(THINK_CLOSE)
    if close >= 0:
        head = text[:close].strip()
        if head.startswith(THINK_OPEN):
            head = head[len(THINK_OPEN):]
        reasoning = head.strip() or None
        text = text[close + len(THINK_CLOSE):]
    elif text.lstrip().startswith(THINK_OPEN):
        reasoning = text.lstrip()[len(THINK_OPEN):].strip() or None
        text = ""
        errors.append("reasoning was not closed with </think>")
    calls: list[dict] = []
    n = 0

    def take(match: re.Match) -> str:
        nonlocal n
        n += 1
        call = _parse_call(match.group(1), n, errors)
        if call is not None:
            calls.append(call)
        return ""

    content = _TOOL_CALL_RE.sub(take, text)
    open_at = content.find(TOOL_CALL_OPEN)
    if open_at >= 0:
        errors.append(f"tool call {n + 1}: not closed with {TOOL_CALL_CLOSE}: {content[open_at:][:200]!r}")
        content = content[:open_at]
    return ParsedReply(reasoning=reasoning, content=content.strip(), tool_calls=calls, errors=errors)
