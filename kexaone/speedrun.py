"""`kexaone speedrun`: the whole K-EXAONE recipe end to end on this machine, as resumable stages, with a report card.

Stages (kexaone.pipeline.recipe): tokenizer -> pretrain -> extend -> sft -> rl -> pref -> evaluate -> generate ->
report. A finished stage is skipped when the command is run again; an interrupted pre-training (or SFT) continues
from its last checkpoint; `--from` redoes a stage and everything after it. This module only parses flags and hands
over to the pipeline.
"""

from __future__ import annotations

import argparse
import sys

# The stage list lives in the recipe (which imports nothing heavy at module level, so `--help` stays fast).
from kexaone.pipeline.recipe import STAGE_NAMES

HELP = ("Run the whole recipe (tokenizer, pre-training, context extension, SFT, RL, preference, evaluation of every "
        "stage, generation, report) as resumable stages.")

STAGES = STAGE_NAMES
BUDGET_NAMES = ("tiny", "default", "large")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="run directory (default runs/speedrun-BUDGET)")
    parser.add_argument("--budget", choices=BUDGET_NAMES, default="default",
                        help="tiny: ~1-3 min smoke test; default: every stage within 60 min on 2 CPU cores; large: bigger machines")
    parser.add_argument("--data", action="append", default=[], metavar="PATH[@WEIGHT]",
                        help="extra text (txt/jsonl/parquet/HF datasets dir/glob) for the tokenizer and "
                             "pre-training, repeatable; default: only the embedded synthetic corpus")
    parser.add_argument("--from", dest="from_stage", choices=STAGES,
                        help="redo this stage and every later one (earlier finished stages are kept)")
    parser.add_argument("--until", choices=STAGES, help="stop after this stage")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0 = auto: the cores not already busy, at least 1; on a shared, "
                             "loaded machine one thread is much faster than two fighting for a core)")
    parser.add_argument("--judge-endpoint", metavar="URL",
                        help="OpenAI-compatible API base (.../v1) of a rubric judge for the preference stage: its "
                             "rubric reward joins the rule rewards and the report shows each rubric dimension "
                             "(default: none, rule rewards only; nothing on a 2-core CPU is strong enough to judge)")
    parser.add_argument("--judge-model", default="judge", help="the judge's served model name (default judge)")
    parser.add_argument("--rubric", metavar="FILE", help="rubric JSON file for the judge (default: the five-dimension "
                                                         "rubric of kexaone.rl.judge); needs --judge-endpoint")
    parser.add_argument("--status", action="store_true", help="print the state of each stage and exit")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from kexaone.pipeline.budgets import get_budget
    from kexaone.pipeline.recipe import speedrun_stages
    from kexaone.pipeline.stages import StageRunner

    budget = get_budget(args.budget)
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0 = auto), got {args.threads}")
    out = Path(args.out or f"runs/speedrun-{budget.name}")
    params = {"budget": budget.to_dict(), "data": list(args.data), "seed": int(args.seed)}
    if args.rubric and not args.judge_endpoint:
        raise ValueError("--rubric needs --judge-endpoint (a judge scores the rubric)")
    if args.judge_endpoint:  # only when given, so that runs without a judge keep their parameters
        params["judge"] = {"endpoint": args.judge_endpoint, "model": args.judge_model, "rubric": args.rubric}
    if args.status:
        status = StageRunner(out, speedrun_stages(), params).status()
        for name in STAGES:
            rec = status.get(name)
            took = "" if not rec or rec.seconds is None else f"{rec.seconds + rec.prior_seconds:.1f} s"
            print(f"{name:10s} {rec.status if rec else 'not run':8s} {took}")
        return 0

    import torch

    threads = args.threads or auto_threads()
    torch.set_num_threads(threads)
    print(f"speedrun: budget {budget.name}, {threads} torch thread(s), run directory {out}", file=sys.stderr)
    runner = StageRunner(out, speedrun_stages(threads), params, log=lambda s: print(s, file=sys.stderr, flush=True))
    try:
        outputs = runner.run(from_stage=args.from_stage, until=args.until)
    except KeyboardInterrupt:
        print(f"interrupted: finished stages are kept; run the same command again to resume ({out})",
              file=sys.stderr)
        return 130
    if "report" in outputs:
        summary = json.loads((out / "report.json").read_text(encoding="utf-8"))
        print(f"report: {out / 'report.md'} and {out / 'report.html'}")
        for t in summary.get("tasks", []):
            print(f"  {t['task']}: accuracy {t['accuracy']:.3f} (baseline {t['baseline']:.3f})")
        if summary.get("mtp_speedup") is not None:
            print(f"  MTP speculative decoding: {summary['mtp_speedup']:.2f}x plain")
    final = outputs.get("generate") or {}
    if final.get("model_dir"):
        model_dir = out / final["model_dir"]
        print(f"final model ({final['model_stage']}): {model_dir}  (try: kexaone chat --model {model_dir})")
    elif "pretrain" in outputs:
        model_dir = out / outputs["pretrain"]["model_dir"]
        print(f"model: {model_dir}  (try: kexaone chat --model {model_dir})")
    return 0


def auto_threads(sample_seconds: float = 0.5) -> int:
    """Cores this process may use minus those busy right now (kexaone.utils.cpu), at least 1."""
    from kexaone.utils.cpu import busy_cores, usable_cores

    cores = usable_cores()
    return max(1, min(cores, cores - round(busy_cores(sample_seconds))))
