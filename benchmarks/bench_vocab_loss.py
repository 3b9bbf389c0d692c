"""Peak memory and time of one training step's loss path at the released vocabulary (153,600): full [B, T, V] logits
(`return_logits=True`, the path before issue 20) against the chunked cross-entropy through the lm_head
(kexaone/model/vocab_loss.py, what the trainer now gets), on the same weights and tokens.

Each path runs in its own subprocess (so one's allocations cannot hide the other's peak): build a model with a small
hidden size and the real vocabulary, run one forward + backward with labels, and report the peak resident memory
above the resident memory just before the step (ru_maxrss), the step time (median of --repeats), the losses and
the lm_head gradient (their differences across paths are printed).

    nice -n 10 python benchmarks/bench_vocab_loss.py [--seq 4096] [--hidden 64] [--repeats 2]

Prints a markdown table and writes benchmarks/results/vocab_loss.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "vocab_loss.md"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> None:
    from kexaone.config import KExaoneConfig
    from kexaone.model.transformer import KExaoneForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = KExaoneConfig.preset("tiny").replace(vocab_size=args.vocab, hidden_size=args.hidden,
                                               max_position_embeddings=max(8192, args.seq))
    model = KExaoneForCausalLM(cfg).train()
    ids = torch.randint(0, args.vocab, (1, args.seq), generator=torch.Generator().manual_seed(1))
    full = args.child == "full"
    times, losses = [], None
    before = _rss_bytes()
    for _ in range(args.repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model(ids, labels=ids, return_logits=full)
        out.loss.backward()
        times.append(time.perf_counter() - t0)
        losses = {"ce": out.ce_loss.item(), "mtp": out.mtp_loss.item(), "loss": out.loss.item()}
        del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    g = model.lm_head.weight.grad
    torch.save(g, args.grad_out)
    print(json.dumps({"peak_extra": peak - before, "seconds": statistics.median(times), **losses}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=153_600)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", choices=["full", "chunked"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--grad-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    import tempfile

    from bench_decode import machine

    from kexaone.utils.io import atomic_write_text

    load_before = os.getloadavg()[0]
    res, grads = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("full", "chunked"):
            gpath = str(Path(tmp) / f"{mode}.pt")
            cmd = [sys.executable, __file__, "--child", mode, "--grad-out", gpath, "--seq", str(args.seq),
                   "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--repeats", str(args.repeats),
                   "--threads", str(args.threads)]
            env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            grads[mode] = torch.load(gpath)
            print(mode, res[mode], file=sys.stderr)
    f, c = res["full"], res["chunked"]
    gdiff = (grads["full"] - grads["chunked"]).abs().max().item()
    gscale = grads["full"].abs().max().item()
    gib = 1 << 30
    lines = [
        "## Chunked cross-entropy at the released vocabulary (bench_vocab_loss.py)",
        "",
        f"Machine: {machine(args.threads)}; load average (1 min) {load_before:.1f} before the run, "
        f"{os.getloadavg()[0]:.1f} after (the machine is shared: the two paths ran one after the other, so their "
        "times are only comparable at equal load; the memory figures do not depend on it).",
        "",
        f"One training step (forward + backward with labels, CE + MTP losses) of a `tiny`-shape model with hidden "
        f"size {args.hidden} and vocabulary {args.vocab:,}, batch 1 x {args.seq} tokens, fp32; each path in its own "
        f"process; peak = peak resident memory above the memory just before the step; time = median of "
        f"{args.repeats}.",
        "",
        "| path | peak extra memory | step time | ce loss | mtp loss |",
        "|---|---|---|---|---|",
        f"| full logits (`return_logits=True`, before) | {f['peak_extra'] / gib:.2f} GiB | {f['seconds']:.2f} s | "
        f"{f['ce']:.6f} | {f['mtp']:.6f} |",
        f"| chunked (`vocab_loss.linear_cross_entropy`, default with labels) | {c['peak_extra'] / gib:.2f} GiB | "
        f"{c['seconds']:.2f} s | {c['ce']:.6f} | {c['mtp']:.6f} |",
        "",
        f"Peak memory cut by {f['peak_extra'] / max(c['peak_extra'], 1):.1f}x; time ratio chunked / full "
        f"{c['seconds'] / f['seconds']:.2f}. Loss difference {abs(f['loss'] - c['loss']):.2e}; lm_head gradient max "
        f"abs difference {gdiff:.2e} (max abs entry {gscale:.2e}).",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, text + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
