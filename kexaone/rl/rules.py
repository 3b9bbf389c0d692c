"""Rule-based rewards (preference learning, and RL's safety prompts): reply language, length limits, tool-call
validity and refusing only what should be refused.

TRL-signature rewards (see kexaone.rl.rewards) driven by optional dataset columns; a row without the column a rule
needs gets None (not applicable):
  - `language_match_reward`: the reply is in the row's `language` (an ISO 639-1 code), or, without that column,
    in the language langdetect finds in the prompt;
  - `length_reward`: the reply keeps the row's `max_words` / `min_words` / `max_chars` limits;
  - `tool_call_reward`: every tool call in the reply parses, names a tool of the row's `tools` (OpenAI format) and
    passes that tool's JSON-schema parameters (required keys, no unknown keys when additionalProperties is false,
    basic types and enums); with a `tool_call_expected` column, calling (or not) must match it;
  - `refusal_reward`: with the row's `refuse` column, 1.0 when a harmful request (refuse true) is refused, or a
    benign look-alike (refuse false) is answered without a refusal (the safety evaluation's refusal detector,
    kexaone.eval.safety.suite.find_refusal, six languages); None without the column.
What this module does not do: judge style or helpfulness (kexaone.rl.judge).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kexaone.rl.completions import column, completion_text, final_text, prompt_text
from kexaone.rl.verifiers.ifeval import count_words, detect_language
from kexaone.tokenizer.chat import parse_assistant

__all__ = ["language_match_reward", "length_reward", "tool_call_reward", "tool_call_errors", "refusal_reward"]


def _base_language(code: str | None) -> str | None:
    return code.split("-")[0].lower() if code else None  # langdetect says "zh-cn"; rows say "zh"


def language_match_reward(prompts: Sequence, completions: Sequence, **columns) -> list[float | None]:
    """1.0 when the reply's language is the expected one, else 0.0; None where neither the `language` column nor
    the prompt gives a language, or the reply has no detectable language (only numbers or symbols). An empty reply
    scores 0.0."""
    n = len(completions)
    expected_col = column(columns, ("language",), n)
    out: list[float | None] = []
    for i, completion in enumerate(completions):
        expected = expected_col[i] if expected_col is not None else None
        if expected is None and i < len(prompts):
            expected = detect_language(prompt_text(prompts[i]))
        if not expected:
            out.append(None)
            continue
        reply = final_text(completion)
        if not reply:
            out.append(0.0)
            continue
        detected = detect_language(reply)
        out.append(None if detected is None else float(_base_language(detected) == _base_language(expected)))
    return out


def length_reward(prompts: Sequence, completions: Sequence, **columns) -> list[float | None]:
    """1.0 when the reply keeps every limit its row sets (`max_words`, `min_words`: `\\w+` runs; `max_chars`), else
    0.0; None where the row sets none."""
    n = len(completions)
    limits = {name: column(columns, (name,), n) for name in ("max_words", "min_words", "max_chars")}
    out: list[float | None] = []
    for i, completion in enumerate(completions):
        row = {name: values[i] for name, values in limits.items() if values is not None and values[i] is not None}
        if not row:
            out.append(None)
            continue
        reply = final_text(completion)
        words = count_words(reply)
        ok = (words <= row.get("max_words", words) and words >= row.get("min_words", words)
              and len(reply) <= row.get("max_chars", len(reply)))
        out.append(float(ok))
    return out


_JSON_TYPES = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "array": (list,),
    "object": (dict,), "null": (type(None),),
}


def _type_ok(value: Any, schema: Mapping) -> bool:
    kinds = schema.get("type")
    if kinds is None:
        return True
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    for kind in kinds:
        allowed = _JSON_TYPES.get(kind)
        if allowed is None:
            return True  # a type this checker does not know: do not fail the reply for it
        # bool is an int in Python, but not a JSON integer/number.
        if isinstance(value, allowed) and not (isinstance(value, bool) and kind in ("integer", "number")):
            return True
    return False


def _tool_schemas(tools: Sequence) -> dict[str, Mapping]:
    schemas = {}
    for tool in tools:
        spec = tool.get("function", tool) if isinstance(tool, Mapping) else None
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise ValueError(f"a tool must be {{'type': 'function', 'function': {{'name', 'parameters'}}}}, got "
                             f"{tool!r:.200}")
        schemas[spec["name"]] = spec.get("parameters") or {}
    return schemas


def _calls_of(completion: Any) -> tuple[list[dict], list[str]]:
    """(tool calls, parse errors) of a reply: from the message's `tool_calls` when the completion is a conversation
    that carries them, else parsed from the text with the chat template's parser."""
    if isinstance(completion, Sequence) and not isinstance(completion, str):
        for message in reversed(completion):
            if isinstance(message, Mapping) and message.get("role", "assistant") == "assistant":
                if message.get("tool_calls"):
                    calls = [c.get("function", c) for c in message["tool_calls"]]
                    return [{"name": c.get("name"), "arguments": c.get("arguments", {})} for c in calls], []
                break
    parsed = parse_assistant(completion_text(completion))
    return parsed.tool_calls, parsed.errors


def tool_call_errors(completion: Any, tools: Sequence) -> tuple[int, list[str]]:
    """(number of tool calls, what is wrong with them) for one reply against the available `tools`."""
    schemas = _tool_schemas(tools)
    calls, errors = _calls_of(completion)
    errors = list(errors)
    for n, call in enumerate(calls, 1):
        name, args = call.get("name"), call.get("arguments")
        if name not in schemas:
            errors.append(f"call {n}: unknown tool {name!r}; available: {sorted(schemas)}")
            continue
        if not isinstance(args, Mapping):
            errors.append(f"call {n} ({name}): arguments must be an object")
            continue
        schema = schemas[name]
        properties = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in args:
                errors.append(f"call {n} ({name}): missing required argument {key!r}")
        for key, value in args.items():
            prop = properties.get(key)
            if prop is None:
                if schema.get("additionalProperties", True) is False:
                    errors.append(f"call {n} ({name}): unknown argument {key!r}")
                continue
            if not _type_ok(value, prop):
                errors.append(f"call {n} ({name}): argument {key!r} should be {prop.get('type')}, got {value!r:.50}")
            elif "enum" in prop and value not in prop["enum"]:
                errors.append(f"call {n} ({name}): argument {key!r} must be one of {prop['enum']}, got {value!r:.50}")
    return len(calls), errors


def tool_call_reward(prompts: Sequence, completions: Sequence, **columns) -> list[float | None]:
    """1.0 when the reply's tool calls are all valid against the row's `tools` (see `tool_call_errors`) and, where
    the row has `tool_call_expected`, it calls a tool exactly when expected; else 0.0. None without `tools`."""
    n = len(completions)
    tools_col = column(columns, ("tools",), n)
    expected_col = column(columns, ("tool_call_expected",), n)
    if tools_col is None:
        return [None] * n
    out: list[float | None] = []
    for i, completion in enumerate(completions):
        if tools_col[i] is None:
            out.append(None)
            continue
        count, errors = tool_call_errors(completion, tools_col[i])
        expected = expected_col[i] if expected_col is not None else None
        wrong_presence = expected is not None and bool(expected) != (count > 0)
        out.append(0.0 if errors or wrong_presence else 1.0)
    return out


def refusal_reward(prompts: Sequence, completions: Sequence, **columns) -> list[float | None]:
    """Refuse the harmful, help the benign look-alike (column `refuse`); None where the row has no such column."""
    from kexaone.eval.safety.suite import find_refusal

    refuse = column(columns, ("refuse",), len(completions))
    if refuse is None:
        return [None] * len(completions)
    out: list[float | None] = []
    for completion, want in zip(completions, refuse):
        if want is None:
            out.append(None)
            continue
        reply = final_text(completion)
        refused = find_refusal(reply) is not None
        out.append(float(refused) if want else float(bool(reply) and not refused))
    return out
