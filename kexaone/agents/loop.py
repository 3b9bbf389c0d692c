"""The agent: a ReAct-style tool-calling loop with a summarizer and a trajectory compressor (SPEC section 5).

Each step sends the history to the model with the tool declarations (OpenAI format, `tool_choice="auto"`); the
reply's tool calls run through a `ToolRegistry` (schema-validated; errors come back as tool results) and their
results are appended as `{"role": "tool", "tool_call_id", "content"}` messages, which kexaone's chat template
renders as K-EXAONE `<|tool|>` turns. A reply without tool calls is the final answer.

Built-in tools, next to any user-registered ones:
- `search(query)` over a local `DocumentIndex` (BM25), returning ids, titles and snippets;
- `open(doc, pattern)`: the passages of a document matching `pattern`, condensed by the summarizer sub-agent
  (kexaone.agents.summarize) so raw documents never enter the context;
- `python(code)`: code run by the RL code sandbox (kexaone.rl.sandbox) in a separate, limited process, never in
  this one; a timeout or a crash is a result the model reads, not an error of the agent.
Every `compress_every` tool steps, and whenever an agent prompt reaches `compress_at_tokens` (ReSum's "context
near its budget"), the history is replaced by one JSON record (kexaone.agents.compress). Limits:
`max_steps` tool steps and `max_total_tokens` over every call (agent and sub-agents); on reaching one, the model is
asked once more, with `tool_choice="none"`, for its final answer. The whole trajectory (every call, result, summary and
compression) is rewritten atomically to `trajectory_path` after each event, so a killed run leaves a readable file.

The model is any object with `chat(messages, *, tools, tool_choice, temperature, top_p, max_tokens,
enable_thinking, stop) -> ChatReply` (kexaone.eval.backends: a local engine or an OpenAI-compatible endpoint).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kexaone.agents.compress import compress_history, restart_messages
from kexaone.agents.search import DocumentIndex
from kexaone.agents.summarize import summarize_document
from kexaone.agents.tools import ToolRegistry, make_tool
from kexaone.utils.io import atomic_write_text

SEARCH_SYSTEM = (
    "You are a research assistant. Answer the user's question with the help of the declared tools{tools}. Call one "
    "tool at a time, check facts in the documents, and when you know the answer, reply with it and call no tool."
)
_TOOL_HINTS = {
    "search": "search(query) finds documents in a local collection",
    "open": "open(doc, pattern) reads the passages of document `doc` that match `pattern` and returns a summary",
    "python": "python(code) runs Python code in a sandbox and returns what it prints",
}
FINAL_PROMPT = "The {limit} limit is reached. Give your final answer now from what you have found; call no tool."
STOP_REASONS = ("answer", "max_steps", "max_tokens")
TRAJECTORY_VERSION = 1


@dataclass
class AgentConfig:
    """Limits and sampling of one agent run."""

    max_steps: int = 16  # tool calls executed, over the whole run
    max_total_tokens: int = 200_000  # prompt + completion tokens of every model call (agent, summarizer, compressor)
    compress_every: int = 0  # replace the history by a JSON record every N tool steps; 0: never
    compress_at_tokens: int = 0  # ... and after a step whose agent prompt had at least this many tokens; 0: never
    summarize: bool = True  # `open` returns the summarizer's condensation (False: the raw passages)
    python: bool = True  # offer the sandboxed `python(code)` tool
    max_reply_tokens: int = 512
    summary_tokens: int = 256
    compress_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    enable_thinking: bool | None = None  # None: the backend's default
    search_k: int = 5
    max_passages: int = 5
    max_tool_chars: int = 4000  # a tool result longer than this is cut before it enters the context
    python_timeout_s: float = 5.0
    python_memory_mb: int = 512
    seed: int | None = None  # sampling seed of the agent's n-th model call: seed + n (None: the backend's own)

    def __post_init__(self):
        for name in ("max_steps", "max_total_tokens", "max_reply_tokens", "summary_tokens", "compress_tokens",
                     "search_k", "max_passages", "max_tool_chars", "python_memory_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"AgentConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.compress_every < 0:
            raise ValueError(f"compress_every must be >= 0 (0 disables compression), got {self.compress_every}")
        if self.compress_at_tokens < 0:
            raise ValueError(f"compress_at_tokens must be >= 0 (0 disables it), got {self.compress_at_tokens}")
        if not self.python_timeout_s > 0:
            raise ValueError(f"python_timeout_s must be > 0, got {self.python_timeout_s}")


@dataclass
class AgentResult:
    answer: str
    stopped: str  # one of STOP_REASONS
    steps: int  # tool calls executed
    compressions: int
    tokens: int  # prompt + completion tokens over every call
    trajectory: dict = field(repr=False)
    # The history at the end, final answer included (after a compression it starts from the record): OpenAI-format
    # messages that kexaone.tokenizer.chat renders, e.g. for SFT data.
    messages: list[dict] = field(default_factory=list, repr=False)


def usage_tokens(reply: Any, request: Sequence[dict]) -> tuple[int, bool]:
    """(tokens a call cost, whether they are estimated). Backends report `usage` as a dict or an object with
    prompt_tokens/completion_tokens; without it, about 4 characters per token."""
    total = _usage(reply, "total_tokens") or _usage(reply, "prompt_tokens") + _usage(reply, "completion_tokens")
    if total:
        return total, False
    chars = len(json.dumps(list(request), ensure_ascii=False)) + len(getattr(reply, "content", "") or "")
    return max(1, chars // 4), True


def prompt_tokens(reply: Any, request: Sequence[dict]) -> int:
    """Prompt tokens of a call: the backend's count, else about 4 characters per token."""
    return _usage(reply, "prompt_tokens") or len(json.dumps(list(request), ensure_ascii=False)) // 4


def _usage(reply: Any, key: str) -> int:
    """One count from a reply's `usage` (a dict or an object); 0 when absent."""
    usage = getattr(reply, "usage", None)
    value = usage.get(key) if isinstance(usage, dict) else getattr(usage, key, None)
    return int(value or 0)


def _reply_record(reply: Any) -> dict:
    return {"content": getattr(reply, "content", None), "reasoning": getattr(reply, "reasoning", None),
            "tool_calls": list(getattr(reply, "tool_calls", None) or []),
            "finish_reason": getattr(reply, "finish_reason", None), "usage": _plain(getattr(reply, "usage", None))}


def _plain(obj: Any) -> Any:
    if obj is None or isinstance(obj, (dict, list, str, int, float, bool)):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    try:
        return asdict(obj)
    except TypeError:
        return str(obj)


class Trajectory:
    """The JSON record of a run; `add` appends one event and rewrites the file atomically (when a path is set)."""

    def __init__(self, path: str | Path | None, header: dict):
        self.path = Path(path) if path is not None else None
        if self.path is not None and not self.path.parent.exists():
            raise FileNotFoundError(f"directory {self.path.parent} does not exist (trajectory {self.path.name})")
        self.data = {"version": TRAJECTORY_VERSION, **header, "events": [], "answer": None, "stopped": None}
        self.save()

    def add(self, kind: str, **fields) -> dict:
        event = {"type": kind, "index": len(self.data["events"]), "time": round(time.time(), 3), **fields}
        self.data["events"].append(event)
        self.save()
        return event

    def save(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(self.data, ensure_ascii=False, indent=1, default=str))


class _Run:
    """State of one agent run (kept off `run_agent` so the built-in tools can reach it)."""

    def __init__(self, question, backend, index, registry, config, trajectory, system):
        self.question, self.backend, self.index, self.cfg = question, backend, index, config
        self.traj, self.system = trajectory, system
        self.tokens, self.steps, self.compressions, self.n_calls = 0, 0, 0, 0
        self.estimated_tokens = False  # some backend reply had no usage: its tokens were estimated from characters
        self.queries: list[str] = []
        self.summaries: list[dict] = []  # since the last compression
        self.record: dict | None = None
        self.registry = ToolRegistry()
        if index is not None:
            self.registry.register(make_tool(self.search, name="search"))
            self.registry.register(make_tool(self.open, name="open"))
        if config.python:
            self.registry.register(make_tool(self.python, name="python"))
        if registry is not None:
            self.registry.extend(registry)

    def charge(self, reply, request) -> int:
        n, estimated = usage_tokens(reply, request)
        self.tokens += n
        self.estimated_tokens = self.estimated_tokens or estimated
        return n

    # Built-in tools. Their docstrings are the descriptions the model sees.
    def search(self, query: str) -> list[dict]:
        """Search the local document collection.

        Args:
            query: Keywords to look for.
        """
        self.queries.append(query)
        return self.index.search(query, k=self.cfg.search_k)

    def open(self, doc: str, pattern: str = "") -> str:
        """Read a document: the passages matching a pattern, summarized with respect to the question.

        Args:
            doc: The document id returned by search.
            pattern: What to look for in the document (a phrase or regular expression).
        """
        d = self.index.get(doc)
        passages = self.index.passages(d.id, pattern, max_passages=self.cfg.max_passages)
        if not self.cfg.summarize:
            return f"[doc {d.id}] {d.title}\n" + "\n\n".join(passages)
        text, reply, request = summarize_document(
            self.backend, self.question, d.id, d.title, pattern, passages, max_tokens=self.cfg.summary_tokens,
            temperature=self.cfg.temperature, enable_thinking=False)
        cost = self.charge(reply, request)
        self.summaries.append({"doc": d.id, "summary": text})
        self.traj.add("summary", step=self.steps + 1, doc=d.id, title=d.title, pattern=pattern, passages=passages,
                      request=request, reply=_reply_record(reply), summary=text, tokens=cost)
        return f"[doc {d.id}] {d.title}\n{text}"

    def python(self, code: str) -> dict:
        """Run Python code in a sandbox (no network, limited time and memory) and return its output.

        Args:
            code: A complete Python program; print what you want to see.
        """
        from kexaone.rl.sandbox import run_code

        r = run_code(code, timeout_s=self.cfg.python_timeout_s, memory_mb=self.cfg.python_memory_mb)
        return {"ok": r.ok, "exit_code": r.exit_code, "timed_out": r.timed_out, "reason": r.reason,
                "stdout": r.stdout, "stderr": r.stderr}

    # The loop.
    def chat(self, messages, **kw):
        if self.cfg.seed is not None:  # only then: scripted backends need not accept `seed`
            kw["seed"] = self.cfg.seed + self.n_calls
        self.n_calls += 1
        return self.backend.chat(messages, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                 max_tokens=self.cfg.max_reply_tokens, enable_thinking=self.cfg.enable_thinking, **kw)

    def run(self) -> AgentResult:
        try:
            return self._loop()
        except BaseException as e:  # recorded, then raised: the trajectory file says how far the run got
            self.traj.add("error", error=f"{type(e).__name__}: {e}", steps=self.steps, tokens=self.tokens)
            raise

    def _loop(self) -> AgentResult:
        cfg = self.cfg
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": self.question}]
        since_compress = 0
        stopped, answer = None, ""
        while stopped is None:
            if self.steps >= cfg.max_steps:
                stopped = "max_steps"
                break
            if self.tokens >= cfg.max_total_tokens:
                stopped = "max_tokens"
                break
            reply = self.chat(messages, tools=self.registry.specs(), tool_choice="auto")
            cost = self.charge(reply, messages)
            full = bool(cfg.compress_at_tokens) and prompt_tokens(reply, messages) >= cfg.compress_at_tokens
            calls = list(reply.tool_calls or [])
            self.traj.add("model", step=self.steps, n_messages=len(messages), reply=_reply_record(reply), tokens=cost)
            if not calls:
                stopped, answer = "answer", (reply.content or "").strip()
                messages.append(self.final_message(reply))
                break
            messages.append(self.assistant_message(reply, calls))
            for call, wire in zip(calls, messages[-1]["tool_calls"]):
                messages.append(self.execute(call, wire["id"]))
                since_compress += 1
            if (cfg.compress_every and since_compress >= cfg.compress_every) or full:
                messages = self.compress(messages, "context" if full else "steps")
                since_compress = 0
        if stopped != "answer":
            limit = "step" if stopped == "max_steps" else "token"
            messages.append({"role": "user", "content": FINAL_PROMPT.format(limit=limit)})
            reply = self.chat(messages, tools=self.registry.specs(), tool_choice="none")
            cost = self.charge(reply, messages)
            self.traj.add("model", step=self.steps, n_messages=len(messages), reply=_reply_record(reply), tokens=cost,
                          forced_final=True)
            answer = (reply.content or "").strip()
            messages.append(self.final_message(reply))
        self.traj.add("final", answer=answer, stopped=stopped, steps=self.steps, compressions=self.compressions,
                      tokens=self.tokens)
        self.traj.data.update(answer=answer, stopped=stopped, steps=self.steps, compressions=self.compressions,
                              tokens=self.tokens, tokens_estimated=self.estimated_tokens)
        self.traj.save()
        return AgentResult(answer, stopped, self.steps, self.compressions, self.tokens, self.traj.data, messages)

    @staticmethod
    def final_message(reply) -> dict:
        msg = {"role": "assistant", "content": (reply.content or "").strip()}
        if getattr(reply, "reasoning", None):
            msg["reasoning_content"] = reply.reasoning
        return msg

    def assistant_message(self, reply, calls) -> dict:
        wire = []
        for j, c in enumerate(calls):
            args = c.get("arguments")
            wire.append({"id": c.get("id") or f"call_{self.steps}_{j}", "type": "function",
                         "function": {"name": c.get("name"),
                                      "arguments": args if isinstance(args, str) else json.dumps(args,
                                                                                                 ensure_ascii=False)}})
        msg = {"role": "assistant", "content": reply.content or "", "tool_calls": wire}
        if getattr(reply, "reasoning", None):
            msg["reasoning_content"] = reply.reasoning
        return msg

    def execute(self, call: dict, call_id: str) -> dict:
        self.steps += 1
        t0 = time.perf_counter()
        args = call.get("arguments")
        if isinstance(args, dict) and set(args) == {"_unparsed"}:
            args = args["_unparsed"]  # the endpoint could not parse the model's arguments: report it as such
        result = self.registry.call(call.get("name"), args)
        content = result.content
        if len(content) > self.cfg.max_tool_chars:
            content = content[: self.cfg.max_tool_chars] + f"… [cut: {len(result.content)} characters in all]"
        self.traj.add("tool", step=self.steps, id=call_id, name=call.get("name"), arguments=call.get("arguments"),
                      ok=result.ok, error=result.error, content=content,
                      seconds=round(time.perf_counter() - t0, 4))
        return {"role": "tool", "tool_call_id": call_id, "content": content}

    def compress(self, messages: list[dict], trigger: str) -> list[dict]:
        out = compress_history(self.backend, self.question, messages, queries=self.queries,
                               summaries=self.summaries, previous=self.record, max_tokens=self.cfg.compress_tokens,
                               temperature=self.cfg.temperature)
        cost = self.charge(out["reply"], out["request"])
        self.compressions += 1
        self.record = out["record"]
        self.summaries = []
        new = restart_messages(self.system, self.question, self.record)
        self.traj.add("compression", step=self.steps, number=self.compressions, trigger=trigger, record=self.record,
                      fallback=out["fallback"], error=out["error"], reply=_reply_record(out["reply"]),
                      replaced_messages=len(messages), tokens=cost)
        return new


def run_agent(question: str, backend, *, index: DocumentIndex | None = None, docs: Sequence[str] | None = None,
              registry: ToolRegistry | None = None, config: AgentConfig | None = None,
              trajectory_path: str | Path | None = None, system_prompt: str | None = None) -> AgentResult:
    """Answer `question` with tools. `index` (or `docs`, source specs to index) enables search/open; `registry`
    adds user tools; `config.python` the sandboxed python tool. Returns the answer and the trajectory (also written
    to `trajectory_path`)."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question must be a non-empty string")
    config = config or AgentConfig()
    if index is None and docs:
        index = DocumentIndex.from_sources(list(docs))
    if config.python:
        try:
            import kexaone.rl.sandbox  # noqa: F401
        except ModuleNotFoundError:
            raise ValueError("the python tool needs kexaone.rl.sandbox, which is not installed; run without it "
                             "(AgentConfig(python=False), --no-python)") from None
    header = {"question": question, "config": asdict(config),
              "documents": len(index) if index is not None else 0}
    traj = Trajectory(trajectory_path, header)
    run = _Run(question, backend, index, registry, config, traj, system_prompt or "")
    if system_prompt is None:
        hints = [_TOOL_HINTS[n] for n in run.registry.names() if n in _TOOL_HINTS]
        run.system = SEARCH_SYSTEM.format(tools=": " + "; ".join(hints) if hints else "")
    traj.data["system"] = run.system
    if not len(run.registry):
        raise ValueError("the agent has no tools: give documents to search, enable python, or register tools")
    traj.data["tools"] = run.registry.specs()
    traj.save()
    return run.run()
