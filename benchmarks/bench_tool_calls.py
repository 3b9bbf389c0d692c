"""Well-formed tool-call rate with `tool_choice` "auto" vs "required" on the held-out tool prompts of the SFT chat set.

For each held-out example of category "tools" (`kexaone.data.synthetic.chat_set.build_split(World(0, 'default'), n,
heldout=True)`), asks `Engine.chat(prompt, tools=declared, tool_choice=...)` and counts:
- well_formed: at least one call, every call parsed, of a declared function, arguments valid for its schema;
- right_function: the first call names the reference function;
- exact: the first call equals the reference call (name and arguments).

    nice -n 10 python benchmarks/bench_tool_calls.py [--model DIR] [--n 160] [--max-tokens 256] [--thinking]
    nice -n 10 python benchmarks/bench_tool_calls.py --base-url http://127.0.0.1:8000/v1 [...]

Without --model it uses the newest speedrun SFT model (runs/*/sft/run/model, else runs/*/pretrain/model); with none
there it says so and exits 0. With --base-url it asks a running `kexaone serve` (or any OpenAI-compatible server)
through the official openai client instead: a call counts as well-formed when its arguments parse and the reply
carries no `tool_call_errors`; it then also streams the first prompt that got a call (the streamed deltas must
reassemble to the same call) and sends the tool-role follow-up (the tool's result) for it. Prints one markdown row
per choice. It measures what the model does, not speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def find_model() -> Path | None:
    """The newest speedrun SFT model (runs/*/sft/run/model), else the newest pre-trained one."""
    for pattern in ("runs/*/sft/run/model", "runs/*/pretrain/model"):
        found = sorted(ROOT.glob(pattern), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    return None


def measure(engine, examples, choice: str, max_tokens: int, thinking: bool, seed: int = 0) -> dict:
    counts = {"well_formed": 0, "right_function": 0, "exact": 0}
    tokens, t0 = 0, time.perf_counter()
    for i, ex in enumerate(examples):
        r = engine.chat(ex.prompt_messages(), tools=ex.tools, tool_choice=choice, enable_thinking=thinking,
                        max_new_tokens=max_tokens, temperature=0.0, seed=seed + i)
        tokens += len(r.tokens)
        ref = ex.reference["tool_call"]
        ok = bool(r.tool_calls) and not [e for e in r.errors if "tool call" in e or "message" in e] \
            and not r.validation_errors
        counts["well_formed"] += ok
        if r.tool_calls:
            counts["right_function"] += r.tool_calls[0]["name"] == ref["name"]
            counts["exact"] += r.tool_calls[0] == {"name": ref["name"], "arguments": ref["arguments"]}
    n = max(1, len(examples))
    return {**{k: v / n for k, v in counts.items()}, "n": len(examples), "tokens_per_reply": tokens / n,
            "seconds": time.perf_counter() - t0}


class _OpenAIChat:
    """`Engine.chat`'s shape over an OpenAI-compatible endpoint (the official client)."""

    def __init__(self, base_url: str):
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
        self.model = self.client.models.list().data[0].id

    def chat(self, messages, tools, tool_choice, enable_thinking, max_new_tokens, temperature, seed):
        import json
        from types import SimpleNamespace

        r = self.client.chat.completions.create(
            model=self.model, messages=messages, tools=tools, tool_choice=tool_choice, max_tokens=max_new_tokens,
            temperature=temperature, seed=seed, extra_body={"chat_template_kwargs": {"enable_thinking": enable_thinking}})
        msg = r.choices[0].message
        calls, errors = [], list((msg.model_extra or {}).get("tool_call_errors") or [])
        for c in msg.tool_calls or []:
            try:
                calls.append({"name": c.function.name, "arguments": json.loads(c.function.arguments)})
            except json.JSONDecodeError as e:
                errors.append(f"tool call: {e}")
        return SimpleNamespace(tool_calls=calls, errors=[str(e) for e in errors], validation_errors=[],
                               tokens=[0] * r.usage.completion_tokens)


def stream_and_follow_up(chat: "_OpenAIChat", examples, thinking: bool, max_tokens: int) -> str:
    """For the first example the endpoint answers with a tool call: the same request streamed (deltas merged by
    index must give the same name and arguments) and the conversation continued with a tool-role message."""
    import json

    client, model = chat.client, chat.model
    kw = {"model": model, "max_tokens": max_tokens, "temperature": 0.0,
          "extra_body": {"chat_template_kwargs": {"enable_thinking": thinking}}}
    for ex in examples:
        messages = ex.prompt_messages()
        r = client.chat.completions.create(messages=messages, tools=ex.tools, tool_choice="required", **kw)
        calls = r.choices[0].message.tool_calls or []
        if not calls:
            continue
        merged: dict[int, dict] = {}
        for chunk in client.chat.completions.create(messages=messages, tools=ex.tools, tool_choice="required",
                                                    stream=True, **kw):
            for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                m = merged.setdefault(d.index, {"name": "", "arguments": ""})
                m["name"] += (d.function.name or "") if d.function else ""
                m["arguments"] += (d.function.arguments or "") if d.function else ""
        same = [(m["name"], m["arguments"]) for _, m in sorted(merged.items())] == [
            (c.function.name, c.function.arguments) for c in calls]
        # the tool's result as the set's conversation has it (what the tool returned for the reference call)
        result = next((m["content"] for m in ex.messages if m["role"] == "tool"), json.dumps({"ok": True}))
        follow = messages + [{"role": "assistant", "content": r.choices[0].message.content or "",
                              "tool_calls": [c.model_dump() for c in calls]},
                             {"role": "tool", "tool_call_id": calls[0].id, "content": result}]
        r2 = client.chat.completions.create(messages=follow, tools=ex.tools, **kw)
        reply = r2.choices[0].message
        return (f"streamed call equals the non-streamed one: {same}; tool-role follow-up answered with finish_reason "
                f"{r2.choices[0].finish_reason!r}: {(reply.content or '')[:120]!r}")
    return "no prompt got a tool call: streaming and the follow-up were not checked"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--n", type=int, default=160, help="held-out examples drawn (all categories; tools are kept)")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--thinking", action="store_true", help="reasoning mode (default: non-reasoning)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--base-url", default=None, help="ask this OpenAI-compatible endpoint instead of a local model")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from kexaone.data.synthetic.chat_set import build_split
    from kexaone.data.synthetic.world import World
    from kexaone.engine import Engine

    if args.base_url:
        engine, model = _OpenAIChat(args.base_url), args.base_url
    else:
        model = args.model or find_model()
        if model is None:
            print("no speedrun model under runs/speedrun*/{sft,pretrain}/model: nothing to measure")
            return 0
        engine = Engine.from_pretrained(model, device=args.device)
    examples = [e for e in build_split(World(0, "default"), args.n, heldout=True) if e.category == "tools"]
    print(f"model {model}, {len(examples)} held-out tool prompts, thinking={args.thinking}, "
          f"max_tokens={args.max_tokens}, greedy")
    print("| tool_choice | well-formed | right function | exact call | tokens/reply | seconds |")
    print("|---|---|---|---|---|---|")
    for choice in ("auto", "required"):
        m = measure(engine, examples, choice, args.max_tokens, args.thinking)
        print(f"| {choice} | {m['well_formed']:.3f} | {m['right_function']:.3f} | {m['exact']:.3f} | "
              f"{m['tokens_per_reply']:.1f} | {m['seconds']:.1f} |", flush=True)
    if args.base_url:
        print(stream_and_follow_up(engine, examples, args.thinking, args.max_tokens))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
