"""`kexaone tools`: synthetic tool-use environments.

    kexaone tools synth --out tasks.jsonl [--n 200] [--seed 0] [--filter-model DIR | --filter-endpoint URL]
    kexaone tools eval --tasks tasks.jsonl (--model DIR | --endpoint URL) [--trials 4] [--out results.json]

`synth` generates candidate tasks from the synthetic world (kexaone.agents.envs.tasks), keeps those that pass the
filter (kexaone.agents.envs.evaluate.filter_tasks: gold replay, effect, duplicates, the scripted oracle, and
optionally a model's success in `--filter-trials` runs) and writes them as JSONL. `eval` reports pass^1..pass^k.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "Synthetic tool-use environments: generate filtered tasks (synth) and measure pass^k (eval)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    from kexaone.agents.cli import add_backend_arguments

    sub = p.add_subparsers(dest="tools_command", metavar="{synth,eval}", required=True)
    s = sub.add_parser("synth", help="generate and filter tool-use tasks; write JSONL")
    s.add_argument("--out", required=True, metavar="FILE.jsonl")
    s.add_argument("--n", type=int, default=200, help="candidate tasks to generate (fewer survive the filter)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world the databases come from")
    s.add_argument("--world-size", default="default", help="tiny, default or large")
    s.add_argument("--templates", default=None, help="comma-separated task templates (default: all)")
    s.add_argument("--langs", default="en", help="comma-separated request languages drawn per task: en, ko")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--filter-model", metavar="DIR", help="also run this local model in each task")
    g.add_argument("--filter-endpoint", metavar="URL", help="also run the model at this endpoint in each task")
    s.add_argument("--api-model", default=None)
    s.add_argument("--api-key-env", default=None, metavar="VAR")
    s.add_argument("--filter-trials", type=int, default=1)
    s.add_argument("--filter-min-pass", type=int, default=1,
                   help="keep a task only if the filter model solved it at least this many times")
    s.add_argument("--max-steps", type=int, default=20)
    e = sub.add_parser("eval", help="run a model on a task file and report pass^k")
    add_backend_arguments(e)
    e.add_argument("--tasks", required=True, metavar="FILE.jsonl")
    e.add_argument("--trials", type=int, default=4)
    e.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--top-p", type=float, default=0.95)
    e.add_argument("--max-steps", type=int, default=20)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--workers", type=int, default=1, help="episodes run at once (endpoints only)")
    e.add_argument("--out", default=None, metavar="FILE.json", help="write the full results (per task) here")


def run(args) -> int:
    return _synth(args) if args.tools_command == "synth" else _eval(args)


def _synth(args) -> int:
    from kexaone.agents.cli import make_backend
    from kexaone.agents.envs.evaluate import episode_config, filter_tasks
    from kexaone.agents.envs.tasks import TEMPLATES, generate_candidates
    from kexaone.data.synthetic.world import World
    from kexaone.utils.io import atomic_open

    out = Path(args.out)
    if not out.parent.exists():
        raise FileNotFoundError(f"--out directory {out.parent} does not exist")
    templates = tuple(t.strip() for t in args.templates.split(",") if t.strip()) if args.templates \
        else tuple(TEMPLATES)
    langs = tuple(x.strip() for x in args.langs.split(",") if x.strip())
    candidates = generate_candidates(args.n, args.seed, world=World(args.world_seed, args.world_size),
                                     templates=templates, langs=langs)
    backend = None
    if args.filter_model or args.filter_endpoint:
        backend = make_backend(args.filter_model, args.filter_endpoint, args.api_model, args.api_key_env,
                               seed=args.seed)
    kept, stats = filter_tasks(candidates, backend=backend, trials=args.filter_trials,
                               min_pass=args.filter_min_pass, config=episode_config(max_steps=args.max_steps))
    with atomic_open(out) as f:
        for t in kept:
            f.write(json.dumps(t.to_json(), ensure_ascii=False) + "\n")
    print(json.dumps(stats))
    print(f"wrote {len(kept)} tasks to {out}", file=sys.stderr)
    return 0


def _eval(args) -> int:
    from kexaone.agents.cli import make_backend
    from kexaone.agents.envs.evaluate import evaluate_tools
    from kexaone.agents.envs.tasks import load_tasks
    from kexaone.utils.io import atomic_write_text

    if args.model and args.workers != 1:
        raise ValueError("--workers applies to --endpoint; a local model runs one episode at a time")
    tasks = load_tasks(args.tasks)[: args.limit]
    backend = make_backend(args.model, args.endpoint, args.api_model, args.api_key_env, seed=args.seed)
    res = evaluate_tools(backend, tasks, trials=args.trials, temperature=args.temperature, top_p=args.top_p,
                         max_steps=args.max_steps, seed=args.seed, workers=args.workers)
    summary = {k: v for k, v in res.items() if k != "per_task"}
    if args.out:
        atomic_write_text(args.out, json.dumps(res, indent=1))
    print(json.dumps(summary))
    return 0
