"""MoE layer speed: kexaone's dropless grouped execution vs transformers' exaone_moe expert loop, same weights.

Measures one sparse layer at the `small` preset width (H 256, expert SwiGLU 128, 1 shared expert) with 32 experts
top-2 (the small preset) and 128 experts top-8 (K-EXAONE's routing), on batches of 4 x 1024 tokens:
training step (forward + backward) and forward only, tokens/s. transformers' own `grouped_mm` experts backend is
measured too, for reference. Runs are interleaved (A, B, C, A, B, C, ...) and the median is kept, because this
machine is shared and noisy; ratios are what to read.

A second part (`--parts bucket`, results/moe_bucket.md) sweeps `CPU_LOWP_ROW_BUCKET` (each expert's rows rounded
up to a multiple of it in bf16 on CPU, so oneDNN reuses its per-shape kernels) on a bf16 training step with fresh
tokens, so fresh routing, every step, as in training: the first part reuses one batch, whose shapes are cached
after the warm-up.

    nice -n 10 python benchmarks/bench_moe.py [--parts compare,bucket] [--tokens 4096] [--repeats 5] [--threads N]
        [--buckets 1,16,32,64,128]

Prints markdown tables and writes them, with a machine description, to benchmarks/results/moe.md and moe_bucket.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from kexaone.config import KExaoneConfig
from kexaone.model.moe import CPU_LOWP_ROW_BUCKET as _DEFAULT_BUCKET
from kexaone.model.moe import KExaoneMoE
from kexaone.report.machine import cpu_model
from kexaone.utils.io import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "moe.md"
RESULTS_BUCKET = RESULTS.with_name("moe_bucket.md")




def build(cfg: KExaoneConfig):
    """kexaone layer and transformers layers (eager loop, grouped_mm backend) holding the same weights."""
    from transformers import ExaoneMoeConfig
    from transformers.models.exaone_moe.modeling_exaone_moe import ExaoneMoeSparseMoEBlock

    torch.manual_seed(0)
    ours = KExaoneMoE(cfg).train()
    with torch.no_grad():
        ours.gate.e_score_correction_bias.normal_(0, 1e-3)
    hf_dict = {k: v for k, v in cfg.to_hf_dict().items() if k not in ("kexaone", "architectures", "model_type")}
    layers = {"kexaone grouped": ours}
    for impl in ("eager", "grouped_mm"):
        hc = ExaoneMoeConfig(**hf_dict)
        hc._experts_implementation = impl
        ref = ExaoneMoeSparseMoEBlock(hc).train()
        ref.load_state_dict(ours.state_dict())
        layers[f"transformers {impl}"] = ref
    return layers


def train_step(layer, x):
    y = layer(x)
    y.float().square().mean().backward()


@torch.no_grad()
def forward_only(layer, x):
    layer(x)


def measure(layers: dict, x: torch.Tensor, fn, repeats: int, autocast: bool) -> dict[str, tuple[float, float]]:
    """Median (wall seconds, process CPU seconds) per implementation. CPU time is less sensitive to other jobs
    on a shared machine (time spent descheduled is not counted); wall time is what a user waits."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in layers}
    for _ in range(repeats + 1):  # the first round is a warm-up
        for name, layer in layers.items():
            layer.zero_grad(set_to_none=True)
            x.grad = None
            w0, c0 = time.perf_counter(), time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                fn(layer, x)
            times[name].append((time.perf_counter() - w0, time.process_time() - c0))
    return {name: (statistics.median(t[0] for t in ts[1:]), statistics.median(t[1] for t in ts[1:]))
            for name, ts in times.items()}


def bucket_sweep(cfg: KExaoneConfig, b: int, t: int, buckets: list[int],
                 repeats: int) -> list[tuple[int, float, float]]:
    """(bucket, median wall s, median CPU s) of one bf16-autocast forward + backward of kexaone's layer, fresh
    tokens every step (new routing, new per-expert row counts); buckets interleaved, 3 warm-up steps each."""
    import kexaone.model.moe as moe_mod

    layer = build(cfg)["kexaone grouped"]
    gen = torch.Generator().manual_seed(1)
    times: dict[int, list[tuple[float, float]]] = {k: [] for k in buckets}
    for step in range(repeats + 3):
        for bucket in buckets:
            moe_mod.CPU_LOWP_ROW_BUCKET = bucket
            x = torch.randn(b, t, cfg.hidden_size, generator=gen, requires_grad=True)
            layer.zero_grad(set_to_none=True)
            w0, c0 = time.perf_counter(), time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                train_step(layer, x)
            if step >= 3:
                times[bucket].append((time.perf_counter() - w0, time.process_time() - c0))
    moe_mod.CPU_LOWP_ROW_BUCKET = _DEFAULT_BUCKET
    return [(k, statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)) for k, ts in times.items()]


def check_same_output(layers: dict, x: torch.Tensor) -> float:
    with torch.no_grad():
        outs = [layer(x) for layer in layers.values()]
    return max(float((o - outs[0]).abs().max()) for o in outs[1:])


def machine_line() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")


def compare_part(setups, b: int, t: int, args) -> str:
    rows = []
    for label, cfg in setups:
        layers = build(cfg)
        x = torch.randn(b, t, cfg.hidden_size, requires_grad=True)
        err = check_same_output(layers, x)
        for mode, fn, autocast in (("train fwd+bwd fp32", train_step, False),
                                   ("train fwd+bwd bf16 autocast", train_step, True),
                                   ("forward fp32", forward_only, False)):
            try:
                med = measure(layers, x, fn, args.repeats, autocast)
            except RuntimeError as e:  # a backend that cannot run this mode on this machine
                print(f"skipped {label} / {mode}: {e}")
                continue
            base_wall, base_cpu = med["transformers eager"]
            for name, (wall, cpu) in med.items():
                rows.append((label, mode, name, b * t / wall, base_wall / wall, base_cpu / cpu, err))
            print(f"{label:40s} {mode:28s} "
                  + "  ".join(f"{n}: {b * t / w:,.0f} tok/s" for n, (w, _) in med.items()), flush=True)
    header = ["setup", "mode", "implementation", "tokens/s (wall)", "speed-up vs transformers eager (wall)",
              "speed-up (CPU time)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, mode, name, tps, ratio_wall, ratio_cpu, _ in rows:
        lines.append(f"| {label} | {mode} | {name} | {tps:,.0f} | {ratio_wall:.2f}x | {ratio_cpu:.2f}x |")
    max_err = max((r[6] for r in rows), default=float("nan"))
    small = setups[0][1]
    return (
        "# MoE layer: kexaone grouped vs transformers exaone_moe\n\n"
        f"One sparse layer at `small` width (H {small.hidden_size}, expert SwiGLU {small.moe_intermediate_size}, "
        f"1 shared expert), batch {b} x {t} tokens, same weights in every implementation "
        f"(max output difference {max_err:.1e}). Median of {args.repeats} interleaved runs after a warm-up.\n\n"
        f"Machine: {machine_line()}. Shared machine: read the ratios, not the absolute numbers.\n\n"
        f"Command: `nice -n 10 python benchmarks/bench_moe.py --parts compare --tokens {args.tokens} "
        f"--repeats {args.repeats}`\n\n" + "\n".join(lines) + "\n")


def bucket_part(setups, b: int, t: int, args) -> str:
    buckets = [int(v) for v in args.buckets.split(",")]
    lines = ["| setup | row bucket | tokens/s (wall) | tokens/s (CPU time) | vs bucket 1 (CPU time) |",
             "|---|---|---|---|---|"]
    for label, cfg in setups:
        sweep = bucket_sweep(cfg, b, t, buckets, args.repeats)
        unpadded = next((b * t / cpu for bucket, _, cpu in sweep if bucket == 1), float("nan"))
        for bucket, wall, cpu in sweep:
            print(f"{label:40s} bucket {bucket:4d}: {b * t / wall:,.0f} tok/s", flush=True)
            lines.append(f"| {label} | {bucket}{' (default)' if bucket == _DEFAULT_BUCKET else ''} | "
                         f"{b * t / wall:,.0f} | {b * t / cpu:,.0f} | {b * t / cpu / unpadded:.2f}x |")
    return (
        "# MoE layer: row bucket of the CPU bf16 expert matmuls\n\n"
        f"bf16-autocast forward + backward of kexaone's layer, batch {b} x {t} tokens, fresh tokens every step (so "
        "fresh routing and new per-expert row counts, as in training), each expert's rows rounded up to a multiple "
        "of the bucket (1 = unpadded). oneDNN builds a kernel for every new matmul shape; the bucket bounds the "
        f"shapes. Median of {args.repeats} steps after 3 warm-up steps, buckets interleaved.\n\n"
        f"Machine: {machine_line()}. Shared machine: read the ratios, not the absolute numbers.\n\n"
        f"Command: `nice -n 10 python benchmarks/bench_moe.py --parts bucket --tokens {args.tokens} "
        f"--repeats {args.repeats} --buckets {args.buckets}`\n\n" + "\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="compare,bucket",
                    help="compare (vs transformers, results/moe.md), bucket (row-bucket sweep, results/moe_bucket.md)")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per batch (batch 4 x tokens/4)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--buckets", default="1,16,32,64,128", help="CPU bf16 expert row buckets to sweep")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write benchmarks/results/")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    small = KExaoneConfig.preset("small")
    setups = [("32 experts, top-2 (small preset)", small),
              ("128 experts, top-8 (K-EXAONE routing)", small.replace(num_experts=128, num_experts_per_tok=8))]
    b = 4
    t = args.tokens // b
    for part, fn, path in (("compare", compare_part, RESULTS), ("bucket", bucket_part, RESULTS_BUCKET)):
        if part not in args.parts.split(","):
            continue
        text = fn(setups, b, t, args)
        print("\n" + text)
        if not args.no_write:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
