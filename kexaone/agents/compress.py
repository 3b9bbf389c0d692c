"""The trajectory compressor: every N tool steps the agent's history is replaced by one JSON record.

The record (ReSum's "reasoning state", MEM1's internal state) is
    {"question": str, "key_facts": [{"fact": str, "source": str}], "open_questions": [str],
     "tried_queries": [str], "next_steps": [str]}
written by the same model from a plain-text transcript of the history (including the previous record). What the
agent knows for certain is merged in rather than trusted to the model: `tried_queries` always holds every query
actually searched, and when the model's reply is not a valid record the compressor builds one from the summaries
seen (`fallback=True`), so compression never loses the evidence gathered so far.

The agent then restarts from (system prompt, question + record). This module does not decide when to compress
(kexaone.agents.loop does).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import jsonschema

RECORD_SCHEMA = {
    "type": "object",
    "properties": {
        "question": {"type": "string"},
        "key_facts": {"type": "array", "items": {
            "type": "object", "properties": {"fact": {"type": "string"}, "source": {"type": "string"}},
            "required": ["fact", "source"]}},
        "open_questions": {"type": "array", "items": {"type": "string"}},
        "tried_queries": {"type": "array", "items": {"type": "string"}},
        "next_steps": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["key_facts", "open_questions", "tried_queries", "next_steps"],
}
COMPRESS_SYSTEM = (
    "You compress the working history of a research assistant into one JSON object, and output only that object:\n"
    '{"key_facts": [{"fact": "...", "source": "<document id or tool>"}], "open_questions": ["..."], '
    '"tried_queries": ["..."], "next_steps": ["..."]}\n'
    "Keep every fact that bears on the question with its source; drop everything else."
)
TOOL_RESULT_CHARS = 1200


def history_text(messages: Sequence[dict]) -> str:
    """A plain-text transcript of chat messages (tool calls and results included) for the compressor."""
    lines = []
    for m in messages:
        role = m.get("role")
        if role == "system":
            continue
        content = m.get("content") or ""
        if role == "assistant":
            calls = [f"{c['function']['name']}({c['function']['arguments']})" for c in m.get("tool_calls") or []]
            lines.append("ASSISTANT: " + content + ("" if not calls else (" " if content else "") + "CALLS " +
                                                    "; ".join(calls)))
        elif role == "tool":
            cut = content[:TOOL_RESULT_CHARS] + ("…" if len(content) > TOOL_RESULT_CHARS else "")
            lines.append(f"TOOL RESULT ({m.get('tool_call_id', '')}): {cut}")
        else:
            lines.append(f"{str(role).upper()}: {content}")
    return "\n".join(lines)


def parse_record(text: str) -> dict:
    """The first JSON object in `text` that is a valid record; ValueError naming what is wrong otherwise."""
    if not text or "{" not in text:
        raise ValueError("the compressor reply holds no JSON object")
    dec = json.JSONDecoder()
    last_err = "no JSON object parsed"
    for start in [i for i, ch in enumerate(text) if ch == "{"]:
        try:
            obj, _ = dec.raw_decode(text, start)
        except json.JSONDecodeError as e:
            last_err = f"invalid JSON ({e.msg})"
            continue
        try:
            jsonschema.validate(obj, RECORD_SCHEMA)
        except jsonschema.ValidationError as e:
            last_err = f"not a record: {e.message}"
            continue
        return obj
    raise ValueError(f"the compressor reply is not a record: {last_err}")


def fallback_record(question: str, previous: dict | None, summaries: Sequence[dict]) -> dict:
    """A record built without the model: the previous record's facts plus one fact per document summary."""
    facts = list(previous["key_facts"]) if previous else []
    facts += [{"fact": s["summary"], "source": s["doc"]} for s in summaries]
    return {"question": question, "key_facts": facts,
            "open_questions": list(previous["open_questions"]) if previous else [question],
            "tried_queries": [], "next_steps": list(previous["next_steps"]) if previous else []}


def merge_known(record: dict, question: str, queries: Sequence[str]) -> dict:
    """The record with the question set and every query actually searched listed once, in order."""
    tried = list(dict.fromkeys([*record.get("tried_queries", []), *queries]))
    return {"question": question, "key_facts": record["key_facts"], "open_questions": record["open_questions"],
            "tried_queries": tried, "next_steps": record["next_steps"]}


def compress_history(backend, question: str, messages: Sequence[dict], *, queries: Sequence[str],
                     summaries: Sequence[dict], previous: dict | None, max_tokens: int = 512,
                     temperature: float = 0.0, enable_thinking: bool | None = False) -> dict:
    """Ask the model for a record of `messages`. Returns {"record", "fallback", "error", "reply", "request"}."""
    request = [{"role": "system", "content": COMPRESS_SYSTEM},
               {"role": "user", "content": f"Question: {question}\n\nHistory:\n{history_text(messages)}"}]
    reply = backend.chat(request, tools=None, temperature=temperature, max_tokens=max_tokens,
                         enable_thinking=enable_thinking)
    error = None
    try:
        record = parse_record(reply.content or "")
    except ValueError as e:
        error = str(e)
        record = fallback_record(question, previous, summaries)
    return {"record": merge_known(record, question, queries), "fallback": error is not None, "error": error,
            "reply": reply, "request": request}


def restart_messages(system: str, question: str, record: dict) -> list[dict]:
    """The history after a compression: the system prompt and the question with the record."""
    user = (f"{question}\n\nProgress so far (compressed record of your earlier steps):\n"
            f"{json.dumps(record, ensure_ascii=False)}\n\nContinue from this record.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
