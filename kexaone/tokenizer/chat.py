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

`template.jinja` is the same format as a Hugging Face chat template; a test checks that both agree. This module
does not sample or run tools.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from kexaone.tokenizer.specials import (
    ASSISTANT,
    ENDOFTURN,
    SYSTEM,
    THINK_CLOSE,
    THINK_OPEN,
    TOOL,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_CLOSE,
    TOOL_DECLARE,
    TOOL_OPEN,
    TOOL_RESULT_CLOSE,
    TOOL_RESULT_OPEN,
    USER,
)

ROLES = ("system", "user", "assistant", "tool")
EMPTY_THINK = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"


def _json(obj) -> str:
    # Same as the `tojson` filter of transformers' chat templates: json.dumps defaults, non-ASCII kept.
    return json.dumps(obj, ensure_ascii=False)


def _text(content, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise ValueError(f"{where}: content parts must be dicts like {{'type': 'text', 'text': ...}}")
            if part.get("text") is not None:
                parts.append(str(part["text"]))
        return "".join(parts)
    raise ValueError(f"{where}: content must be a string, a list of text parts or None, got {type(content).__name__}")


def _tool_call_text(call, where: str) -> str:
    if not isinstance(call, dict):
        raise ValueError(f"{where}: a tool call must be a dict, got {type(call).__name__}")
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValueError(f"{where}: a tool call needs a string 'name' (or 'function': {{'name': ...}}), got {call!r}")
    args = fn.get("arguments")
    args_text = args if isinstance(args, str) else _json({} if args is None else args)
    return f'{TOOL_CALL_OPEN}{{"name": {_json(fn["name"])}, "arguments": {args_text}}}{TOOL_CALL_CLOSE}'


def _declare(tools: Sequence[dict]) -> str:
    body = "\n".join(f"{TOOL_OPEN}{_json(t)}{TOOL_CLOSE}" for t in tools)
    return f"{TOOL_DECLARE}\n{body}{ENDOFTURN}\n"


def render_segments(
    messages: Sequence[dict],
    tools: Sequence[dict] | None = None,
    enable_thinking: bool = True,
    add_generation_prompt: bool = False,
) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant_body) pieces; their concatenation is `render(...)`.
    An assistant body is everything the assistant writes in its turn: from after `<|assistant|>\\n` up to and
    including `<|endofturn|>` (the think block, the answer and the tool calls)."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"message {i}: role must be one of {ROLES}, got {m!r:.120}")
    if tools is not None and not all(isinstance(t, dict) for t in tools):
        raise ValueError("tools must be a list of JSON-schema dicts")
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    segs: list[tuple[str, bool]] = []
    declared = not tools
    for i, m in enumerate(messages):
        role, where = m["role"], f"message {i} ({m['role']})"
        if not declared and not (i == 0 and role == "system"):
            segs.append((_declare(tools), False))
            declared = True
        if role == "system":
            segs.append((f"{SYSTEM}\n{_text(m.get('content'), where)}{ENDOFTURN}\n", False))
        elif role == "user":
            segs.append((f"{USER}\n{_text(m.get('content'), where)}{ENDOFTURN}\n", False))
        elif role == "tool":
            content = m.get("content")
            result = _text(content, where) if content is None or isinstance(content, str) else _json(content)
            segs.append((f"{TOOL}\n{TOOL_RESULT_OPEN}{result}{TOOL_RESULT_CLOSE}{ENDOFTURN}\n", False))
        else:
            body = ""
            if i > last_user:
                reasoning = (m.get("reasoning_content") or "").strip()
                body = f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n" if enable_thinking and reasoning else EMPTY_THINK
            content = _text(m.get("content"), where)
            body += content
            calls = m.get("tool_calls") or []
            if calls:
                body += ("\n" if content else "") + "\n".join(_tool_call_text(c, where) for c in calls)
            segs.append((f"{ASSISTANT}\n", False))
            segs.append((body + ENDOFTURN, True))
            segs.append(("\n", False))
    if not declared:
        segs.append((_declare(tools), False))
    if add_generation_prompt:
        segs.append((f"{ASSISTANT}\n" + (f"{THINK_OPEN}\n" if enable_thinking else EMPTY_THINK), False))
    return segs


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
