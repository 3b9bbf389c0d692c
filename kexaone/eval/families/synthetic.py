"""The speedrun's held-out synthetic tasks (kexaone.data.synthetic.tasks: arithmetic, crosslingual_recall,
retrieval, code_completion) and held-out bits per byte (kexaone.eval.heldout), as harness families, so the
speedrun's evaluate stage and `kexaone eval` score them the same way.

Scoring is kexaone.eval.tasks' convention: items with `choices` pick the choice with the highest mean per-token
log-likelihood after the prompt (backend.loglik_counts); free-form items are decoded greedily from the raw prompt
(backend.complete) and must start with the answer after the task's `extract` (kexaone.eval.tasks.answer_matches).
Bits per byte needs the local model (it scores whole documents with kexaone.eval.heldout.evaluate_heldout).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from kexaone.eval.families.base import Family, load_items, require, summarize_scores


def _identity(text: str) -> str:
    return text


class Synthetic(Family):
    """One synthetic task; `extract` and `max_new_tokens` come from the task definition."""

    name = "synthetic"
    fields = '{"prompt", "answer", "choices"?: [...]}'
    metric = "accuracy"

    def __init__(self, extract: Callable[[str], str] | None = None, max_new_tokens: int | None = None,
                 chance: float | None = None, choice_norm: str = "mean"):
        if choice_norm not in ("mean", "sum"):
            raise ValueError(f"choice_norm must be 'mean' or 'sum', got {choice_norm!r}")
        self.extract = extract or _identity
        self.max_new_tokens = max_new_tokens
        self.chance = chance
        self.choice_norm = choice_norm

    def load(self, rows, source):
        return load_items(rows, source, self.name, ("prompt", "answer"), lambda row, where: {
            "prompt": str(row["prompt"]), "answer": str(row["answer"]),
            "choices": [str(c) for c in row["choices"]] if row.get("choices") else None})

    def budget(self, config) -> int | None:
        """The task's own answer budget, capped by --max-new-tokens when that is given."""
        caps = [x for x in (self.max_new_tokens, config.max_new_tokens) if x]
        return min(caps) if caps else None

    def config_view(self, config):
        return {"max_new_tokens": self.budget(config), "choice_norm": self.choice_norm,
                "extract": getattr(self.extract, "__name__", "custom")}

    def run(self, items, ctx):
        from kexaone.eval.tasks import answer_matches

        out: list[dict | None] = [None] * len(items)
        choice = [i for i, it in enumerate(items) if it.get("choices")]
        free = [i for i, it in enumerate(items) if not it.get("choices")]
        if choice:
            pairs, spans = [], []
            for i in choice:
                spans.append((len(pairs), len(items[i]["choices"])))
                pairs += [(items[i]["prompt"], c) for c in items[i]["choices"]]
            scored = ctx.backend.loglik_counts(pairs)
            for i, (at, k) in zip(choice, spans):
                vals = [s / n if self.choice_norm == "mean" else s for s, n in scored[at:at + k]]
                pick = max(range(k), key=vals.__getitem__)
                it = items[i]
                got = it["choices"][pick]
                out[i] = {"prompt": it["prompt"], "response": got, "extracted": got.strip(), "gold": it["answer"],
                          "loglik": vals, "score": float(got.strip() == it["answer"].strip())}
        if free:
            budget = self.budget(ctx.config) or max(ctx.count_tokens(" " + items[i]["answer"]) for i in free) + 3
            texts = ctx.backend.complete([items[i]["prompt"] for i in free], max_tokens=budget, temperature=0.0)
            for i, text in zip(free, texts):
                it = items[i]
                got = self.extract(text)
                out[i] = {"prompt": it["prompt"], "response": text, "extracted": got, "gold": it["answer"],
                          "score": float(answer_matches(got, it["answer"]))}
        return out  # type: ignore[return-value]

    def summarize(self, records, ctx):
        s = summarize_scores(records, "accuracy")
        n = s["n"]
        if n:
            s["stderr"] = math.sqrt(max(s["score"] * (1 - s["score"]), 1e-12) / n)  # binomial, as kexaone.eval.tasks
        if self.chance is not None:
            s["chance"] = self.chance
        return s


def synthetic_tasks(names, size: str = "default", seed: int = 0, n_items: int = 100, tokenizer=None,
                    max_prompt_tokens: int | None = None, corpus_seed: int = 0) -> list:
    """Harness tasks for the named synthetic tasks (kexaone.data.synthetic.tasks.TASK_NAMES)."""
    from kexaone.data.synthetic.tasks import build_tasks

    built = build_tasks(size, seed=seed, n_items=n_items, tokenizer=tokenizer, max_prompt_tokens=max_prompt_tokens,
                        corpus_seed=corpus_seed)
    return [task_from_spec(built[n]) for n in names]


def task_from_spec(spec, name: str | None = None):
    """A harness Task from a kexaone.data.synthetic.tasks.Task or a kexaone.pipeline.corpus.TaskSpec (anything
    with name, items of TaskItem, chance / chance_baseline, max_new_tokens and extract)."""
    from kexaone.eval.harness import Task

    chance = getattr(spec, "chance", None)
    if chance is None:
        chance = getattr(spec, "chance_baseline", None)
    extract = getattr(spec, "extract", None)
    items = [{"id": str(i), "prompt": it.prompt, "answer": str(it.answer),
              "choices": list(it.choices) if getattr(it, "choices", None) else None, "lang": getattr(it, "lang", "")}
             for i, it in enumerate(spec.items)]
    fam = Synthetic(extract=extract, max_new_tokens=getattr(spec, "max_new_tokens", None), chance=chance)
    return Task(name=name or spec.name, family=fam, items=items, source="kexaone.data.synthetic.tasks")


class Heldout(Family):
    """Bits per byte of held-out documents, per (domain, language) group; lower is better."""

    name = "heldout"
    fields = '{"text", "domain"?, "lang"?}'
    metric = "bits per byte (lower is better)"

    def load(self, rows, source):
        groups: dict[tuple[str, str], list[str]] = {}
        for i, row in enumerate(rows):
            require(row, ("text",), f"{source} row {i + 1}", self.name)
            if str(row["text"]).strip():
                groups.setdefault((str(row.get("domain", "data")), str(row.get("lang", "-"))), []).append(
                    str(row["text"]))
        return groups_to_items(groups)

    def config_view(self, config):
        return {"seq_len": config.heldout_seq_len}

    def chunk_size(self, config):
        return 1

    def run(self, items, ctx):
        from kexaone.eval.heldout import evaluate_heldout

        engine = getattr(ctx.backend, "engine", None)
        if engine is None:
            raise ValueError(f"task {ctx.task.name!r}: held-out bits per byte needs the local model (--model DIR)")
        seq_len = ctx.config.heldout_seq_len or int(engine.config.max_position_embeddings) - 1
        out = []
        for it in items:
            [res] = evaluate_heldout(engine.model, ctx.backend.tokenizer, {(it["domain"], it["lang"]): it["docs"]},
                                     seq_len=seq_len)
            nats = res.loss * res.tokens
            out.append({"prompt": f"{it['domain']}/{it['lang']}: {len(it['docs'])} documents", "response": None,
                        "extracted": None, "nats": nats, "tokens": res.tokens, "bytes": res.bytes,
                        "documents": res.documents,
                        "loss": res.loss, "score": res.bits_per_byte})
        return out

    def summarize(self, records, ctx):
        first = {}
        for r in records:
            first.setdefault(r["id"], r)
        nats = sum(r["nats"] for r in first.values())
        nbytes = sum(r["bytes"] for r in first.values())
        return {"score": nats / math.log(2) / max(1, nbytes), "metric": self.metric, "n": len(first),
                "stderr": None, "bytes": nbytes, "tokens": sum(r["tokens"] for r in first.values()),
                "breakdown": {k: r["score"] for k, r in first.items()}}


def heldout_task(groups: dict[tuple[str, str], list[str]], name: str = "heldout"):
    """A harness Task scoring bits per byte of documents grouped by (domain, language), e.g. the speedrun's
    kexaone.pipeline.corpus.heldout_groups (set EvalConfig.heldout_seq_len to the training seq_len)."""
    from kexaone.eval.harness import Task

    return Task(name=name, family=Heldout(), items=groups_to_items(groups), source="documents")


def groups_to_items(groups: dict[tuple[str, str], list[str]]) -> list[dict]:
    return [{"id": f"{d}/{lang}", "domain": d, "lang": lang, "docs": list(docs)}
            for (d, lang), docs in groups.items() if docs]
