"""Decode-step speed of kexaone's plain greedy generation, before vs after a code change, side by side.

Times `Engine.generate` (greedy, 64 new tokens, batch 1 and batch 8, `small` preset with random weights, one thread)
for two versions of the package: a baseline (`--baseline-ref`, a git revision exported with `git archive` into a
temporary directory) and the working tree. Each measurement runs in a fresh subprocess with PYTHONPATH pointing at
one version; versions are interleaved (A, B, A, B, ...) and the median is kept, because the machine is shared and
noisy: read the ratios. Both versions must produce the same tokens (checked).

    nice -n 10 python benchmarks/bench_decode_step.py [--baseline-ref HEAD] [--repeats 5] [--new-tokens 64]

Prints a markdown table and writes it (with a machine description) as the "decode-fastpaths" section of
benchmarks/results/engine.md when --write is given. It does not measure speculative decoding or transformers
(bench_decode.py does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run inside the subprocess: build the model from a fixed seed, warm up, time generate, print JSON.
_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
import kexaone
from kexaone.config import KExaoneConfig
from kexaone.model.transformer import KExaoneForCausalLM
from kexaone.engine import Engine
batch, new, prompt_len = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = KExaoneForCausalLM(KExaoneConfig.preset("small")).eval()
eng = Engine(model)
g = torch.Generator().manual_seed(1)
prompts = [torch.randint(1, model.config.vocab_size, (prompt_len - 3 * r,), generator=g).tolist()
           for r in range(batch)]
params = eng.make_params(max_new_tokens=new, temperature=0.0)
eng.generate_batch(prompts, params)  # warm-up
t0 = time.perf_counter()
res = eng.generate_batch(prompts, params)
dt = time.perf_counter() - t0
toks = [list(map(int, r.tokens)) for r in res]
print(json.dumps({"seconds": dt, "tokens": toks, "path": kexaone.__file__}))
"""


def run_child(src: Path, batch: int, new: int, prompt_len: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _CHILD, str(batch), str(new), str(prompt_len)], env=env,
                         capture_output=True, text=True, check=True, cwd=src)
    return json.loads(out.stdout.strip().splitlines()[-1])


def export_ref(ref: str, dest: Path) -> None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "kexaone"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-ref", default="HEAD", help="git revision of the baseline (default HEAD)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/results/engine.md")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        export_ref(args.baseline_ref, base)
        versions = {"baseline": base, "current": ROOT}
        times: dict[tuple[str, int], list[float]] = {}
        tokens: dict[tuple[str, int], list] = {}
        for rep in range(args.repeats):
            for b in batches:
                for name, src in versions.items():
                    r = run_child(src, b, args.new_tokens, args.prompt_len)
                    assert Path(r["path"]).resolve().is_relative_to(src.resolve()), r["path"]
                    times.setdefault((name, b), []).append(r["seconds"])
                    tokens[(name, b)] = r["tokens"]
            print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr)
    rows = ["| batch | baseline tok/s | current tok/s | speed-up | same tokens |", "|---|---|---|---|---|"]
    for b in batches:
        tb, tc = statistics.median(times[("baseline", b)]), statistics.median(times[("current", b)])
        n = b * args.new_tokens
        rows.append(f"| {b} | {n / tb:.1f} | {n / tc:.1f} | {tb / tc:.2f}x | "
                    f"{'yes' if tokens[('baseline', b)] == tokens[('current', b)] else 'NO'} |")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_decode import publish  # noqa: E402

    publish("\n".join(rows), args.write, "decode-fastpaths", "Decode fast paths (bench_decode_step.py)",
            f"Greedy `Engine.generate`, {args.new_tokens} new tokens, prompts of ~{args.prompt_len} tokens (different "
            f"lengths within a batch), `small` preset (vocabulary 8192), random weights, fp32; baseline = "
            f"`{args.baseline_ref}` vs the working tree, each run in a fresh process, median of {args.repeats} "
            "interleaved runs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
