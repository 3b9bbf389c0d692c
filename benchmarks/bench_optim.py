"""Muon vs AdamW at tuned learning rates, and FP8 (emulated) vs bf16, on a small K-EXAONE model at a fixed token
budget; plus what each optimizer step costs.

Setup: a byte-level K-EXAONE MoE model (vocabulary 256 = UTF-8 bytes, so no tokenizer is involved: H 128, 4 layers
LLLG, dense layer 0, 8 experts top-2 + 1 shared, MTP), trained on English text from the shared training corpus
(`train/en.txt`) with the full recipe: total loss = CE + 0.05 MTP + 1e-4 aux, WSD schedule (10% warmup, 20% linear
decay), clipping at 1.0, expert-bias update after every step, bf16 autocast. Every run sees the same batches in the
same order. Evaluation: cross-entropy in bits per byte on held-out lines of the same file (never trained on).

The learning rate is swept for each optimizer over the same grid and the best run of each is compared (Muon's
update is scaled by 0.2*sqrt(max(rows, cols)) so the two share LR scales). Then, at Muon's best LR, the same run is
repeated with FP8 emulation (kexaone.train.fp8, e4m3 forward / e5m2 gradients, tensorwise scaling).

    nice -n 10 python benchmarks/bench_optim.py [--steps 300] [--batch 16] [--seq-len 128] [--lrs 1e-3,3e-3,1e-2,3e-2]
    nice -n 10 python benchmarks/bench_optim.py --lrs 3e-4 --no-fp8 --append     # extend the LR grid
    nice -n 10 python benchmarks/bench_optim.py --step-cost small                 # optimizer step cost only
    nice -n 10 python benchmarks/bench_optim.py --curves 1e-3,1e-2                # loss-curve plot

Prints markdown tables and writes them, with a machine description, to benchmarks/results/optim.md (the plot to
benchmarks/results/optim_curves.png). The recorded results used --steps 150 --batch 8 --seq-len 128.
Runs single-threaded by default (--threads): the machine is shared, and oversubscribed BLAS threads make small
matmuls tens of times slower; timings are ratios measured in the same process.
"""

from __future__ import annotations

import argparse
import datetime
import io
import math
import os
import time
from pathlib import Path

import torch

from kexaone.config import KExaoneConfig
from kexaone.model.balance import update_expert_biases
from kexaone.model.transformer import KExaoneForCausalLM
from kexaone.train.fp8 import apply_fp8
from kexaone.train.optim import build_optimizer, clip_grad_norm_
from kexaone.train.schedule import WSDSchedule, make_scheduler
from kexaone.report.machine import cpu_model
from kexaone.utils.io import atomic_write_bytes, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "optim.md"


def corpora_dir() -> Path:
    env = os.environ.get("KEXAONE_CORPORA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "corpora"




def load_bytes(path: Path, n_train: int, n_eval: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First `n_train` bytes of whole lines for training, the following `n_eval` bytes for evaluation."""
    if not path.is_file():
        raise FileNotFoundError(f"training text {path} not found (set KEXAONE_CORPORA to the corpora folder)")
    train, evals, size = [], [], 0
    with open(path, "rb") as f:
        for line in f:
            if size < n_train:
                train.append(line)
            elif size < n_train + n_eval:
                evals.append(line)
            else:
                break
            size += len(line)
    to_ids = lambda chunks: torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8).long()  # noqa: E731
    return to_ids(train), to_ids(evals)


def model_config() -> KExaoneConfig:
    return KExaoneConfig.preset("tiny").replace(
        vocab_size=256, hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        intermediate_size=384, moe_intermediate_size=64, num_experts=8, num_experts_per_tok=2, n_group=1,
        topk_group=1, sliding_window=64, pad_token_id=0, max_position_embeddings=1024)


def run(kind: str, lr: float, args: argparse.Namespace, train_ids: torch.Tensor, eval_BT: torch.Tensor,
        fp8: bool = False) -> dict:
    cfg = model_config()
    torch.manual_seed(0)
    model = KExaoneForCausalLM(cfg).train()
    if fp8:
        apply_fp8(model)
    opt = build_optimizer(model, kind=kind, lr=lr)
    sched = make_scheduler(opt, WSDSchedule(max_lr=lr, total_steps=args.steps, warmup_steps=max(1, args.steps // 10),
                                            decay_fraction=0.2))
    n_seq = (train_ids.numel() - 1) // args.seq_len
    seqs = train_ids[: n_seq * args.seq_len].view(n_seq, args.seq_len)
    order = torch.randperm(n_seq, generator=torch.Generator().manual_seed(1))
    t_fwd_bwd = t_opt = 0.0
    losses = []
    for step in range(args.steps):
        idx = order[(step * args.batch + torch.arange(args.batch)) % n_seq]
        x = seqs[idx]
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, labels=x)
        out.loss.backward()
        t1 = time.perf_counter()
        clip_grad_norm_(model, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        update_expert_biases(model, cfg.bias_update_rate)
        t2 = time.perf_counter()
        t_fwd_bwd += t1 - t0
        t_opt += t2 - t1
        losses.append(out.ce_loss.item())
        if not math.isfinite(losses[-1]):
            break
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ce = sum(model(b, labels=b, compute_mtp=False).ce_loss.item() for b in eval_BT.split(16)) / len(
            eval_BT.split(16))
    return {"kind": kind, "lr": lr, "fp8": fp8, "eval_bpb": ce / math.log(2), "train_ce_last": losses[-1],
            "fwd_bwd_s": t_fwd_bwd / len(losses), "opt_s": t_opt / len(losses), "curve": losses}


def lr_rows(results: list[dict], lrs: list[float]) -> list[str]:
    rows = ["| LR | AdamW eval bits/byte | Muon eval bits/byte | Muon / AdamW |", "|---:|---:|---:|---:|"]
    for lr in lrs:
        a = next(r for r in results if r["kind"] == "adamw" and r["lr"] == lr)
        m = next(r for r in results if r["kind"] == "muon" and r["lr"] == lr)
        rows.append(f"| {lr:g} | {a['eval_bpb']:.4f} | {m['eval_bpb']:.4f} | {m['eval_bpb'] / a['eval_bpb']:.3f} |")
    return rows


def append_results(results: list[dict], lrs: list[float], args: argparse.Namespace) -> None:
    """Add more LRs of the same setup to an existing results file (the grid is extended, nothing is rewritten)."""
    if not RESULTS.is_file():
        raise FileNotFoundError(f"--append needs an earlier {RESULTS}")
    lines = ["", f"Additional LRs, same setup ({args.steps} steps x {args.batch} x {args.seq_len}), measured "
             f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}:", "",
             *lr_rows(results, lrs)]
    text = RESULTS.read_text(encoding="utf-8").rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(RESULTS, text)
    print(f"appended to {RESULTS}")


def step_cost(preset: str, args: argparse.Namespace, repeats: int = 3) -> None:
    """Time `optimizer.step()` alone for both optimizers on a preset (random gradients), interleaved, median."""
    import statistics

    from kexaone.train.muon import MuonAdamW
    from kexaone.train.optim import parameter_groups

    cfg = KExaoneConfig.preset(preset)
    torch.manual_seed(0)
    model = KExaoneForCausalLM(cfg)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opts = {"adamw": build_optimizer(model, kind="adamw"), "muon": build_optimizer(model, kind="muon"),
            "muon (bf16 Newton-Schulz)": build_optimizer(model, kind="muon", ns_dtype="bfloat16")}
    times: dict[str, list[float]] = {k: [] for k in opts}
    for kind, opt in opts.items():
        opt.step()  # allocate state
    for _ in range(repeats):
        for kind, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[kind].append(time.perf_counter() - t0)
    # Newton-Schulz FLOPs: per iteration 2r^2c (X X^T) + 2r^3 (A A) + 2r^2c (B X) per matrix of r <= c
    flops = 0
    for tag, items in parameter_groups(model).items():
        if not tag.startswith("muon"):
            continue
        split = 2 if tag == "muon_split2" else 1
        for _, p in items:
            n = (p.shape[0] if p.ndim == 3 else 1) * split
            r, c = sorted((p.shape[-2] // split, p.shape[-1]))
            flops += n * 5 * (4 * r * r * c + 2 * r ** 3)
    assert isinstance(opts["muon"], MuonAdamW)
    a = statistics.median(times["adamw"])
    n_params = sum(p.numel() for p in model.parameters())
    lines = ["", f"One optimizer step on the `{preset}` preset ({n_params:,} parameters, random gradients, "
             f"{args.threads} thread(s), median of {repeats}, "
             f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}):", "",
             "| optimizer | step s | Newton-Schulz GFLOP | Muon / AdamW |", "|---|---:|---:|---:|",
             f"| adamw | {a:.3f} | 0 | 1.00 |",
             *(f"| {k} | {statistics.median(times[k]):.3f} | {flops / 1e9:.1f} | {statistics.median(times[k]) / a:.2f} |"
               for k in opts if k != "adamw"), "",
             "Muon's cost grows with the parameter count, not with the batch: it is amortised over the tokens of a "
             "step (larger batches or gradient accumulation make it relatively cheaper). On CPUs with bf16 matmul "
             "units, `build_optimizer(..., ns_dtype=\"bfloat16\")` runs the iteration in bf16, as reference Muon "
             "implementations do on GPU (fp32 is the CPU default)."]
    text = RESULTS.read_text(encoding="utf-8").rstrip("\n") + "\n" + "\n".join(lines) + "\n" \
        if RESULTS.is_file() else "\n".join(lines).lstrip("\n") + "\n"
    print(text)
    atomic_write_text(RESULTS, text)
    print(f"appended to {RESULTS}")


def plot_curves(runs: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = RESULTS.with_name("optim_curves.png")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    w = 10
    for r in runs:
        c = r["curve"]
        smooth = [sum(c[max(0, i - w + 1):i + 1]) / len(c[max(0, i - w + 1):i + 1]) / math.log(2) for i in range(len(c))]
        label = f"{'FP8 ' if r['fp8'] else ''}{r['kind']} lr {r['lr']:g} (eval {r['eval_bpb']:.3f} bits/byte)"
        ax.plot(range(1, len(c) + 1), smooth, label=label, linestyle="--" if r["fp8"] else "-")
    ax.set_xlabel(f"step ({args.batch} x {args.seq_len} bytes each)")
    ax.set_ylabel(f"training CE, bits/byte ({w}-step mean)")
    ax.set_title("Byte-level K-EXAONE MoE on train/en.txt: Muon vs AdamW, FP8 vs bf16")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(out, buf.getvalue())
    for r in runs:
        print(f"{'fp8 ' if r['fp8'] else ''}{r['kind']} lr {r['lr']:g}: eval {r['eval_bpb']:.4f} bits/byte")
    print(f"written to {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lrs", default="1e-3,3e-3,1e-2,3e-2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-fp8", action="store_true", help="skip the FP8-vs-bf16 run")
    ap.add_argument("--step-cost", metavar="PRESET",
                    help="only measure one optimizer step (Muon vs AdamW) on a model preset and append the table")
    ap.add_argument("--curves", metavar="ADAMW_LR,MUON_LR",
                    help="only rerun AdamW, Muon and Muon+FP8 at these LRs and plot their training curves to "
                         "results/optim_curves.png")
    ap.add_argument("--append", action="store_true",
                    help="extend the LR grid of an earlier run: append these LRs' table to the results file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.step_cost:
        step_cost(args.step_cost, args)
        return
    lrs = [float(v) for v in args.lrs.split(",")]
    if args.curves:
        lrs = [float(v) for v in args.curves.split(",")]
        if len(lrs) != 2:
            raise ValueError(f"--curves takes two LRs (AdamW,Muon), got {args.curves!r}")
    tokens = args.steps * args.batch * args.seq_len
    train_ids, eval_ids = load_bytes(corpora_dir() / "train" / "en.txt", n_train=tokens + args.seq_len,
                                     n_eval=64 * args.seq_len + 1)
    n_eval = (eval_ids.numel()) // args.seq_len
    eval_BT = eval_ids[: n_eval * args.seq_len].view(n_eval, args.seq_len)
    print(f"{tokens:,} training tokens per run (bytes of train/en.txt), {eval_BT.numel():,} held-out bytes")

    if args.curves:
        plot_curves([run("adamw", lrs[0], args, train_ids, eval_BT), run("muon", lrs[1], args, train_ids, eval_BT),
                     run("muon", lrs[1], args, train_ids, eval_BT, fp8=True)], args)
        return
    results = []
    for lr in lrs:  # interleave the optimizers so machine noise hits both alike
        for kind in ("adamw", "muon"):
            r = run(kind, lr, args, train_ids, eval_BT)
            results.append(r)
            print(f"{kind:5s} lr={lr:g}: eval {r['eval_bpb']:.4f} bits/byte, fwd+bwd {r['fwd_bwd_s'] * 1e3:.0f} ms, "
                  f"optimizer {r['opt_s'] * 1e3:.1f} ms per step", flush=True)
    if args.append:
        append_results(results, lrs, args)
        return
    best = {k: min((r for r in results if r["kind"] == k), key=lambda r: r["eval_bpb"]) for k in ("adamw", "muon")}
    fp8_run = None
    if not args.no_fp8:
        fp8_run = run("muon", best["muon"]["lr"], args, train_ids, eval_BT, fp8=True)
        print(f"fp8 muon lr={fp8_run['lr']:g}: eval {fp8_run['eval_bpb']:.4f} bits/byte", flush=True)

    lines = ["# Optimizers: Muon vs AdamW, FP8 vs bf16", "",
             f"Machine: {cpu_model()}, {os.cpu_count()} cores (torch threads {args.threads}), torch {torch.__version__}, "
             f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.", "",
             f"Byte-level K-EXAONE MoE (H 128, 4 layers, 8 experts top-2 + shared, MTP; "
             f"{sum(p.numel() for p in KExaoneForCausalLM.from_config(model_config(), device='meta').parameters()):,} "
             f"parameters), {args.steps} steps x {args.batch} x {args.seq_len} = {tokens:,} tokens of train/en.txt per "
             "run, WSD (10% warmup, 20% decay), bf16 autocast, same batches for every run. Eval: held-out bits/byte.",
             "", *lr_rows(results, lrs)]
    a, m = best["adamw"], best["muon"]
    winner = "Muon" if m["eval_bpb"] < a["eval_bpb"] else "AdamW"
    lines += ["", f"Best AdamW: lr {a['lr']:g}, {a['eval_bpb']:.4f} bits/byte. Best Muon: lr {m['lr']:g}, "
              f"{m['eval_bpb']:.4f} bits/byte. {winner} wins at tuned LRs (Muon / AdamW = "
              f"{m['eval_bpb'] / a['eval_bpb']:.3f}).", "",
              "Cost per training step (mean over the run, same process):", "",
              "| optimizer | fwd+bwd ms | optimizer step ms (incl. clip, bias update) | optimizer / fwd+bwd |",
              "|---|---:|---:|---:|"]
    for r in (a, m):
        lines.append(f"| {r['kind']} (lr {r['lr']:g}) | {r['fwd_bwd_s'] * 1e3:.0f} | {r['opt_s'] * 1e3:.1f} | "
                     f"{r['opt_s'] / r['fwd_bwd_s']:.2f} |")
    if fp8_run is not None:
        lines += ["", f"FP8 emulation (e4m3/e5m2, tensorwise) vs bf16, Muon lr {m['lr']:g}:", "",
                  "| precision | eval bits/byte | final train CE (nats) | fwd+bwd ms |", "|---|---:|---:|---:|",
                  f"| bf16 | {m['eval_bpb']:.4f} | {m['train_ce_last']:.4f} | {m['fwd_bwd_s'] * 1e3:.0f} |",
                  f"| fp8 (emulated) | {fp8_run['eval_bpb']:.4f} | {fp8_run['train_ce_last']:.4f} | "
                  f"{fp8_run['fwd_bwd_s'] * 1e3:.0f} |", "",
                  f"FP8 / bf16 eval loss ratio: {fp8_run['eval_bpb'] / m['eval_bpb']:.4f}. Emulation quantises in "
                  "software, so its time says nothing about FP8 hardware speed."]
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, table)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
