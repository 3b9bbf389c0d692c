"""Long-sequence training: time and peak memory of one training step of the `small` preset at 4K, 16K and 32K
tokens (one packed row of whole documents), with and without activation checkpointing.

How memory is measured: each (length, checkpointing) case runs in a fresh child process (so no allocator cache or
earlier case inflates it); the child builds the model and a document-aligned row, runs one warm-up step, then the
timed steps; its peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, the high-water mark of the
whole process: weights, optimizer state, activations, the allocator's slack) is reported, together with the RSS
after building the model, before any step (so the training step's own growth is the difference). A step is forward + backward
(CE + MTP + aux losses, as the Trainer computes them) + an AdamW update, fp32 on CPU, 1 torch thread.

The row is packed as the extension stage packs it: one document of half the row and documents of 64..1024 tokens
filling the rest (global layers take the document-aligned attention path, sliding layers the blocked one).

Writes benchmarks/results/long_seq.md (+ .json). Usage: nice -n 10 python benchmarks/bench_long_seq.py
[--lengths 4096,16384,32768] [--steps 2] [--modes off,on] [--name long_seq]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def child(T: int, checkpointing: bool, steps: int) -> dict:
    import random
    import resource
    import time

    import torch

    from kexaone.config import KExaoneConfig
    from kexaone.model.transformer import KExaoneForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = KExaoneConfig.preset("small")
    model = KExaoneForCausalLM(cfg)
    model.gradient_checkpointing = checkpointing
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = random.Random(0)
    lengths = [T // 2]
    while sum(lengths) < T:
        lengths.append(min(rng.randint(64, 1024), T - sum(lengths)))
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    ids = torch.randint(1, cfg.vocab_size, (1, T))
    rss_kb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731  (Linux: KiB)

    def step():
        out = model(ids, labels=ids, doc_ids=doc)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def current_gib() -> float:  # resident now (not the high-water mark): /proc/self/statm pages
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

    base = current_gib()  # model + inputs, before any step
    step()  # warm-up: also allocates the optimizer state
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"tokens": T, "checkpointing": checkpointing, "documents": len(lengths),
            "step_s": min(times), "peak_rss_gib": rss_kb() / 2**20, "model_rss_gib": base}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="4096,16384,32768")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--modes", default="off,on")
    ap.add_argument("--name", default="long_seq", help="results file stem under benchmarks/results")
    ap.add_argument("--child", nargs=2, metavar=("T", "CKPT"))
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(int(a.child[0]), a.child[1] == "on", a.steps)))
        return
    rows: list[dict] = []
    for mode in a.modes.split(","):
        for T in (int(x) for x in a.lengths.split(",")):
            r = subprocess.run([sys.executable, __file__, "--child", str(T), mode, "--steps", str(a.steps)],
                               capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            if r.returncode != 0:
                rows.append({"tokens": T, "checkpointing": mode == "on", "error": r.stderr.strip()[-300:]})
            else:
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
            write(rows, a.name)  # after every case: a long run that is stopped keeps what it measured


def write(rows: list[dict], name: str = "long_seq") -> None:
    from kexaone.report.machine import cpu_model

    lines = ["# Long-sequence training step, `small` preset (bench_long_seq.py)", "",
             f"Machine: {cpu_model()}, {os.cpu_count()} cores (shared, load average {os.getloadavg()[0]:.1f} at the "
             "end), 1 torch thread, fp32. Peak memory = peak RSS of a fresh process per case (getrusage ru_maxrss: "
             "weights + AdamW state + activations + allocator slack). One row of whole documents (half the row one "
             "document, the rest 64-1024-token documents); s / step = the fastest timed step after one warm-up.", "",
             "| tokens | activation checkpointing | documents | s / step | peak RSS (GiB) | RSS before the first step (GiB) |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['tokens']} | {'on' if r['checkpointing'] else 'off'} | failed: {r['error']} | | | |")
        else:
            lines.append(f"| {r['tokens']} | {'on' if r['checkpointing'] else 'off'} | {r['documents']} | "
                         f"{r['step_s']:.2f} | {r['peak_rss_gib']:.2f} | {r['model_rss_gib']:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
