"""Decode speed and KV-cache memory of the kexaone engine.

1. Decode tokens/s, same weights, one run: kexaone plain greedy vs kexaone MTP self-speculative greedy vs
   `transformers` `generate` (AutoModelForCausalLM on the same saved directory), batch 1 and batch 8. The MTP
   head must be trained for drafts to be accepted: without `--model`, the script trains a `small`-width model
   briefly on a low-entropy synthetic token stream (a Markov chain: each token has a preferred successor, taken
   with probability 0.9), main and MTP losses together, and saves it (cached under /tmp by settings). Greedy
   outputs are compared: MTP must equal plain exactly, and transformers should agree (it is the reference).
2. KV-cache bytes at 8K, 32K and 64K context for the `small` preset (hybrid LLLG) vs the same model with every
   layer global, measured with `KVCache.nbytes()` on caches filled to that length (bf16), next to the analytic
   figure of kexaone.model.info, plus the analytic figure for the released 236B configuration.

Runs are interleaved (plain, MTP, transformers, plain, ...) and the median kept: the machine is shared and noisy,
read the ratios.

    nice -n 10 python benchmarks/bench_decode.py [--model DIR] [--new-tokens 64] [--repeats 3] [--threads 1]

Prints markdown tables and writes them, with a machine description, into benchmarks/results/engine.md (its
"decode" section; bench_server.py writes the "server" section).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from kexaone.config import KExaoneConfig
from kexaone.report.machine import cpu_model
from kexaone.utils.io import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "engine.md"


# ---------------------------------------------------------------------------------------------------- reporting


def machine(threads: int) -> str:
    return (f"{cpu_model()}, {os.cpu_count()} cores visible, torch {torch.__version__} ({threads} thread(s)), "
            f"Python {platform.python_version()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def write_section(name: str, text: str) -> None:
    """Replace (or add) the section `name` of benchmarks/results/engine.md, written atomically."""
    begin, end = f"<!-- begin:{name} -->", f"<!-- end:{name} -->"
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Engine benchmarks\n\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, new)


def publish(table: str, write: bool, name: str, heading: str, setup: str, threads: int = 1) -> None:
    """Print a result table and, when `write`, record it as section `name` of engine.md: the heading, what was
    measured (`setup`), the machine and the table."""
    print(table)
    if write:
        write_section(name, f"## {heading}\n\n{setup}\n\nMachine: {machine(threads)}.\n\n{table}\n")


# ---------------------------------------------------------------------------------------------------- model
def bench_config(vocab: int) -> KExaoneConfig:
    """The `small` preset's shape (H 256, 8 layers LLLG, 32 experts top-2 + shared, window 128, MTP) with a
    smaller vocabulary, which the synthetic stream does not need."""
    return KExaoneConfig.preset("small").replace(vocab_size=vocab, max_position_embeddings=4096)


def markov_stream(vocab: int, n_seq: int, seq_len: int, seed: int, stay: float = 0.9) -> torch.Tensor:
    """[n_seq, seq_len] token ids: token t+1 is succ[token t] with probability `stay`, else uniform (ids >= 1)."""
    g = torch.Generator().manual_seed(seed)
    succ = torch.zeros(vocab, dtype=torch.long)  # id 0 (padding) never occurs
    succ[1:] = torch.randperm(vocab - 1, generator=torch.Generator().manual_seed(1234)) + 1
    x = torch.empty(n_seq, seq_len, dtype=torch.long)
    x[:, 0] = torch.randint(1, vocab, (n_seq,), generator=g)
    for t in range(1, seq_len):
        rand = torch.randint(1, vocab, (n_seq,), generator=g)
        keep = torch.rand(n_seq, generator=g) < stay
        x[:, t] = torch.where(keep, succ[x[:, t - 1]], rand)
    return x


def train_model(cfg: KExaoneConfig, steps: int, out: Path, seed: int = 0, batch: int = 4, seq_len: int = 128,
                lr: float = 3e-3) -> None:
    """A short AdamW run on the Markov stream; the MTP loss is weighted 1.0 here (not 0.05) so that the head
    becomes a useful drafter within a few hundred steps."""
    from tqdm.auto import tqdm

    from kexaone.model.transformer import KExaoneForCausalLM

    torch.manual_seed(seed)
    model = KExaoneForCausalLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    bar = tqdm(range(steps), desc="training the benchmark model", unit="step")
    for step in bar:
        for gparam in opt.param_groups:
            gparam["lr"] = lr * min(1.0, (step + 1) / 20) * (1 - step / steps) ** 0.5
        ids = markov_stream(cfg.vocab_size, batch, seq_len, seed=10_000 + step)
        o = model(ids, labels=ids)
        loss = o.ce_loss + o.mtp_loss + cfg.aux_loss_coef * o.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(ce=f"{o.ce_loss.item():.3f}", mtp=f"{o.mtp_loss.item():.3f}")
    model.eval().save_pretrained(out)
    (out / "bench_train.json").write_text(json.dumps({"steps": steps, "ce": o.ce_loss.item(),
                                                      "mtp": o.mtp_loss.item()}) + "\n")


def prepare_model(args) -> Path:
    if args.model:
        return Path(args.model)
    cfg = bench_config(args.vocab)
    key = hashlib.sha256(json.dumps([cfg.to_hf_dict(), args.train_steps, "markov-v1"], sort_keys=True)
                         .encode()).hexdigest()[:12]
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"kexaone-bench-decode-{key}"
    if not (out / "config.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        train_model(cfg, args.train_steps, out)
    return out


# ---------------------------------------------------------------------------------------------------- decode
def run_kexaone(engine, prompts, n, speculative, k, sampled: bool):
    from kexaone.engine.sampling import SamplingParams

    params = [SamplingParams(max_new_tokens=n, temperature=1.0 if sampled else 0.0, top_p=0.95, seed=i,
                             stop_token_ids=()) for i in range(len(prompts))]
    t0 = time.perf_counter()
    res = engine.generate_batch(prompts, params=params, speculative=speculative, draft_tokens=k)
    dt = time.perf_counter() - t0
    return sum(len(r.tokens) for r in res) / dt, [r.tokens for r in res], res[0].stats


def run_transformers(hf, prompts, n, sampled: bool):
    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p)
        mask[i, L - len(p):] = 1
    kw = dict(do_sample=True, temperature=1.0, top_p=0.95, top_k=0) if sampled else dict(do_sample=False)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, pad_token_id=0,
                          eos_token_id=None, **kw)
    dt = time.perf_counter() - t0
    return B * n / dt, out[:, L:].tolist()


def decode_table(args, model_dir: Path) -> str:
    import warnings

    from kexaone.engine import Engine

    engine = Engine.from_pretrained(model_dir, tokenizer=False)
    V = engine.config.vocab_size
    hf = None
    if not args.no_transformers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from transformers import AutoModelForCausalLM

            hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    for sampled in (False, True):
        for B in args.batch_sizes:
            lens = [args.prompt_len - (3 * i) % 9 for i in range(B)]  # different lengths: left padding in batches
            prompts = [markov_stream(V, 1, L, seed=500 + i)[0].tolist() for i, L in enumerate(lens)]
            # warm-up (allocator, kernels) for each system
            run_kexaone(engine, prompts, 4, None, args.draft_tokens, sampled)
            run_kexaone(engine, prompts, 4, "mtp", args.draft_tokens, sampled)
            if hf is not None:
                run_transformers(hf, prompts, 4, sampled)
            plain, mtp, ref = [], [], []
            out_plain = out_mtp = out_hf = None
            accept, per_fwd = [], []
            for _ in range(args.repeats):
                tps, out_plain, _ = run_kexaone(engine, prompts, args.new_tokens, None, args.draft_tokens, sampled)
                plain.append(tps)
                tps, out_mtp, stats = run_kexaone(engine, prompts, args.new_tokens, "mtp", args.draft_tokens,
                                                  sampled)
                mtp.append(tps)
                accept.append(stats.acceptance_rate)
                per_fwd.append(stats.tokens_per_forward)
                if hf is not None:
                    tps, out_hf = run_transformers(hf, prompts, args.new_tokens, sampled)
                    ref.append(tps)
            p, m = statistics.median(plain), statistics.median(mtp)
            r = statistics.median(ref) if ref else None
            same = None if sampled else out_plain == out_mtp
            same_hf = None if (out_hf is None or sampled) else sum(a == b for a, b in zip(out_plain, out_hf)) / B
            rows.append(("sampled" if sampled else "greedy", B, p, m, r, statistics.fmean(accept),
                         statistics.fmean(per_fwd), same, same_hf))
            print(f"{'sampled' if sampled else 'greedy'} batch {B}: plain {p:.1f} tok/s, MTP {m:.1f} tok/s, "
                  f"transformers {r or float('nan'):.1f} tok/s", file=sys.stderr)

    train = {}
    if (model_dir / "bench_train.json").exists():
        train = json.loads((model_dir / "bench_train.json").read_text())
    lines = [
        "## Decode throughput",
        "",
        f"Machine: {machine(torch.get_num_threads())}.",
        "",
        f"Model: `small` preset shape (H 256, 8 layers LLLG, 32 experts top-2 + shared, window 128, MTP), vocabulary "
        f"{V}, fp32, " + (f"trained {train['steps']} AdamW steps on a synthetic Markov token stream (each token's "
                          f"preferred successor with probability 0.9; final CE {train['ce']:.3f}, MTP CE "
                          f"{train['mtp']:.3f})" if train else f"loaded from `{model_dir}`")
        + f". Prompts of ~{args.prompt_len} tokens (different lengths within a batch), {args.new_tokens} new tokens "
        f"per row (the window of 128 is crossed), median of {args.repeats} interleaved runs, MTP with "
        f"{args.draft_tokens} draft tokens. Greedy = temperature 0; sampled = temperature 1.0, top-p 0.95.",
        "",
        "| decoding | batch | kexaone plain tok/s | kexaone MTP tok/s | transformers generate tok/s | MTP / plain | "
        "plain / transformers | MTP acceptance | tokens per forward (per row) | MTP == plain | "
        "plain == transformers |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, B, p, m, r, acc, tpf, same, same_hf in rows:
        lines.append(f"| {mode} | {B} | {p:.1f} | {m:.1f} | {'n/a' if r is None else f'{r:.1f}'} | {m / p:.2f}x | "
                     f"{'n/a' if r is None else f'{p / r:.2f}x'} | {acc:.1%} | {tpf:.2f} | "
                     f"{'n/a (sampled)' if same is None else ('yes' if same else 'NO')} | "
                     f"{'n/a' if same_hf is None else f'{same_hf:.0%} of rows'} |")
    lines += ["", "Targets: MTP >= 1.5x plain; plain >= 2x transformers. `tokens per forward` counts generated "
              "tokens per row and main-model forward (1.0 for plain decoding, at most draft tokens + 1); at batch > 1 "
              "all rows keep the drafts every unfinished row accepted (one shared cache length). Greedy decoding of "
              "this stream follows each token's preferred successor, which the MTP head has learnt, so greedy "
              "acceptance is near 100%; sampled decoding shows the acceptance of a real draft/target mismatch."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- KV cache
def kv_table() -> str:
    from kexaone.model.cache import KVCache
    from kexaone.model.info import kv_cache_bytes

    small = KExaoneConfig.preset("small")
    all_global = small.replace(layer_types=["full_attention"] * small.num_hidden_layers)
    lines = [
        "## KV-cache memory (bf16, one sequence)",
        "",
        "Measured with `KVCache.nbytes()` on caches filled to the context length (main layers + the MTP layer; "
        "ring buffers hold window + 8 spare slots for rollback), next to `kexaone.model.info.kv_cache_bytes`.",
        "",
        "| context | small (hybrid LLLG) | small, every layer global | hybrid / all-global | analytic hybrid | "
        "analytic all-global |",
        "|---|---|---|---|---|---|",
    ]

    def filled(cfg, n):
        cache = KVCache(cfg, 1, dtype=torch.bfloat16)
        k = torch.zeros(1, cfg.num_key_value_heads, n, cfg.head_dim, dtype=torch.bfloat16)
        for layer in range(cfg.num_hidden_layers + cfg.num_nextn_predict_layers):
            cache.update(layer, k, k)
        return cache.nbytes()

    for n in (8192, 32768, 65536):
        h, a = filled(small, n), filled(all_global, n)
        ah = kv_cache_bytes(small, n, 2, extra_slots=8, include_mtp=True)
        aa = kv_cache_bytes(all_global, n, 2, extra_slots=8, include_mtp=True)
        lines.append(f"| {n // 1024}K | {h / 2**20:.1f} MiB | {a / 2**20:.1f} MiB | {h / a:.3f} | "
                     f"{ah / 2**20:.1f} MiB | {aa / 2**20:.1f} MiB |")
    big = KExaoneConfig.preset("k-exaone-236b-a23b")
    big_global = big.replace(layer_types=["full_attention"] * big.num_hidden_layers)
    lines += ["", "Released 236B-A23B configuration (analytic, bf16, without the MTP layer):", "",
              "| context | hybrid (36 L + 12 G) | every layer global | ratio |", "|---|---|---|---|"]
    for n in (8192, 32768, 65536, 262144):
        h, a = kv_cache_bytes(big, n, 2, extra_slots=8), kv_cache_bytes(big_global, n, 2, extra_slots=8)
        lines.append(f"| {n // 1024}K | {h / 2**30:.2f} GiB | {a / 2**30:.2f} GiB | {h / a:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a saved model with a trained MTP head (default: train one)")
    ap.add_argument("--train-steps", type=int, default=250)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--draft-tokens", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded machine)")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--skip-decode", action="store_true", help="only the KV-cache table")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = []
    if not args.skip_decode:
        parts.append(decode_table(args, prepare_model(args)))
    parts.append(kv_table())
    text = "\n\n".join(parts)
    print(text)
    write_section("decode", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
