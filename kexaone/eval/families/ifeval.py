"""Instruction following in IFEval's own format: `{"key", "prompt", "instruction_id_list", "kwargs"}`.

Each reply is checked against every instruction of its prompt by the RL verifiers' checkers
(kexaone.rl.verifiers.ifeval.check_instructions), strictly and loosely (loose also accepts the reply with its first
or last line, or markdown emphasis, removed, as IFEval defines). The task score is prompt-level strict accuracy
(all instructions of a prompt followed); prompt-level loose and instruction-level strict/loose are reported beside
it.
"""

from __future__ import annotations

from kexaone.eval.families.base import Family, load_items, reply_text
from kexaone.eval.results import mean_stderr


class IFEval(Family):
    name = "ifeval"
    fields = '{"key", "prompt", "instruction_id_list", "kwargs"}'
    default_max_tokens = 1024
    metric = "prompt-level strict accuracy"

    def load(self, rows, source):
        def make(row, where):
            ids = list(row["instruction_id_list"])
            kwargs = row.get("kwargs") or [{} for _ in ids]
            if len(kwargs) != len(ids):
                raise ValueError(f"{where}: kwargs has {len(kwargs)} entries for {len(ids)} instruction ids")
            return {"prompt": str(row["prompt"]), "instruction_id_list": ids, "kwargs": [dict(k or {}) for k in kwargs]}

        return load_items(rows, source, self.name, ("prompt", "instruction_id_list"), make)

    def run(self, items, ctx):
        from kexaone.rl.verifiers.ifeval import check_instructions

        replies = ctx.backend.chat_batch([[{"role": "user", "content": it["prompt"]}] for it in items],
                                         **ctx.gen_kwargs(self.default_max_tokens))
        out = []
        for it, rep in zip(items, replies):
            text = reply_text(rep)
            res = check_instructions(text, it["instruction_id_list"], it["kwargs"], it["prompt"])
            strict, loose = [bool(x) for x in res.strict], [bool(x) for x in res.loose]
            out.append({"prompt": it["prompt"], "response": text, "extracted": None,
                        "instruction_id_list": it["instruction_id_list"], "strict": strict, "loose": loose,
                        "score": float(all(strict)), "prompt_loose": float(all(loose))})
        return out

    def summarize(self, records, ctx):
        prompt_strict = [r["score"] for r in records]
        prompt_loose = [r["prompt_loose"] for r in records]
        inst_strict = [x for r in records for x in r["strict"]]
        inst_loose = [x for r in records for x in r["loose"]]
        m, se = mean_stderr(prompt_strict)
        return {"score": m, "metric": self.metric, "n": len({r["id"] for r in records}), "stderr": se,
                "prompt_level_strict": m, "prompt_level_loose": mean_stderr(prompt_loose)[0],
                "inst_level_strict": mean_stderr([float(x) for x in inst_strict])[0],
                "inst_level_loose": mean_stderr([float(x) for x in inst_loose])[0]}
