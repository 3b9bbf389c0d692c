"""Log-prob gap between the engine's forward and the training forward on the same sampled tokens.

Samples continuations with `Engine.generate_batch` (plain and MTP speculative, temperature 1, top-p 0.95, random
weights, fixed seeds) and compares each token's `logprobs` (the engine's cached decode forward with its no-grad
inference paths) with `kexaone.model.scoring.token_logprobs` on prompt + tokens (one uncached forward with autograd
on, as training runs it), and checks that `Engine(..., exact_logprobs=True)` closes the gap to exactly zero.

    nice -n 10 python benchmarks/bench_logprob_gap.py [--presets tiny,small] [--dtypes float32,bfloat16] [--write]

Prints a markdown table (max and mean absolute difference in nats) and, with --write, records it with the machine
description as the "logprob-gap" section of benchmarks/results/engine.md. It measures numbers, not speed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def gap(preset: str, dtype: torch.dtype, speculative: str | None, new_tokens: int, exact: bool) -> tuple[float, float]:
    from kexaone.config import KExaoneConfig
    from kexaone.engine import Engine, SamplingParams
    from kexaone.model.scoring import token_logprobs
    from kexaone.model.transformer import KExaoneForCausalLM

    torch.manual_seed(0)
    cfg = KExaoneConfig.preset(preset)
    model = KExaoneForCausalLM(cfg).eval().to(dtype)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in (7, 19, 33, 50)]
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, top_p=0.95, seed=3, stop_token_ids=())
    res = Engine(model, exact_logprobs=exact).generate_batch(prompts, params=params, speculative=speculative,
                                                             draft_tokens=2)
    diffs = []
    for p, r in zip(prompts, res):
        ref = token_logprobs(model, torch.tensor([p + r.tokens]))[0, len(p):]
        diffs.append((torch.tensor(r.logprobs) - ref).abs())
    d = torch.cat(diffs)
    return float(d.max()), float(d.mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--write", action="store_true", help="record the table in benchmarks/results/engine.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = ["| preset | dtype | path | max abs (nats) | mean abs (nats) | exact_logprobs=True max abs |",
            "|---|---|---|---|---|---|"]
    for preset in args.presets.split(","):
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            for spec in (None, "mtp"):
                mx, mean = gap(preset, dtype, spec, args.new_tokens, exact=False)
                ex, _ = gap(preset, dtype, spec, args.new_tokens, exact=True)
                rows.append(f"| {preset} | {dtype_name} | {spec or 'plain'} | {mx:.2e} | {mean:.2e} | {ex:.1e} |")
                print(rows[-1], file=sys.stderr)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_decode import publish  # noqa: E402

    publish("\n".join(rows), args.write, "logprob-gap", "Engine vs training forward log-probs (bench_logprob_gap.py)",
            f"4 prompts (7-50 tokens) x {args.new_tokens} sampled tokens, temperature 1, top-p 0.95, random weights; "
            "difference between `GenerationResult.logprobs` and `token_logprobs` on the same tokens.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
