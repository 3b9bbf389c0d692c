"""Plain greedy decode at batch 1 against the machine's memory-bandwidth limit, and fp32 against bf16 weights
(speed and quality), in one run on the same weights.

- Bandwidth: the median time of summing a 512 MB fp32 tensor (a pure read) gives GB/s; the bytes a batch-1 decode
  step must read are the weights it touches (every dense weight, the lm_head, one embedding row, and per MoE layer
  the shared expert plus top-k of the routed experts: `active_weight_bytes`), so bytes / bandwidth is the step
  time a bandwidth-bound decoder would reach; the reported fraction is that limit over the measured step time.
- bf16: the same model cast to bf16 (weights and KV cache); int8: its nn.Linear weights quantized weight-only
  (kexaone.engine.quantize, when torchao is installed). For each, decode tokens/s and quality against fp32: max abs
  logit difference over a prompt (one forward), and the share of greedy tokens equal to fp32's (positions before the
  first disagreement, out of all generated).

Timings are medians over --repeats interleaved runs (the machine is shared). Model: the `small` preset shape with
random weights (vocab 8192), or a trained model with --model DIR. Prints a table and writes the "decode-dtype" section of benchmarks/results/engine.md.

    nice -n 10 python benchmarks/bench_decode_dtype.py [--repeats 5] [--new-tokens 64] [--model DIR]
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
        size = p.element_size() if type(p) in (torch.nn.Parameter, torch.Tensor) else 1  # int8 (scales not counted)
        if name.endswith("embed_tokens.weight"):
            n = p.shape[-1]  # one row
        elif ".experts." in name:  # stacked routed experts [E, ...]: top-k of them
            n = n // cfg.num_experts * cfg.num_experts_per_tok
        total += n * size
    return total


def decode_time(engine, prompt, n):
    t0 = time.perf_counter()
    res = engine.generate(prompt, max_new_tokens=n, temperature=0, stop_token_ids=())
    return (time.perf_counter() - t0), res


def load_variants(model_dir: str | None):
    """{name: model} on the same weights: float32, bfloat16, and int8 (weight-only, torchao) when installed."""
    import copy

    from kexaone.model.transformer import KExaoneForCausalLM

    if model_dir:
        m32 = KExaoneForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    else:
        torch.manual_seed(0)
        m32 = KExaoneForCausalLM(KExaoneConfig.preset("small").replace(max_position_embeddings=4096))
    m32 = m32.eval().requires_grad_(False)
    variants = {"float32": m32, "bfloat16": copy.deepcopy(m32).to(torch.bfloat16)}
    try:
        from kexaone.engine.quantize import quantize_weights

        q = copy.deepcopy(m32)
        quantize_weights(q, "int8")
        variants["int8 (weight-only)"] = q
    except ImportError as e:
        print(f"int8 row skipped: {e}", file=sys.stderr)
    return variants


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=None, help="a trained model directory (default: random `small` weights)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from kexaone.engine import Engine

    variants = load_variants(args.model)
    m32 = variants["float32"]
    engines = {k: Engine(m) for k, m in variants.items()}
    vocab = m32.config.vocab_size
    prompt = torch.randint(0, vocab, (32,), generator=torch.Generator().manual_seed(1)).tolist()
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
    ids = torch.tensor([prompt + outs["float32"]])
    with torch.inference_mode():
        logits = {k: m(ids).logits.float() for k, m in variants.items()}
    rows, quality = [], []
    for k, model in variants.items():
        step = statistics.median(times[k])
        nbytes = active_weight_bytes(model)
        limit = nbytes / (gbs * 1e9)
        rows.append(f"| {k} | {1 / step:.1f} | {step * 1000:.2f} ms | {nbytes / 1e6:.1f} MB | {limit * 1000:.2f} ms | "
                    f"{limit / step:.1%} | {statistics.median(times['float32']) / step:.2f}x |")
        if k != "float32":
            agree = next((i for i, (a, b) in enumerate(zip(outs["float32"], outs[k])) if a != b), n)
            quality.append(f"{k} vs fp32: max abs logit difference {(logits[k] - logits['float32']).abs().max():.3f} "
                           f"over {ids.shape[1]} positions (fp32 logits span up to {logits['float32'].abs().max():.1f}); "
                           f"greedy tokens equal to fp32's for the first {agree} of {n}.")
    weights = f"`{args.model}`" if args.model else "`small` shape, random weights"
    lines = [
        "## Decode vs the bandwidth limit, fp32 vs bf16 vs int8 weights (bench_decode_dtype.py)",
        "",
        f"Machine: {machine(args.threads)}; measured read bandwidth {gbs:.1f} GB/s (median of {args.repeats}, "
        f"sum over 512 MB, same run). CPU flags: bf16 {'native' if cpu_has_native_bf16() else 'not native (no AVX512_BF16/AMX)'}.",
        "",
        f"{weights}, batch 1, greedy, prompt 32 tokens, {n} new tokens; medians of {args.repeats} interleaved runs. "
        "int8 = kexaone.engine.quantize (torchao, every nn.Linear; routed experts stay fp32).",
        "",
        "| weights | tokens/s | step | weights read per step | bandwidth-bound step | fraction of the limit | "
        "speed vs fp32 |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        *[f"- {q}" for q in quality],
    ]
    text = "\n".join(lines)
    print(text)
    write_section("decode-dtype", text)
    return 0

if __name__ == "__main__":
    sys.exit(main())
