"""Math word problems: `{"problem" or "question", "answer"}`; a GSM8K answer (`... #### 18`) is reduced to its final
number. The model is asked to reason and put the final answer in `\\boxed{}`; the final answer is extracted (last
`\\boxed{}`, else "the answer is ...") and compared by mathematical equivalence (so `0.75` = `\\frac{3}{4}` and
`\\sqrt{8}` = `2\\sqrt{2}`). Extraction and equivalence are the RL verifiers' (kexaone.rl.verifiers.math), so a
reward and an evaluation never disagree on what counts as correct.
"""

from __future__ import annotations

from kexaone.eval.families.base import Family, load_items, reply_text

INSTRUCTION = "Solve the problem step by step, then give the final answer as \\boxed{ANSWER}."


def math_prompt(problem: str) -> str:
    return f"{problem.strip()}\n\n{INSTRUCTION}"


class Math(Family):
    name = "math"
    fields = '{"problem" | "question", "answer"} (GSM8K "#### N" answers accepted)'
    default_max_tokens = 1024

    def load(self, rows, source):
        from kexaone.rl.verifiers.math import gsm8k_gold

        def make(row, where):
            problem = row.get("problem", row.get("question"))
            if problem is None or row.get("answer") is None:
                raise ValueError(f"{where}: math rows need \"problem\" (or \"question\") and \"answer\"; "
                                 f"got {sorted(row)}")
            ans = str(row["answer"])
            return {"problem": str(problem), "gold": gsm8k_gold(ans) if "####" in ans else ans.strip()}

        return load_items(rows, source, self.name, (), make)  # either field name: checked in make

    def run(self, items, ctx):
        from kexaone.rl.verifiers.math import answers_equal, extract_final_answer

        prompts = [math_prompt(it["problem"]) for it in items]
        replies = ctx.backend.chat_batch([[{"role": "user", "content": p}] for p in prompts],
                                         **ctx.gen_kwargs(self.default_max_tokens))
        out = []
        for it, p, rep in zip(items, prompts, replies):
            text = reply_text(rep)
            pred = extract_final_answer(text)
            ok = pred is not None and answers_equal(pred, it["gold"])
            out.append({"prompt": p, "response": text, "extracted": pred, "gold": it["gold"], "score": float(ok)})
        return out
