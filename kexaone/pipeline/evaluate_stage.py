"""The speedrun's `evaluate` stage: every stage's model measured side by side through the evaluation harness.

Models (kexaone.pipeline.chain): the untrained initial model (same config and seed as pre-training), the pre-trained
base, and each post-training stage's model that exists in the run (extended, SFT, RL, preference). Each one gets
- held-out bits per byte per (domain, language) group, on the same documents and window (the budget's seq_len);
- the held-out synthetic tasks: all `task_items` for the untrained and base models, `stage_eval.task_items` (the
  first ones of the same items) for the later ones;
- KGC-Safety (kexaone.eval.families.safety) on `stage_eval.safety_items` items, judged by the refusal rule: the safe
  rate on harmful items and the over-refusal rate on benign look-alikes;
- the registry-office tool tasks (kexaone.agents.envs): pass rate of one greedy episode per task on
  `stage_eval.tool_tasks` filtered tasks (the same tasks for every model).
The harness keeps its own files per model under `harness/<stage>` (results.json, results.md, per-sample JSONL;
tools.json for the tool episodes), so an interrupted stage reuses the samples already scored. What the stages
measured themselves (NIAH, sft-chat, RL and preference held-out numbers) is not measured again here: the report
reads it from their outputs.

Output: eval.json with the base model's detailed rows as before ("heldout", "heldout_untrained", "tasks") and
"models": [{"stage", "label", "model_dir", "heldout_bpb", "heldout", "tasks", "safety", "tools"}], oldest first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kexaone.pipeline.budgets import Budget
from kexaone.pipeline.chain import LABELS, models_run
from kexaone.pipeline.stages import StageContext
from kexaone.utils.io import atomic_write_text

TOOL_TASK_SEED = 7_000_000
"""Offset of the tool tasks' seed from the run seed (the tasks are generated fresh; none is in the SFT set)."""


def harness(model, tok, tasks, config, out_dir: Path, label: str) -> tuple[dict, dict[str, list[dict]]]:
    """Run `tasks` through the evaluation harness (kexaone eval's code path) on a local model: the results dict and
    each task's per-sample records."""
    from kexaone.engine.engine import Engine
    from kexaone.eval.backends import LocalBackend
    from kexaone.eval.harness import run_eval
    from kexaone.eval.results import SampleStore

    res = run_eval(LocalBackend(Engine(model, tok), batch_size=64), tasks, config, out_dir, model=label,
                   progress=False)
    samples = {t.name: sorted(SampleStore(out_dir, t.name).records.values(), key=lambda r: int(r["id"])
                              if str(r["id"]).isdigit() else 0) for t in tasks}
    json.dumps(res)  # results must stay JSON (they are copied into eval.json)
    return res, samples


def heldout_rows(records: list[dict]) -> list[dict]:
    """The harness's held-out records as kexaone.eval.heldout.HeldoutResult dicts (what the report reads)."""
    rows = []
    for r in records:
        domain, _, lang = str(r["id"]).partition("/")
        rows.append({"domain": domain, "language": lang, "documents": r.get("documents"), "tokens": r["tokens"],
                     "bytes": r["bytes"], "loss": r["loss"], "bits_per_byte": r["score"],
                     "bytes_per_token": r["bytes"] / max(1, r["tokens"])})
    return rows


def byte_weighted_bpb(rows: list[dict]) -> float | None:
    n = sum(r["bytes"] for r in rows)
    return sum(r["bits_per_byte"] * r["bytes"] for r in rows) / n if n else None


def tool_tasks(b: Budget, seed: int) -> list:
    """`stage_eval.tool_tasks` registry-office tasks that pass the gold-replay and oracle checks."""
    from kexaone.agents.envs.evaluate import episode_config, filter_tasks
    from kexaone.agents.envs.tasks import generate_candidates

    n = b.stage_eval.tool_tasks
    if n <= 0:
        return []
    # Twice as many candidates as needed: filtering drops duplicates and the odd task whose gold replay fails.
    kept, _ = filter_tasks(generate_candidates(2 * n, seed=TOOL_TASK_SEED + seed),
                           config=episode_config(max_steps=b.stage_eval.tool_max_steps))
    return kept[:n]


class _Evaluator:
    """Measures one model after another on the same held-out documents, tasks, safety items and tool tasks."""

    def __init__(self, ctx: StageContext, b: Budget, tok):
        from kexaone.eval.families.synthetic import heldout_task
        from kexaone.pipeline import corpus

        self.ctx, self.b, self.seed = ctx, b, ctx.params["seed"]
        groups = corpus.heldout_groups(tok, b, ctx.params.get("data", []), seed=self.seed)
        self.heldout = heldout_task(groups)
        self.specs = corpus.task_specs(b, tok, seed=self.seed)
        self.tools = tool_tasks(b, self.seed)
        ctx.log(f"[evaluate] per model: held-out bits per byte on {len(groups)} groups, {len(self.specs)} tasks, "
                f"{b.stage_eval.safety_items} safety items, {len(self.tools)} tool tasks")

    def measure(self, stage: str, model, tok, task_items: int | None) -> tuple[dict[str, Any], dict]:
        """(the model's record for eval.json, the harness's per-sample records of the held-out and synthetic
        tasks)."""
        from kexaone.eval.families.safety import safety_task
        from kexaone.eval.families.synthetic import task_from_spec
        from kexaone.eval.harness import EvalConfig

        b, se = self.b, self.b.stage_eval
        out = self.ctx.stage_dir / "harness" / stage
        t0 = time.perf_counter()
        res, samples = harness(model, tok, [self.heldout], EvalConfig(heldout_seq_len=b.seq_len, seed=self.seed),
                               out, stage)
        tasks = [task_from_spec(s) for s in self.specs]
        res_t, samples_t = harness(model, tok, tasks, EvalConfig(limit=task_items, seed=self.seed), out, stage)
        samples.update(samples_t)
        rec: dict[str, Any] = {"stage": stage, "label": LABELS.get(stage, stage)}
        rows = heldout_rows(samples["heldout"])
        rec.update(heldout_bpb=byte_weighted_bpb(rows), heldout=rows,
                   tasks={s.name: {"accuracy": res_t["tasks"][s.name]["score"],
                                   "stderr": res_t["tasks"][s.name]["stderr"], "items": res_t["tasks"][s.name]["n"]}
                          for s in self.specs})
        if se.safety_items > 0:
            cfg = EvalConfig(limit=se.safety_items, max_new_tokens=se.safety_max_tokens, seed=self.seed)
            s = harness(model, tok, [safety_task(cfg)], cfg, out, stage)[0]["tasks"]["kgc-safety"]
            rec["safety"] = {"safe_rate": s.get("safe_rate"), "over_refusal_rate": s.get("over_refusal_rate"),
                             "combined": s["score"], "items": s["n"], "judge": s.get("judge")}
        if self.tools:
            rec["tools"] = self._tools(model, tok, out)
        rec["seconds"] = time.perf_counter() - t0
        rec["model_dir"] = self.ctx.outputs[stage]["model_dir"] if stage in self.ctx.outputs else None
        self.ctx.log(f"[evaluate] {rec['label']} ({rec['seconds']:.1f} s): held-out {rec['heldout_bpb']:.3f} "
                     "bits/byte, " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in rec["tasks"].items())
                     + (f", safe rate {rec['safety']['safe_rate']}" if "safety" in rec else "")
                     + (f", tool pass rate {rec['tools']['pass_rate']:.3f}" if "tools" in rec else ""))
        return rec, samples

    def _tools(self, model, tok, out: Path) -> dict[str, Any]:
        from kexaone.agents.envs.evaluate import episode_config, evaluate_tools
        from kexaone.engine.engine import Engine
        from kexaone.eval.backends import LocalBackend

        se = self.b.stage_eval
        cfg = episode_config(max_steps=se.tool_max_steps, temperature=0.0, max_reply_tokens=se.tool_reply_tokens,
                             seed=self.seed)
        res = evaluate_tools(LocalBackend(Engine(model, tok), seed=self.seed), self.tools, trials=1, config=cfg)
        atomic_write_text(out / "tools.json", json.dumps(res, indent=1) + "\n")
        return {"pass_rate": res["pass^1"], "avg_reward": res["avg_reward"], "tasks": res["n_tasks"]}


def _load(ctx: StageContext, stage: str):
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.tokenizer import KExaoneTokenizer

    model_dir = ctx.path(ctx.outputs[stage]["model_dir"])
    return KExaoneForCausalLM.from_pretrained(model_dir).eval(), KExaoneTokenizer.from_dir(model_dir)


def _task_rows(specs, base: dict, untrained: dict, samples: dict) -> list[dict]:
    """The base model's per-task rows (with the untrained model as baseline and a few examples), as before."""
    rows = []
    for spec in specs:
        r, u = base["tasks"][spec.name], untrained["tasks"][spec.name]
        examples = [{"prompt": x["prompt"][-300:], "output": str(x.get("response") or "")[:300],
                     "answer": x.get("gold"), "correct": bool(x["score"])} for x in samples[spec.name][:3]]
        rows.append({"task": spec.name, "items": r["items"], "accuracy": r["accuracy"], "stderr": r["stderr"],
                     "chance": spec.chance, "untrained_accuracy": u["accuracy"],
                     "baseline": max(spec.chance, u["accuracy"]),
                     "scoring": "mean log-likelihood of each choice" if spec.items and spec.items[0].choices
                     else "greedy decoding, exact answer", "examples": examples})
    return rows


def stage_evaluate(ctx: StageContext) -> dict[str, Any]:
    import gc

    import torch

    from kexaone.model.transformer import KExaoneForCausalLM

    b = Budget.from_dict(ctx.params["budget"])
    model, tok = _load(ctx, "pretrain")
    ev = _Evaluator(ctx, b, tok)
    torch.manual_seed(ctx.params["seed"])
    untrained = KExaoneForCausalLM(model.config).eval()  # the initial model: same config, same seed, no training
    rec_u = ev.measure("untrained", untrained, tok, None)[0]
    rec_b, samples_b = ev.measure("pretrain", model, tok, None)
    records = [rec_u, rec_b]
    del untrained, model
    for stage in models_run(ctx.outputs)[1:]:  # the post-training models, oldest first
        model, stage_tok = _load(ctx, stage)
        records.append(ev.measure(stage, model, stage_tok, b.stage_eval.task_items)[0])
        del model
        gc.collect()
    tasks = _task_rows(ev.specs, rec_b, rec_u, samples_b)
    out = {"heldout": rec_b["heldout"], "heldout_untrained": rec_u["heldout"], "tasks": tasks, "models": records,
           "harness": {r["stage"]: ctx.rel(ctx.stage_dir / "harness" / r["stage"] / "results.md") for r in records}}
    atomic_write_text(ctx.stage_dir / "eval.json", json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    return {"eval": ctx.rel(ctx.stage_dir / "eval.json"),
            "accuracy": {t["task"]: t["accuracy"] for t in tasks},
            "baseline": {t["task"]: t["baseline"] for t in tasks},
            "models": [r["stage"] for r in records]}
