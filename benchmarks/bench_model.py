"""Whole-model speed and memory: kexaone vs transformers' ExaoneMoeForCausalLM on the same weights.

One run, side by side, at the `small` preset (one random checkpoint is saved once and loaded into both
implementations):
- training step (forward + backward, next-token loss; kexaone also with its MTP loss), sequence 1024: tokens/s;
- prefill of 16K tokens into a KV cache (logits of the last position only): time and peak memory;
- KV-cache bytes held at 32K context (bf16), kexaone's ring/growing cache vs transformers' DynamicCache;
- model FLOPs utilisation: model FLOP/s (kexaone.model.info.flops_per_token) over this machine's measured matmul
  peak at the same dtype and thread count (fp32; and bf16 for a bf16-autocast kexaone training step).

Each measurement runs in a fresh subprocess (so peak RSS belongs to it alone), training runs are interleaved
(A, B, A, B, ...) and the median is kept: the machine is shared and noisy, read the ratios. One thread by default:
on a 2-core box shared by several jobs, OpenMP with 2 threads is 10x slower than 1 (threads spin-wait on each other).

    nice -n 10 python benchmarks/bench_model.py [--threads 1] [--repeats 3] [--prefill-seq 16384] [--quick]

Prints a markdown table and writes it, with a machine description, to benchmarks/results/model.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "model.md"
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- machine


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ----------------------------------------------------------------------------------------------- workers
def _load(impl: str, ckpt: str):
    import torch

    if impl == "kexaone":
        from kexaone.model import KExaoneForCausalLM

        return KExaoneForCausalLM.from_pretrained(ckpt)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ckpt, attn_implementation="sdpa", dtype=torch.float32)


def worker_train(impl: str, ckpt: str, batch: int, seq: int, steps: int, mtp: bool, bf16: bool) -> dict:
    import torch

    model = _load(impl, ckpt).train()
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (batch, seq), generator=g)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if impl == "kexaone":
                out = model(ids, labels=ids, compute_mtp=mtp)
            else:
                out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        return float(out.loss)

    step()  # warm-up (allocator, kernels)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    return {"times": times, "tokens": batch * seq, "loss": loss}


def worker_prefill(impl: str, ckpt: str, seq: int) -> dict:
    import torch

    model = _load(impl, ckpt).eval()
    V = model.config.vocab_size
    ids = torch.randint(0, V, (1, seq), generator=torch.Generator().manual_seed(1))

    def run(x):
        with torch.no_grad():
            if impl == "kexaone":
                cache = model.new_cache(1, max_seq_len=x.shape[1])  # an engine knows its prompt length
                out = model(x, cache=cache, logits_to_keep=1)
                return out.logits, cache
            out = model(input_ids=x, use_cache=True, logits_to_keep=1)
            return out.logits, out.past_key_values

    run(ids[:, :1024])  # warm-up at a short length
    base = rss_bytes()
    t0 = time.perf_counter()
    logits, cache = run(ids)
    elapsed = time.perf_counter() - t0
    return {"time": elapsed, "peak_extra_bytes": max(0, peak_rss_bytes() - base), "tokens": seq,
            "logit0": float(logits[0, -1, 0])}


def worker_kv(impl: str, ckpt: str, context: int) -> dict:
    """Fill each layer's cache with `context` positions of bf16 keys/values (no model compute needed: what the
    cache holds depends only on the layer types and shapes) and report the bytes held."""
    import torch

    from kexaone.config import KExaoneConfig

    cfg = KExaoneConfig.from_json_file(Path(ckpt) / "config.json")
    chunk = 4096
    if impl == "kexaone":
        from kexaone.model import KVCache

        held = {}
        for label, bound in (("reserved", context), ("grown", None)):
            cache = KVCache(cfg, 1, dtype=torch.bfloat16, max_seq_len=bound)
            for start in range(0, context, chunk):
                n = min(chunk, context - start)
                kv = torch.zeros(1, cfg.num_key_value_heads, n, cfg.head_dim, dtype=torch.bfloat16)
                for layer in range(cfg.num_hidden_layers):
                    cache.update(layer, kv, kv)
            held[label] = cache.nbytes()
    else:
        from transformers import AutoConfig, DynamicCache

        hc = AutoConfig.from_pretrained(ckpt)
        cache = DynamicCache(config=hc)
        for start in range(0, context, chunk):
            n = min(chunk, context - start)
            kv = torch.zeros(1, cfg.num_key_value_heads, n, cfg.head_dim, dtype=torch.bfloat16)
            for layer in range(cfg.num_hidden_layers):
                cache.update(kv, kv, layer)
        held = 0
        for layer in cache.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor):
                    held += t.numel() * t.element_size()
    return {"bytes": held, "context": context}  # kexaone: {"reserved": with max_seq_len, "grown": without}


def worker_peak(dtype_name: str, n: int = 2048, reps: int = 5) -> dict:
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return {"flops": 2 * n**3 / best}


def run_worker(kind: str, threads: int, **kw) -> dict:
    """Run one measurement in a fresh interpreter; returns its JSON result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, __file__, "--worker", kind, "--threads", str(threads), "--kw", json.dumps(kw)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} {kw} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- main
def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed training steps per implementation")
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--train-seq", type=int, default=1024)
    ap.add_argument("--prefill-seq", type=int, default=16384)
    ap.add_argument("--kv-context", type=int, default=32768)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test of the script itself)")
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--kw", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        fn = {"train": worker_train, "prefill": worker_prefill, "kv": worker_kv, "peak": worker_peak}[args.worker]
        print(json.dumps(fn(**json.loads(args.kw))))
        return 0

    if args.quick:
        args.train_seq, args.prefill_seq, args.kv_context, args.repeats = 256, 2048, 4096, 1

    import torch
    import transformers

    from kexaone.config import KExaoneConfig
    from kexaone.model import KExaoneForCausalLM
    from kexaone.model.info import flops_per_token

    cfg = KExaoneConfig.preset("small")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = KExaoneForCausalLM(cfg)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    b.normal_(0, 1e-3)
        model.save_pretrained(tmp)
        del model
        T = args.threads

        print("measuring matmul peak ...", flush=True)
        peak32 = run_worker("peak", T, dtype_name="float32")["flops"]
        peak16 = run_worker("peak", T, dtype_name="bfloat16")["flops"]

        print("training steps (interleaved) ...", flush=True)
        runs = {"kexaone": [], "transformers": [], "kexaone+mtp": []}
        common = dict(ckpt=tmp, batch=args.train_batch, seq=args.train_seq, steps=args.repeats, bf16=False)
        for _ in range(2):
            runs["kexaone"] += run_worker("train", T, impl="kexaone", mtp=False, **common)["times"]
            runs["transformers"] += run_worker("train", T, impl="transformers", mtp=False, **common)["times"]
        runs["kexaone+mtp"] += run_worker("train", T, impl="kexaone", mtp=True, **common)["times"]
        bf16 = None
        if not args.skip_bf16:
            bf16 = run_worker("train", T, impl="kexaone", mtp=False, **dict(common, bf16=True))["times"]
        tokens = args.train_batch * args.train_seq
        tps = {k: tokens / statistics.median(v) for k, v in runs.items()}

        print(f"prefill {args.prefill_seq} ...", flush=True)
        pre_ours = run_worker("prefill", T, impl="kexaone", ckpt=tmp, seq=args.prefill_seq)
        pre_hf = run_worker("prefill", T, impl="transformers", ckpt=tmp, seq=args.prefill_seq)

        print(f"KV cache at {args.kv_context} ...", flush=True)
        kv_ours = run_worker("kv", T, impl="kexaone", ckpt=tmp, context=args.kv_context)["bytes"]
        kv_hf = run_worker("kv", T, impl="transformers", ckpt=tmp, context=args.kv_context)["bytes"]

    f_train = 3 * flops_per_token(cfg, args.train_seq)
    f_train_mtp = 3 * flops_per_token(cfg, args.train_seq, include_mtp=True)
    f_pre = flops_per_token(cfg, args.prefill_seq)
    rows = [
        ("training step, tokens/s (fwd+bwd, next-token loss)", f"{tps['kexaone']:.0f}", f"{tps['transformers']:.0f}",
         f"{tps['kexaone'] / tps['transformers']:.2f}x"),
        ("training step MFU vs fp32 matmul peak", f"{tps['kexaone'] * f_train / peak32:.1%}",
         f"{tps['transformers'] * f_train / peak32:.1%}", ""),
        ("training step with MTP loss, tokens/s", f"{tps['kexaone+mtp']:.0f}", "(no MTP)", ""),
        ("training step with MTP loss, MFU (fp32)", f"{tps['kexaone+mtp'] * f_train_mtp / peak32:.1%}", "", ""),
    ]
    if bf16:
        tps16 = tokens / statistics.median(bf16)
        rows.append(("training step, bf16 autocast, tokens/s / MFU vs bf16 peak",
                     f"{tps16:.0f} / {tps16 * f_train / peak16:.1%}", "", ""))
    rows += [
        (f"prefill {args.prefill_seq} tokens, seconds", f"{pre_ours['time']:.1f}", f"{pre_hf['time']:.1f}",
         f"{pre_hf['time'] / pre_ours['time']:.2f}x"),
        (f"prefill {args.prefill_seq} tokens, peak extra memory (RSS)", fmt_bytes(pre_ours["peak_extra_bytes"]),
         fmt_bytes(pre_hf["peak_extra_bytes"]),
         f"{pre_hf['peak_extra_bytes'] / max(1, pre_ours['peak_extra_bytes']):.1f}x less"),
        ("prefill MFU vs fp32 matmul peak", f"{args.prefill_seq * f_pre / pre_ours['time'] / peak32:.1%}",
         f"{args.prefill_seq * f_pre / pre_hf['time'] / peak32:.1%}", ""),
        (f"KV cache held at {args.kv_context} context (bf16), length known (max_seq_len)",
         fmt_bytes(kv_ours["reserved"]), fmt_bytes(kv_hf), f"{kv_hf / kv_ours['reserved']:.2f}x"),
        (f"KV cache held at {args.kv_context} context (bf16), grown in 4096-token steps",
         fmt_bytes(kv_ours["grown"]), fmt_bytes(kv_hf), f"{kv_hf / kv_ours['grown']:.2f}x"),
    ]
    header = ("| measurement | kexaone | transformers (sdpa) | kexaone advantage (>1: kexaone better) |\n"
              "|---|---|---|---|\n")
    table = header + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)
    from kexaone.report.machine import cpu_model

    machine = (f"- CPU: {cpu_model()}, {os.cpu_count()} cores visible, {T} torch thread(s) per run\n"
               f"- torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}\n"
               f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; load average at start "
               f"{load_start[0]:.1f} (shared machine)\n"
               f"- measured matmul peak (2048^3, {T} thread(s)): fp32 {peak32 / 1e9:.1f} GFLOP/s, "
               f"bf16 {peak16 / 1e9:.1f} GFLOP/s\n"
               f"- model: `small` preset ({cfg.num_hidden_layers} layers LLLG, window {cfg.sliding_window}, "
               f"{cfg.num_experts} experts top-{cfg.num_experts_per_tok} + shared, vocab {cfg.vocab_size}), fp32; "
               f"training batch {args.train_batch} x {args.train_seq}, median of {2 * args.repeats} interleaved steps; "
               f"model FLOPs from kexaone.model.info.flops_per_token (training = 3 x forward)\n"
               f"- raw step times (s): " + "; ".join(f"{k}: {', '.join(f'{t:.2f}' for t in v)}" for k, v in runs.items())
               + "\n")
    train_ratio = tps["kexaone"] / tps["transformers"]
    pre_ratio = pre_hf["time"] / pre_ours["time"]
    mm_share = flops_per_token(cfg, 1) / flops_per_token(cfg, args.train_seq)
    notes = (
        "\nReading:\n"
        f"- targets: training step >= 3x transformers: {'met' if train_ratio >= 3 else 'NOT met'} "
        f"({train_ratio:.2f}x); 16K prefill >= 5x: {'met' if pre_ratio >= 5 else 'NOT met'} ({pre_ratio:.2f}x).\n"
        f"- at sequence {args.train_seq}, {mm_share:.0%} of the model FLOPs are matmuls (projections, experts, "
        "lm_head) that both implementations run through the same BLAS calls; kexaone's training gain comes from "
        "attention (O(T x window) sliding layers instead of full masked T x T, causal block skipping on global "
        "layers) and cannot exceed what attention costs transformers at this length. The gain grows with the "
        "sequence: see the prefill rows.\n"
        "- MFU uses the best single-matmul rate measured in this run as the peak; on a shared machine both move "
        "with the load, so MFU is indicative (ratios between the two implementations are the robust numbers).\n"
        "- the bf16 row is kexaone under CPU bf16 autocast (different precision, for reference only; the "
        "comparison with transformers is fp32 vs fp32).\n"
        "- transformers 5.x's DynamicCache also keeps only the window for sliding layers, so the KV bytes are "
        "equal when the length is known; kexaone's ring keeps 8 extra slots per sliding layer for speculative "
        "rollback, and its global layers grow by 1.25x when the length is not given.\n")
    doc = ("# Model benchmark: kexaone vs transformers (same weights)\n\n"
           "Produced by `benchmarks/bench_model.py`.\n\n" + machine + "\n" + table + notes)
    print(doc)
    if not args.no_write:
        from kexaone.utils.io import atomic_write_text

        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(RESULTS, doc)
        print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
