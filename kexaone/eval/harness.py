"""The evaluation harness: run task families over a backend, reuse finished samples, write the result files.

A `Task` is a name, a family (kexaone.eval.families) and its items (dicts with an `id`). `run_eval(backend, tasks,
config, out_dir)` evaluates each item `config.repeats` times in chunks (one batched backend call per chunk), keeps
every per-sample record in `out_dir/samples/<task>.jsonl` as it goes (so an interrupted or repeated run only does
what is missing), asks the family to summarise the records, and writes results.json and results.md.

The same code path serves the local engine and any OpenAI-compatible endpoint: families only call the backend's
`chat_batch`, `complete` and `loglik` (kexaone.eval.backends). Task names and user files are resolved to `Task`s by
kexaone.eval.families.resolve_tasks; the command line is kexaone.eval.cli.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kexaone.eval.results import SampleStore, config_hash, sample_key, write_results

MCQ_MODES = ("generate", "loglik")


@dataclass
class EvalConfig:
    """Settings shared by every task of one run."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int | None = None
    """None: each family's own default (short for multiple choice, longer for math)."""
    thinking: bool | None = None
    """Reasoning mode on/off in the chat template; None: the model's default."""
    repeats: int = 1
    """Samples per item (useful with temperature > 0); the score averages them, stderr is over items."""
    limit: int | None = None
    """At most this many items per task (the first ones, in file order)."""
    mcq_mode: str = "generate"
    mcq_template: str = "Question: {question}\nAnswer:"
    """Context of --mcq-mode loglik (each choice follows it after one space); "{question}" is replaced by the
    question. "{question}" alone gives lm-evaluation-harness's multiple_choice with doc_to_text = the question."""
    seed: int = 0
    chunk_size: int = 32
    """Items per backend call and per save of the sample store."""
    niah_lengths: tuple[int, ...] | None = None
    """Context lengths (tokens) of the needle grid; None: fractions of the model's context."""
    niah_depths: tuple[float, ...] = (0.0, 25.0, 50.0, 75.0, 100.0)
    niah_haystack: str = "noise"
    ruler_length: int | None = None
    synthetic_size: str = "default"
    heldout_seq_len: int | None = None

    def __post_init__(self) -> None:
        if self.mcq_mode not in MCQ_MODES:
            raise ValueError(f"mcq_mode must be one of {MCQ_MODES}, got {self.mcq_mode!r}")
        if "{question}" not in self.mcq_template:
            raise ValueError(f"mcq_template must contain {{question}}, got {self.mcq_template!r}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.niah_haystack not in ("noise", "world"):
            raise ValueError(f"niah_haystack must be 'noise' or 'world', got {self.niah_haystack!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Task:
    """One task of a run: `family` scores `items` (dicts, each with a unique string `id`)."""

    name: str
    family: Any
    items: list[dict]
    source: str = ""
    options: dict = field(default_factory=dict)
    """Family settings that change the samples (part of the resume key)."""

    def __post_init__(self) -> None:
        ids = [str(it.get("id")) for it in self.items]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"task {self.name!r}: item ids must be unique, repeated: {dup}")


@dataclass
class RunContext:
    """What a family sees while it runs one chunk."""

    backend: Any
    config: EvalConfig
    task: Task
    out_dir: Path
    judge: Any = None
    repeat: int = 0

    @property
    def seed(self) -> int:
        return self.config.seed + 100_003 * self.repeat

    def gen_kwargs(self, default_max_tokens: int) -> dict:
        """Keyword arguments of backend.chat_batch for this run's sampling settings."""
        c = self.config
        return {"temperature": c.temperature, "top_p": c.top_p,
                "max_tokens": c.max_new_tokens or default_max_tokens, "enable_thinking": c.thinking,
                "seed": self.seed}

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as the backend counts them (the model's tokenizer, or an estimate: see
        `backend.exact_token_counts`); about 4 characters each for a backend that cannot count."""
        fn = getattr(self.backend, "count_tokens", None)
        return fn(text) if fn is not None else max(1, (len(text) + 3) // 4)


def backend_identity(backend) -> dict:
    """What identifies the model behind a backend (part of every resume key)."""
    ident = getattr(backend, "identity", None)
    if callable(ident):
        return ident()
    return {"backend": getattr(backend, "name", type(backend).__name__),
            "model": getattr(backend, "model", None) if isinstance(getattr(backend, "model", None), str) else None,
            "url": getattr(backend, "base_url", None)}


def run_task(backend, task: Task, config: EvalConfig, out_dir: Path, judge=None, progress: bool = True,
             identity: dict | None = None) -> dict:
    """Evaluate one task (reusing stored samples) and return its summary."""
    from tqdm.auto import tqdm

    fam = task.family
    cfg_h = config_hash({"model": identity if identity is not None else backend_identity(backend),
                         "family": fam.name, "options": task.options, "config": fam.config_view(config),
                         "judge": backend_identity(judge) if judge is not None and fam.uses_judge else None})
    store = SampleStore(out_dir, task.name)
    # An item's content is part of its key: an edited row (same id) is re-run, not served from the store.
    item_h = {str(it["id"]): config_hash(it) for it in task.items}
    wanted: list[str] = []
    todo: dict[int, list[dict]] = {}
    for r in range(config.repeats):
        for it in task.items:
            k = sample_key(task.name, str(it["id"]), r, cfg_h + item_h[str(it["id"])])
            wanted.append(k)
            if store.get(k) is None:
                todo.setdefault(r, []).append(it)
    reused = len(wanted) - sum(len(v) for v in todo.values())
    bar = tqdm(total=len(wanted), initial=reused, desc=task.name, unit="sample", disable=not progress,
               dynamic_ncols=True)
    try:
        for r, items in todo.items():
            ctx = RunContext(backend=backend, config=config, task=task, out_dir=out_dir, judge=judge, repeat=r)
            step = fam.chunk_size(config)
            for b in range(0, len(items), step):
                chunk = items[b:b + step]
                records = fam.run(chunk, ctx)
                if len(records) != len(chunk):
                    raise RuntimeError(f"family {fam.name} returned {len(records)} records for {len(chunk)} items")
                for it, rec in zip(chunk, records):
                    rec["id"] = str(it["id"])
                    rec["repeat"] = r
                    rec["key"] = sample_key(task.name, str(it["id"]), r, cfg_h + item_h[str(it["id"])])
                store.add(records)
                store.save(wanted)
                bar.update(len(chunk))
    finally:
        bar.close()
    records = [store.get(k) for k in wanted]
    summary = fam.summarize(records, RunContext(backend=backend, config=config, task=task, out_dir=out_dir,
                                                judge=judge))
    summary.setdefault("n", len(task.items))
    summary["samples"] = len(records)
    summary["reused_samples"] = reused
    summary["family"] = fam.name
    if task.source:
        summary["source"] = task.source
    return summary


def run_eval(backend, tasks: Sequence[Task], config: EvalConfig, out_dir: str | Path, *, judge=None,
             model: str | None = None, revision: str | None = None, progress: bool = True) -> dict:
    """Run every task, write results.json / results.md / samples into `out_dir`, and return the results dict.
    Results of tasks run earlier into the same `out_dir` that are not in `tasks` are kept in results.json."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    previous: dict = {}
    if (out / "results.json").is_file():
        try:
            previous = json.loads((out / "results.json").read_text(encoding="utf-8")).get("tasks", {})
        except (json.JSONDecodeError, AttributeError):
            previous = {}
    ident = backend_identity(backend)
    results = {"tasks": dict(previous), "config": config.to_dict(),
               "model": model or ident.get("model") or ident.get("path") or ident.get("url"),
               "revision": revision or ident.get("revision"), "backend": ident}
    for t in tasks:
        results["tasks"][t.name] = run_task(backend, t, config, out, judge=judge, progress=progress,
                                            identity=ident)
        write_results(out, results)  # after each task, so finished tasks survive a crash in a later one
    write_results(out, results)
    return results
