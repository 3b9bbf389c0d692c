"""Plain greedy decode at batch 1 against the machine's memory-bandwidth limit, and fp32 against bf16 weights
(speed and quality), in one run on the same weights.

- Bandwidth: the median time of summing a 512 MB fp32 tensor (a pure read) gives GB/s; the bytes a batch-1 decode
  step must read are the weights it touches (every dense weight, the lm_head, one embedding row, and per MoE layer
  the shared expert plus top-k of the routed experts: `active_weight_bytes`), so bytes / bandwidth is the step
  time a bandwidth-bound decoder would reach; the reported fraction is that limit over the measured step time.
- bf16: the same model cast to bf16 (weights and KV cache); decode tokens/s, and quality against fp32: max abs
  logit difference over a prompt (one forward), and the share of greedy tokens equal to fp32's (positions before the
  first disagreement, out of all generated).

Timings are medians over --repeats interleaved runs (the machine is shared). Model: the `small` preset shape with
random weights (vocab 8192). Prints a table and writes the "decode-dtype" section of benchmarks/results/engine.md.

    nice -n 10 python benchmarks/bench_decode_dtype.py [--repeats 5] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import machine, write_section  # noqa: E402

from kexaone.utils.cpu import cpu_has_native_bf16  # noqa: E402

from kexaone.config import KExaoneConfig  # noqa: E402


def read_bandwidth(repeats: int, mb: int = 512) -> float:
    """GB/s of a streaming read (sum of a large fp32 tensor, far larger than the caches)."""
    x = torch.ones(mb * (1 << 20) // 4)
    x.sum()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        ts.append(time.perf_counter() - t0)
    return x.numel() * 4 / statistics.median(ts) / 1e9


def active_weight_bytes(model) -> int:
    """Bytes of weights one batch-1 decode step reads (see the module docstring); MTP head excluded."""
    cfg = model.config
    total = 0
    for name, p in model.named_parameters():
        if name.startswith("mtp."):
            continue
        n = p.numel()
        if name.endswith("embed_tokens.weight"):
            n = p.shape[-1]  # one row
        elif ".experts." in name:  # stacked routed experts [E, ...]: top-k of them
            n = n // cfg.num_experts * cfg.num_experts_per_tok
        total += n * p.element_size()
    return total


def decode_time(engine, prompt, n):
    t0 = time.perf_counter()
    res = engine.generate(prompt, max_new_tokens=n, temperature=0, stop_token_ids=())
    return (time.perf_counter() - t0), res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from kexaone.engine import Engine
    from kexaone.model.transformer import KExaoneForCausalLM

    torch.manual_seed(0)
    cfg = KExaoneConfig.preset("small").replace(max_position_embeddings=4096)
    m32 = KExaoneForCausalLM(cfg).eval().requires_grad_(False)
    m16 = KExaoneForCausalLM(cfg).eval().requires_grad_(False)
    m16.load_state_dict(m32.state_dict())
    m16 = m16.to(torch.bfloat16)
    engines = {"float32": Engine(m32), "bfloat16": Engine(m16)}
    prompt = torch.randint(0, cfg.vocab_size, (32,), generator=torch.Generator().manual_seed(1)).tolist()
    n = args.new_tokens
    for e in engines.values():
        decode_time(e, prompt, 4)  # warm-up
    times = {k: [] for k in engines}
    outs = {}
    bw = []
    for _ in range(args.repeats):  # interleaved: the machine's load drifts
        bw.append(read_bandwidth(3))
        for k, e in engines.items():
            dt, res = decode_time(e, prompt, n)
            times[k].append(dt / len(res.tokens))
            outs[k] = res.tokens
    gbs = statistics.median(bw)
    with torch.inference_mode():
        ids = torch.tensor([prompt + outs["float32"]])
        l32 = m32(ids).logits.float()
        l16 = m16(ids).logits.float()
    max_diff = (l32 - l16).abs().max().item()
    agree = next((i for i, (a, b) in enumerate(zip(outs["float32"], outs["bfloat16"])) if a != b), n)
    rows = []
    for k, model in (("float32", m32), ("bfloat16", m16)):
        step = statistics.median(times[k])
        nbytes = active_weight_bytes(model)
        limit = nbytes / (gbs * 1e9)
        rows.append(f"| {k} | {1 / step:.1f} | {step * 1000:.2f} ms | {nbytes / 1e6:.1f} MB | {limit * 1000:.2f} ms | "
                    f"{limit / step:.1%} |")
    lines = [
        "## Decode vs the bandwidth limit, fp32 vs bf16 weights (bench_decode_dtype.py)",
        "",
        f"Machine: {machine(args.threads)}; measured read bandwidth {gbs:.1f} GB/s (median of {args.repeats}, "
        f"sum over 512 MB, same run). CPU flags: bf16 {'native' if cpu_has_native_bf16() else 'not native (no AVX512_BF16/AMX)'}.",
        "",
        f"`small` shape, random weights, batch 1, greedy, prompt 32 tokens, {n} new tokens; medians of "
        f"{args.repeats} interleaved runs.",
        "",
        "| weights | tokens/s | step | weights read per step | bandwidth-bound step | fraction of the limit |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"bf16 vs fp32 quality: max abs logit difference {max_diff:.3f} over {ids.shape[1]} positions; greedy tokens "
        f"equal to fp32's for the first {agree} of {n}. bf16 / fp32 speed: "
        f"{statistics.median(times['float32']) / statistics.median(times['bfloat16']):.2f}x.",
    ]
    text = "\n".join(lines)
    print(text)
    write_section("decode-dtype", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
