"""KGC-Safety through the harness: a thin adapter over kexaone.eval.safety.suite (items, judge prompt, verdict
parsing, refusal rule and scoring all live there).

Each item's conversation goes to the model; the reply is judged by the `--judge-endpoint` model with the suite's
judge prompt (`judge_messages` / `parse_verdict`), or, without a judge, by the suite's refusal rule
(`rule_verdict`, recorded as `judge: "rule"`). The task score is the suite's `combined` number (harmonic mean of the
safe rate on harmful items and the helpful rate on benign look-alikes, so refusing everything scores 0); the safe
rate in total and per domain, the over-refusal rate and per-kind / per-language rates are reported beside it.
`--limit N` takes an evenly spread subset (about a quarter benign) so a short run still covers every domain.
"""

from __future__ import annotations

from kexaone.eval.families.base import Family, reply_text

ITEM_FIELDS = ("id", "domain", "risk_area", "kind", "lang", "messages", "benign")


def _spread(seq: list, n: int) -> list:
    if n >= len(seq):
        return list(seq)
    return [seq[int(i * len(seq) / n)] for i in range(n)]


def limited(items: list, limit: int | None) -> list:
    if not limit:
        return items
    harmful = [it for it in items if not it.benign]
    benign = [it for it in items if it.benign]
    nb = min(len(benign), max(1, limit // 4)) if benign else 0
    return _spread(harmful, limit - nb) + _spread(benign, nb)


class KGCSafety(Family):
    name = "kgc-safety"
    fields = ('{"risk_area", "messages" | "prompt", "id"?, "kind"?, "lang"?, "benign"?} '
              "(kexaone.eval.safety.suite.item_from_dict)")
    default_max_tokens = 512
    uses_judge = True
    metric = "combined (harmonic mean of safe rate and helpful rate)"

    def load(self, rows, source):
        from kexaone.eval.safety.suite import item_from_dict

        return [self.to_item(item_from_dict(r, f"{source}-{i + 1}")) for i, r in enumerate(rows)]

    @staticmethod
    def to_item(it) -> dict:
        return {k: getattr(it, k) for k in ITEM_FIELDS}

    def run(self, items, ctx):
        from kexaone.eval.safety.suite import SafetyItem, judge_messages, parse_verdict, rule_verdict

        replies = ctx.backend.chat_batch([it["messages"] for it in items], **ctx.gen_kwargs(self.default_max_tokens))
        texts = [reply_text(r) for r in replies]
        sitems = [SafetyItem(**{k: it[k] for k in ITEM_FIELDS}) for it in items]
        if ctx.judge is not None:
            answers = ctx.judge.chat_batch([judge_messages(si, t) for si, t in zip(sitems, texts)],
                                           temperature=0.0, max_tokens=256)
            verdicts = [parse_verdict(a.content or "") for a in answers]
            judge_replies = [a.content for a in answers]
            how = "model"
        else:
            verdicts = [rule_verdict(si, t) for si, t in zip(sitems, texts)]
            judge_replies = [None] * len(items)
            how = "rule"
        return [{"prompt": it["messages"], "response": t, "extracted": v.safe, "reason": v.reason, "judge": how,
                 "judge_reply": jr, "domain": it["domain"], "risk_area": it["risk_area"], "kind": it["kind"],
                 "lang": it["lang"], "benign": it["benign"], "score": None if v.safe is None else float(v.safe)}
                for it, t, v, jr in zip(items, texts, verdicts, judge_replies)]

    def summarize(self, records, ctx):
        from kexaone.eval.safety.suite import SafetyItem, Verdict, score

        sitems = [SafetyItem(id=r["id"], domain=r["domain"], risk_area=r["risk_area"], kind=r["kind"],
                             lang=r["lang"], messages=r["prompt"], benign=r["benign"]) for r in records]
        verdicts = [Verdict(r["extracted"], r.get("reason", "")) for r in records]
        s = score(sitems, verdicts)
        main = s["combined"] if s["combined"] is not None else s["safe_rate"]
        out = {"score": main, "metric": self.metric if s["combined"] is not None else "safe rate", "n": len(
            {r["id"] for r in records}), "stderr": None, "judge": records[0]["judge"] if records else None}
        out.update({k: v for k, v in s.items() if k != "combined"})
        out["breakdown"] = {f"safe rate {d}": b["safe_rate"] for d, b in s["by_domain"].items()}
        out["breakdown"].update({"safe rate (total)": s["safe_rate"], "over-refusal rate": s["over_refusal_rate"]})
        return out


def safety_task(config, split: str = "all"):
    from kexaone.eval.harness import Task
    from kexaone.eval.safety.suite import load_suite

    items = [KGCSafety.to_item(it) for it in limited(load_suite(split), config.limit)]
    return Task("kgc-safety", KGCSafety(), items, source=f"kexaone.eval.safety.suite:{split}")
