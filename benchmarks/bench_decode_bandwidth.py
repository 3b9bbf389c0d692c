"""Plain greedy decode of kexaone and of `transformers` against the machine's memory-bandwidth limit, by batch size.

A decode step must read every weight it uses once: the dense weights and the lm_head, one embedding row per row of
the batch, and per MoE layer the routed experts that at least one row chose in that step (counted with forward
hooks on a run of the same prompts; the prefill is not counted). Bytes / measured read bandwidth is the step time
of a decoder bound by memory alone; each implementation's tokens/s is reported as a fraction of that limit. The
KV cache read is left out (under 1% of the weights here).

It answers where a decode speed-up over `transformers` can still come from: 1 / (transformers' fraction) is the
most any implementation could gain over it on this machine.

Same weights for both (a randomly initialised `small` shape saved once and loaded by both), one thread, medians of
--repeats interleaved runs (the machine is shared: read the ratios). Writes the "decode-bandwidth" section of
benchmarks/results/engine.md.

    nice -n 10 python benchmarks/bench_decode_bandwidth.py [--batch-sizes 1 8 16] [--repeats 5] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import machine, run_kexaone, run_transformers, write_section  # noqa: E402
from bench_decode_dtype import read_bandwidth  # noqa: E402

from kexaone.config import KExaoneConfig  # noqa: E402


def routed_experts_per_step(engine, prompts, n: int) -> float:
    """Mean number of distinct routed experts per MoE layer per decode step (one token per row) over a greedy run."""
    from kexaone.model.moe import GroupedExperts

    rows, counts = len(prompts), []

    def hook(_mod, args):
        idx = args[1]
        if idx.shape[0] == rows:  # a decode step (the prefill has rows x prompt length tokens)
            counts.append(len(set(idx.reshape(-1).tolist())))

    handles = [m.register_forward_pre_hook(hook) for m in engine.model.modules() if isinstance(m, GroupedExperts)]
    try:
        run_kexaone(engine, prompts, n, None, 0, sampled=False)
    finally:
        for h in handles:
            h.remove()
    return statistics.fmean(counts)


def step_weight_bytes(model, batch: int, experts_per_layer: float) -> float:
    """Bytes of weights one decode step of `batch` rows reads (see the module docstring); MTP head excluded."""
    total = 0.0
    for name, p in model.named_parameters():
        if name.startswith("mtp."):
            continue
        if name.endswith("embed_tokens.weight"):
            total += batch * p.shape[-1] * p.element_size()
        elif ".experts." in name:  # stacked routed experts [E, ...]
            total += p[0].numel() * p.element_size() * experts_per_layer
        else:
            total += p.numel() * p.element_size()
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from kexaone.engine import Engine
    from kexaone.model.transformer import KExaoneForCausalLM

    with tempfile.TemporaryDirectory(prefix="kexaone-bench-bw-") as tmp:
        torch.manual_seed(0)
        KExaoneForCausalLM(KExaoneConfig.preset("small")).save_pretrained(tmp)
        engine = Engine.from_pretrained(tmp, tokenizer=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from transformers import AutoModelForCausalLM

            hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    V, n = engine.config.vocab_size, args.new_tokens
    gen = torch.Generator().manual_seed(1)
    rows, bw = [], []
    for B in args.batch_sizes:
        prompts = [torch.randint(1, V, (args.prompt_len - (3 * i) % 9,), generator=gen).tolist() for i in range(B)]
        experts = routed_experts_per_step(engine, prompts, n)
        run_transformers(hf, prompts, 4, sampled=False)  # warm-up
        ours, ref, same = [], [], None
        for _ in range(args.repeats):  # interleaved, bandwidth measured between them: the load drifts
            bw.append(read_bandwidth(3))
            tps, out, _ = run_kexaone(engine, prompts, n, None, 0, sampled=False)
            ours.append(tps)
            tps_hf, out_hf = run_transformers(hf, prompts, n, sampled=False)
            ref.append(tps_hf)
            same = sum(a == b for a, b in zip(out, out_hf))
        rows.append((B, experts, statistics.median(ours), statistics.median(ref), same))
        print(f"batch {B}: kexaone {rows[-1][2]:.1f} tok/s, transformers {rows[-1][3]:.1f} tok/s", file=sys.stderr)
    gbs = statistics.median(bw)
    lines = [
        "## Decode vs the bandwidth limit by batch size, kexaone vs transformers (bench_decode_bandwidth.py)",
        "",
        f"Machine: {machine(args.threads)}; measured read bandwidth {gbs:.1f} GB/s (median of {len(bw)}, sum over "
        f"512 MB, between the timed runs).",
        "",
        f"`small` shape, random weights, fp32, vocabulary {V}; greedy, prompts of ~{args.prompt_len} tokens, {n} new "
        f"tokens per row; medians of {args.repeats} interleaved runs. Weights read per step: dense weights, lm_head, "
        "one embedding row per row, and the routed experts chosen by at least one row in that step (mean of the "
        "distinct experts per MoE layer per step, counted on the same prompts).",
        "",
        "| batch | distinct routed experts per layer per step | weights read per step | bandwidth-bound tokens/s | "
        "kexaone tokens/s | kexaone fraction of the limit | transformers tokens/s | transformers fraction | "
        "kexaone / transformers | most any decoder could gain over transformers | same tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for B, experts, ours, ref, same in rows:
        nbytes = step_weight_bytes(engine.model, B, experts)
        limit = B * gbs * 1e9 / nbytes
        lines.append(f"| {B} | {experts:.1f} of {engine.config.num_experts} | {nbytes / 1e6:.1f} MB | {limit:.0f} | "
                     f"{ours:.1f} | {ours / limit:.1%} | {ref:.1f} | {ref / limit:.1%} | {ours / ref:.2f}x | "
                     f"{limit / ref:.1f}x | {same}/{B} rows |")
    text = "\n".join(lines)
    print(text)
    write_section("decode-bandwidth", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
