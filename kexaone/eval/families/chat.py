"""Held-out chat tasks of the SFT stage: rows `{"messages", "reference", "category"?, "enable_thinking"?,
"tools"?}` (what `kexaone.data.synthetic.chat_set.write_chat_set` writes as heldout.jsonl). The model is asked the
conversation up to its first assistant turn, in the row's mode, and the reply is scored against `reference`:

- `{"answer": s}`: 1 when `s` occurs in the final answer (after the think block);
- `{"target": s}`: sentence chrF (sacrebleu, 0-1) of the answer against `s` (translation);
- `{"tests": [{"call", "expected"}], "entry"}`: the fraction of `repr(call) == expected` checks that the reply's
  code passes, run in the sandbox (kexaone.rl.sandbox), never in-process;
- `{"tool_call": {"name", "arguments"}}`: 1 when the first tool call has that name and those arguments;
- `{"refuse": bool}`: 1 when the reply refuses (kexaone.eval.safety's refusal detector) exactly when it should.

Every record also says whether the reply is *well-formed*: it ended with the end-of-turn token (not the token
limit), its turn parsed (a closed think block in reasoning mode, tool calls that are JSON), and it called a tool
when one was expected. The summary reports the score per category and mode and the well-formed rate.
"""

from __future__ import annotations

import json
import re

from kexaone.eval.families.base import Family, item_id, mean_stderr, per_item_scores

REFERENCE_KINDS = ("answer", "target", "tests", "tool_call", "refuse")
_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)


def extract_code(text: str) -> str:
    """The first fenced code block of a reply, else the whole reply."""
    m = _CODE_BLOCK.search(text)
    return m.group(1) if m else text


def score_reply(reference: dict, reply) -> tuple[float, dict]:
    """(score in [0, 1], details) of a ChatReply against one reference (see the module docstring)."""
    answer = reply.content or ""
    if "answer" in reference:
        return float(str(reference["answer"]) in answer), {}
    if "target" in reference:
        from sacrebleu.metrics import CHRF

        return CHRF().sentence_score(answer.strip(), [reference["target"]]).score / 100.0, {}
    if "tests" in reference:
        from kexaone.rl.sandbox import run_tests

        checks = "\n".join(f"assert repr({t['call']}) == {t['expected']!r}" for t in reference["tests"])
        code = extract_code(answer)
        # One sandboxed run per check, so partial credit is possible and one failing check does not hide others.
        passed = [run_tests(code, f"{c}\n", timeout_s=5.0) for c in checks.splitlines()]
        return sum(passed) / len(passed), {"code": code}
    if "tool_call" in reference:
        want = reference["tool_call"]
        got = reply.tool_calls[0] if reply.tool_calls else None
        name_ok = got is not None and got["name"] == want["name"]
        return float(name_ok and got["arguments"] == want["arguments"]), {"name_ok": name_ok}
    if "refuse" in reference:
        from kexaone.eval.safety.suite import find_refusal

        refused = find_refusal(answer) is not None
        return float(refused == bool(reference["refuse"])), {"refused": refused}
    raise ValueError(f"a chat reference needs one of {REFERENCE_KINDS}; got {sorted(reference)}")


def well_formed(reply, expects_tool: bool) -> bool:
    if reply.finish_reason not in ("stop", "tool_calls") or reply.errors:
        return False
    if expects_tool and not reply.tool_calls:
        return False
    # An answer or a call must follow the (closed) think block: a reply that only reasons has not answered.
    return bool(reply.content.strip() or reply.tool_calls)


class Chat(Family):
    name = "chat"
    fields = '{"messages", "reference": {answer|target|tests|tool_call|refuse}, "category"?, ' \
             '"enable_thinking"?, "tools"?}'
    default_max_tokens = 160

    def load(self, rows, source):
        items = []
        for i, row in enumerate(rows):
            where = f"{source} row {i + 1}"
            msgs, ref = row.get("messages"), row.get("reference")
            if not isinstance(msgs, list) or not isinstance(ref, dict):
                raise ValueError(f"{where}: chat rows need \"messages\" (a list) and \"reference\" (an object); "
                                 f"got {sorted(row)}")
            if not any(k in ref for k in REFERENCE_KINDS):
                raise ValueError(f"{where}: reference needs one of {REFERENCE_KINDS}; got {sorted(ref)}")
            first = next((j for j, m in enumerate(msgs) if m.get("role") == "assistant"), len(msgs))
            if first == 0:
                raise ValueError(f"{where}: the conversation has no turn before the assistant's")
            thinking = row.get("enable_thinking")
            items.append({"id": item_id(row, i) + ("" if thinking is None else f"|think={bool(thinking)}"),
                          "messages": msgs[:first], "reference": ref, "category": row.get("category", "chat"),
                          "thinking": thinking, "tools": row.get("tools")})
        return items

    def run(self, items, ctx):
        kwargs = ctx.gen_kwargs(self.default_max_tokens)
        out: list[dict | None] = [None] * len(items)
        # One batched call per (mode, tool declaration): the backend takes one of each per call.
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault((it["thinking"], json.dumps(it["tools"], sort_keys=True)), []).append(i)
        for (thinking, _), idx in groups.items():
            tools = items[idx[0]]["tools"]
            kw = dict(kwargs, enable_thinking=kwargs["enable_thinking"] if thinking is None else thinking)
            replies = ctx.backend.chat_batch([items[i]["messages"] for i in idx], tools=tools, **kw)
            for i, rep in zip(idx, replies):
                it = items[i]
                score, details = score_reply(it["reference"], rep)
                think = bool(kw["enable_thinking"]) if kw["enable_thinking"] is not None else True
                out[i] = {"prompt": it["messages"][-1].get("content", ""), "response": rep.content,
                          "reasoning": rep.reasoning, "tool_calls": rep.tool_calls, "score": score,
                          "category": it["category"], "thinking": think,
                          "well_formed": float(well_formed(rep, "tool_call" in it["reference"])),
                          **details}
        return out

    def summarize(self, records, ctx):
        scores = per_item_scores(records)
        m, se = mean_stderr(scores)
        out = {"score": m, "metric": "mean reference score", "n": len(scores), "stderr": se,
               "well_formed": mean_stderr(per_item_scores(records, "well_formed"))[0]}
        for key in ("category", "thinking"):
            groups: dict[str, list[dict]] = {}
            for r in records:
                groups.setdefault(str(r.get(key)), []).append(r)
            out[f"by_{key}"] = {g: {"score": mean_stderr(per_item_scores(rs))[0],
                                    "well_formed": mean_stderr(per_item_scores(rs, "well_formed"))[0],
                                    "n": len(per_item_scores(rs))} for g, rs in sorted(groups.items())}
        return out
