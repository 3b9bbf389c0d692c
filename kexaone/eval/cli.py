"""`kexaone eval`: evaluate a local model directory or an OpenAI-compatible endpoint on built-in tasks and user
JSONL files, writing results.json, results.md and per-sample JSONL into --out (see kexaone.eval.harness).

This module only maps flags onto EvalConfig, the backends and the task list; heavy imports happen inside `run`.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "evaluate a model (local or OpenAI-compatible endpoint) on benchmark families and JSONL task files"


def _csv(kind):
    def parse(text: str):
        try:
            return tuple(kind(x) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}")
    return parse


def _epilog() -> str:
    from kexaone.eval.families import BUILTIN_HELP, FAMILIES

    lines = ["task files (FAMILY:PATH, JSONL, reported under the file's stem):"]
    lines += [f"  {name:<12} {fam.fields}" for name, fam in FAMILIES.items()]
    lines += ["", "built-in tasks:"] + [f"  {name:<12} {text}" for name, text in BUILTIN_HELP.items()]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _epilog()
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="local model directory (Hugging Face layout with tokenizer.json)")
    src.add_argument("--endpoint", help="OpenAI-compatible server URL (its root or .../v1)")
    p.add_argument("--api-model", help="model name to request from the endpoint (default: the first of /v1/models)")
    p.add_argument("--api-key-env", help="name of the environment variable holding the endpoint's API key")
    p.add_argument("--tasks", required=True,
                   help="comma-separated built-ins (gsm8k, math500, flores, flores-ko-en, niah, ruler, ruler-vt, "
                        "synthetic, arithmetic, recall, retrieval, code, heldout, kgc-safety) and user files "
                        "FAMILY:PATH with FAMILY in mcq, math, ifeval, translation, judge, synthetic, heldout")
    p.add_argument("--limit", type=int, help="at most N items per task (RULER: N per kind; kgc-safety: N spread over "
                                             "domains; niah's grid is set by --niah-lengths/--niah-depths)")
    p.add_argument("--out", default="eval_out", help="output directory (re-running into it reuses finished samples)")
    p.add_argument("--tokenizer", help="the endpoint model's tokenizer (directory with tokenizer.json): exact NIAH/RULER "
                                       "lengths instead of a 4-characters-per-token estimate")
    p.add_argument("--judge-endpoint", help="OpenAI-compatible server of the judge model (judge family, kgc-safety)")
    p.add_argument("--judge-model", help="model name at the judge endpoint")
    p.add_argument("--judge-api-key-env", help="environment variable holding the judge endpoint's API key")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy; default 0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0)")
    p.add_argument("--max-new-tokens", type=int, help="tokens per reply (default: each family's own)")
    p.add_argument("--thinking", choices=("on", "off"), help="reasoning mode in the chat template (default: model's)")
    p.add_argument("--repeats", type=int, default=1, help="samples per item (average; default 1)")
    p.add_argument("--concurrency", type=int, default=8, help="parallel requests to an endpoint (default 8)")
    p.add_argument("--mcq-mode", choices=("generate", "loglik"), default="generate",
                   help="multiple choice by generated letter or by choice log-likelihood (default generate)")
    p.add_argument("--mcq-template", default="Question: {question}\nAnswer:",
                   help="context of --mcq-mode loglik, with {question}; each choice follows after one space "
                        "(default 'Question: {question}\\nAnswer:'; '{question}' matches lm-eval's doc_to_text)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32, help="items per backend call and per save (default 32)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per endpoint request (default 300)")
    p.add_argument("--max-retries", type=int, default=5, help="retries of an endpoint request (default 5)")
    p.add_argument("--niah-lengths", type=_csv(int), help="NIAH context lengths in tokens, e.g. 1024,2048,4096")
    p.add_argument("--niah-depths", type=_csv(float), default=(0.0, 25.0, 50.0, 75.0, 100.0),
                   help="NIAH needle depths in percent (default 0,25,50,75,100)")
    p.add_argument("--niah-haystack", choices=("noise", "world"), default="noise")
    p.add_argument("--ruler-length", type=int, help="RULER context length in tokens (default min(context, 4096))")
    p.add_argument("--device", help="local model device (default cuda when available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="local model dtype")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from kexaone.eval.backends import EndpointError, LocalBackend, OpenAIBackend
    from kexaone.eval.families import resolve_tasks
    from kexaone.eval.harness import EvalConfig, run_eval

    try:
        cfg = EvalConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                         thinking=None if args.thinking is None else args.thinking == "on", repeats=args.repeats,
                         limit=args.limit, mcq_mode=args.mcq_mode,
                         mcq_template=args.mcq_template.replace("\\n", "\n"), seed=args.seed,
                         chunk_size=args.batch_size,
                         niah_lengths=args.niah_lengths, niah_depths=tuple(args.niah_depths),
                         niah_haystack=args.niah_haystack, ruler_length=args.ruler_length)
        if args.model:
            import torch

            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = getattr(torch, args.dtype) if args.dtype else None
            backend = LocalBackend.from_pretrained(args.model, dtype=dtype, device=device,
                                                   batch_size=args.batch_size, seed=args.seed)
        else:
            backend = OpenAIBackend(args.endpoint, model=args.api_model, api_key_env=args.api_key_env,
                                    timeout=args.timeout, max_retries=args.max_retries, concurrency=args.concurrency,
                                    tokenizer=args.tokenizer)
        judge = None
        if args.judge_endpoint:
            judge = OpenAIBackend(args.judge_endpoint, model=args.judge_model, api_key_env=args.judge_api_key_env,
                                  timeout=args.timeout, max_retries=args.max_retries, concurrency=args.concurrency)
        tasks = resolve_tasks([t for t in args.tasks.split(",")], cfg, backend=backend, judge=judge,
                              log=lambda m: print(m, file=sys.stderr))
        if not tasks:
            print("kexaone eval: no task to run (all were skipped)", file=sys.stderr)
            return 1
        results = run_eval(backend, tasks, cfg, args.out, judge=judge, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, EndpointError) as e:
        print(f"kexaone eval: error: {e}", file=sys.stderr)
        return 2
    width = max(len(n) for n in results["tasks"])
    for name, r in results["tasks"].items():
        score = r.get("score")
        s = f"{score:.4f}" if isinstance(score, float) else str(score)
        print(f"{name:<{width}}  {s}  ({r.get('metric', '')}, n={r.get('n')})")
    print(f"results in {os.path.join(args.out, 'results.json')}")
    return 0
