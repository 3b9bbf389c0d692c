"""Speedrun results: run (or resume) `kexaone speedrun` and record its measured numbers in
benchmarks/results/speedrun.md: time and CPU time per stage, each capability against its baseline (as ratios),
held-out bits per byte trained vs untrained, SuperBPE vs plain BPE bytes per token, MTP speculative vs plain decode
speed, and the machine.

Usage: python benchmarks/bench_speedrun.py [--budget default] [--out runs/speedrun-default] [--no-run]
(--no-run only formats an existing run directory; the run itself is resumable, so re-running continues it).
Every number is read from the run's own report.json / stages.json; nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "n/a"
    return f"{a / b:.2f}x"


def format_results(run_dir: Path) -> str:
    from kexaone.pipeline.stages import read_state

    summary = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    state = read_state(run_dir)
    m = summary.get("machine", {})
    git = m.get("git", {})
    lines = [
        f"# kexaone speedrun: `{summary.get('budget')}` budget",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores_usable')} usable cores, "
        f"{(m.get('memory_bytes') or 0) / 2**30:.1f} GiB RAM, {m.get('os')}, Python {m.get('python')}, "
        f"torch {m.get('torch')}; git {git.get('commit', 'unknown')[:12]}"
        f"{' (uncommitted changes)' if git.get('dirty') else ''}; report written {m.get('date')}.",
        f"Run directory: `{run_dir}` (report.md / report.html there).",
        "",
        "## Time per stage",
        "",
        "Wall time depends on how busy the shared machine was; CPU time (user + system of the process and its "
        "workers) is about what each stage costs on one idle core.",
        "",
        "| stage | wall seconds | CPU seconds | attempts |",
        "|---|---|---|---|",
    ]
    tw = tc = 0.0
    for name in state.get("order", []):
        rec = state["stages"].get(name, {})
        w = (rec.get("seconds") or 0.0) + (rec.get("prior_seconds") or 0.0)
        c = rec.get("cpu_seconds")
        tw += w
        tc += c or 0.0
        lines.append(f"| {name} | {w:.1f} | {'n/a' if c is None else f'{c:.1f}'} | {rec.get('attempts', 0)} |")
    lines += [f"| **total** | {tw:.1f} ({tw / 60:.1f} min) | {tc:.1f} ({tc / 60:.1f} min) | |", ""]
    lines += ["## Capabilities vs baselines", "",
              "| task | accuracy | chance | untrained model | baseline (max) | accuracy / baseline |",
              "|---|---|---|---|---|---|"]
    for t in summary.get("tasks", []):
        u = t.get("untrained")
        lines.append(f"| {t['task']} | {t['accuracy']:.3f} | {t['chance']:.3f} | "
                     f"{'n/a' if u is None else f'{u:.3f}'} | {t['baseline']:.3f} | "
                     f"{_ratio(t['accuracy'], t['baseline'])} |")
    lines += ["", "## Other measurements", "", "| what | value |", "|---|---|"]
    if summary.get("heldout_bpb") is not None:
        lines.append(f"| held-out bits/byte, trained / untrained | {summary['heldout_bpb']:.3f} / "
                     f"{summary.get('heldout_bpb_untrained', float('nan')):.3f} |")
    if summary.get("final_train_loss") is not None:
        lines.append(f"| final training loss (total) | {summary['final_train_loss']:.3f} |")
    if summary.get("final_mtp_loss") is not None:
        lines.append(f"| final MTP (t+2) loss | {summary['final_mtp_loss']:.3f} |")
    if summary.get("max_vio_first") is not None:
        lines.append(f"| MaxVio first step / last tenth | {summary['max_vio_first']:.3f} / "
                     f"{summary['max_vio_last']:.3f} |")
    if summary.get("tokenizer_gain") is not None:
        lines.append(f"| SuperBPE vs plain BPE bytes/token (same data, same vocab) | "
                     f"{summary['tokenizer_gain']:.3f}x |")
    if summary.get("mtp_speedup") is not None:
        drafts = summary.get("mtp_draft_tokens")
        lines.append(f"| decode tokens/s plain / MTP speculative{f' ({drafts} draft tokens)' if drafts else ''} | "
                     f"{summary['plain_tokens_per_s']:.1f} / {summary['mtp_tokens_per_s']:.1f} "
                     f"({summary['mtp_speedup']:.2f}x, acceptance {100 * (summary.get('acceptance_rate') or 0):.1f}%) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="default", choices=("tiny", "default", "large"))
    p.add_argument("--out", help="run directory (default runs/speedrun-BUDGET)")
    p.add_argument("--no-run", action="store_true", help="only format an existing run directory")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "speedrun.md"))
    args = p.parse_args(argv)
    out = Path(args.out or REPO / "runs" / f"speedrun-{args.budget}")
    if not args.no_run:
        rc = subprocess.call([sys.executable, "-m", "kexaone", "speedrun", "--budget", args.budget, "--out", str(out)],
                             cwd=REPO)
        if rc != 0:
            print(f"speedrun exited with {rc}; not writing results", file=sys.stderr)
            return rc
    if not (out / "report.json").is_file():
        print(f"{out} has no report.json: the run has not finished", file=sys.stderr)
        return 1
    text = format_results(out)
    from kexaone.utils.io import atomic_write_text

    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
