"""Assemble BENCHMARKS.md from the per-topic result files that each benchmark script writes into
benchmarks/results/ (so the numbers in BENCHMARKS.md are exactly those the scripts printed).

Usage: python benchmarks/collect.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kexaone.utils.io import atomic_write_text  # noqa: E402

# (result file, the script that writes it), in reading order
TOPICS = [
    ("model.md", "benchmarks/bench_model.py"),
    ("moe.md", "benchmarks/bench_moe.py"),
    ("moe_bucket.md", "benchmarks/bench_moe.py --parts bucket"),
    ("tokenizer.md", "benchmarks/bench_tokenizer.py"),
    ("tokenizer_timing_64mb.md", "benchmarks/bench_tokenizer.py --timing-only"),
    ("tokenizer_timing_full.md", "benchmarks/bench_tokenizer.py --timing-only"),
    ("train.md", "benchmarks/bench_train.py"),
    ("optim.md", "benchmarks/bench_optim.py"),
    ("vocab_loss.md", "benchmarks/bench_vocab_loss.py"),
    ("engine.md", "benchmarks/bench_decode.py, bench_server.py, bench_decode_dtype.py, bench_decode_bandwidth.py, "
                  "bench_logprob_gap.py, bench_mtp_speedrun.py"),
    ("decode_step.md", "benchmarks/bench_decode_step.py"),
    ("speedrun.md", "benchmarks/bench_speedrun.py"),
    ("probe_self_judge.md", "benchmarks/probe_self_judge.py --run runs/speedrun --responses 192"),
    ("tool_calls.md", "benchmarks/bench_tool_calls.py --base-url (against kexaone serve)"),
    ("eval_cli_speedrun.md", "kexaone eval --model (its results.md; command inside)"),
    ("gpu_check.md", "benchmarks/gpu_check.py --write (on a CUDA machine)"),
    ("probe_retrieval.md", "benchmarks/probe_retrieval.py --format"),
    ("induction_study.md", "benchmarks/study_induction.py --report"),
    ("long_seq.md", "benchmarks/bench_long_seq.py --lengths 4096,8192,16384,32768 --modes on,off --steps 1"),
    ("ablations.md", "kexaone ablate (its report)"),
    ("ablations_cpu.md", "kexaone ablate --budget cpu (its report; commands inside)"),
]

HEADER = """# Benchmarks

Every table below was produced by the script named above it, on the machine it names, side by side in one run
(the development machine is a shared 2-core CPU: compare ratios, not absolute numbers). Targets that were missed are
stated with the measured number. Regenerate this file with `python benchmarks/collect.py` after re-running a script.
"""


def demote(md: str) -> str:
    """Shift every markdown heading one level down so each topic nests under its section."""
    return re.sub(r"^(#{1,5}) ", lambda m: "#" + m.group(1) + " ", md, flags=re.M)


def fix_links(md: str) -> str:
    """Images and links inside results/ files are relative to that folder."""
    return re.sub(r"\]\((?!https?:|#|/)([^)]+)\)", r"](benchmarks/results/\1)", md)


def main() -> int:
    parts = [HEADER]
    results = ROOT / "benchmarks" / "results"
    for name, script in TOPICS:
        path = results / name
        if not path.exists():
            continue
        parts.append(f"\n<!-- from benchmarks/results/{name}, written by {script} -->\n")
        parts.append(fix_links(demote(path.read_text(encoding="utf-8").strip())) + "\n")
    atomic_write_text(ROOT / "BENCHMARKS.md", "\n".join(parts))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
