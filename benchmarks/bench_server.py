"""The OpenAI-compatible server under load: N concurrent streaming chat clients from this process against
`kexaone serve` running in a subprocess on 127.0.0.1 (loopback only; bounded client count, request count and time).

Measures, per concurrency level: requests/s, generated tokens/s, time to first token (first streamed content or
reasoning delta) and total latency (p50 / p99), and failed requests (non-200, an error event, or a stream without
`data: [DONE]`). The served model is a randomly initialised `small`-shape model with a byte-level tokenizer: the
numbers measure the serving stack (scheduler, batching, streaming), not answer quality.

    nice -n 10 python benchmarks/bench_server.py [--clients 1 4 16] [--requests-per-client 4] [--max-tokens 32]

Prints a markdown table and writes it into benchmarks/results/engine.md (its "server" section).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import machine, write_section  # noqa: E402
from bench_decode_step import export_ref  # noqa: E402

from kexaone.config import KExaoneConfig  # noqa: E402


def byte_tokenizer():
    from kexaone.tokenizer import KExaoneTokenizer
    from kexaone.tokenizer.specials import SPECIAL_TOKENS

    return KExaoneTokenizer.from_merges([b""] * len(SPECIAL_TOKENS) + [bytes([i]) for i in range(256)], [])


def make_model_dir(out: Path) -> None:
    from kexaone.model.transformer import KExaoneForCausalLM

    tok = byte_tokenizer()
    torch.manual_seed(0)
    cfg = KExaoneConfig.preset("small").replace(vocab_size=tok.vocab_size, max_position_embeddings=8192)
    KExaoneForCausalLM(cfg).save_pretrained(out)
    tok.save(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def request_budget(max_tokens: int, i: int, vary: bool) -> int:
    """max_tokens of request i: fixed, or (--vary-tokens) spread over [max/4, max] by a hash of i, so rows of a batch
    finish at different steps (a fixed budget makes whole batches finish together, and nothing ever joins)."""
    if not vary:
        return max_tokens
    lo = max(1, max_tokens // 4)
    return lo + (i * 2654435761 % 2 ** 32) % (max_tokens - lo + 1)


async def one_request(client, url: str, max_tokens: int, i: int) -> dict:
    body = {"model": "bench", "stream": True, "max_tokens": max_tokens, "temperature": 1.0, "seed": i,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Request {i}: tell me something about Seoul."}]}
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    text = []
    done = False
    ok = True
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"ok": False, "status": r.status_code}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            obj = json.loads(data)
            if "error" in obj:
                ok = False
                continue
            if obj.get("usage"):
                tokens = obj["usage"]["completion_tokens"]
            for ch in obj.get("choices", []):
                d = ch.get("delta", {})
                text.append((d.get("reasoning_content") or "") + (d.get("content") or ""))
                if ttft is None and (d.get("content") or d.get("reasoning_content")):
                    ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {"ok": ok and done, "status": 200, "ttft": ttft if ttft is not None else total, "total": total,
            "tokens": tokens, "id": i, "text": "".join(text)}


async def load(url: str, clients: int, per_client: int, max_tokens: int, time_limit: float,
               vary: bool = False) -> dict:
    import httpx

    results = []
    deadline = time.perf_counter() + time_limit
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:
        async def worker(w: int) -> None:
            for j in range(per_client):
                if time.perf_counter() > deadline:
                    return
                try:
                    i = w * 1000 + j
                    results.append(await one_request(client, url, request_budget(max_tokens, i, vary), i))
                except Exception as e:  # noqa: BLE001 - a failed request is a result, not a crash
                    results.append({"ok": False, "status": repr(e)})

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        wall = time.perf_counter() - t0
    good = [r for r in results if r["ok"]]
    return {
        "clients": clients, "requests": len(results), "failed": len(results) - len(good), "wall": wall,
        "rps": len(good) / wall, "tok_s": sum(r["tokens"] for r in good) / wall,
        "ttft50": pct([r["ttft"] for r in good], 0.5), "ttft99": pct([r["ttft"] for r in good], 0.99),
        "lat50": pct([r["total"] for r in good], 0.5), "lat99": pct([r["total"] for r in good], 0.99),
        "tokens": statistics.fmean([r["tokens"] for r in good]) if good else 0.0,
        "texts": {r["id"]: r["text"] for r in good},
    }


def median_row(runs: list[dict], mode: str) -> dict:
    """One table row from repeated runs of a mode: the median of every timing, failures and requests summed, the
    first run's texts (each run sends the same seeded requests)."""
    row = dict(runs[0], mode=mode)
    for key in ("rps", "tok_s", "ttft50", "ttft99", "lat50", "lat99", "tokens"):
        row[key] = statistics.median(r[key] for r in runs)
    row["failed"] = sum(r["failed"] for r in runs)
    row["requests"] = sum(r["requests"] for r in runs)
    return row


def default_batch_size(args, mode: str) -> int:
    """The scheduler batch size `kexaone serve` of this mode's package uses without --max-batch-size."""
    env = dict(os.environ, PYTHONPATH=str(args.baseline_dir)) if mode == "baseline" else None
    out = subprocess.run([sys.executable, "-c", "from kexaone.engine.server import ServerSettings as S; "
                          "print(S().max_batch_size)"], env=env, cwd=env and str(args.baseline_dir),
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def start_server(model_dir: Path, args, mode: str):
    """`kexaone serve` in a subprocess on a free loopback port; returns (url, process) once /health answers."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    cwd = None
    if mode == "baseline":  # the package as of --baseline-ref, exported to a directory (run from there, so that
        env["PYTHONPATH"] = cwd = str(args.baseline_dir)  # `-m kexaone` does not pick up the working tree)
    cmd = [sys.executable, "-m", "kexaone", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--served-model-name", "bench", "--log-level", "warning",
           "--max-queue", "256"]
    if args.max_batch_size is not None:
        cmd += ["--max-batch-size", str(args.max_batch_size)]
    if mode == "cohorts":
        cmd.append("--no-continuous-batching")
    elif mode != "baseline":  # (the baseline's server has its own default and may predate --join)
        cmd += ["--join", mode]
    server = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, server)
    return url, server


def wait_until_serving(url: str, server: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Return once `url`/health answers 200; kill the server and raise if it exits or takes over `timeout_s`."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise RuntimeError("kexaone serve exited during start-up")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"kexaone serve did not start within {timeout_s:g} s")
        time.sleep(0.3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch-size", type=int, default=None,
                    help="scheduler batch size of every server (default: each server's own default)")
    ap.add_argument("--vary-tokens", action="store_true",
                    help="each request's max_tokens spread over [max/4, max] (rows finish at different steps)")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per concurrency level")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server process")
    ap.add_argument("--modes", nargs="+", default=["slots", "reprefill"], choices=["slots", "reprefill", "cohorts"],
                    help="slots: a request joins a running batch by prefilling only its prompt (--join slots); "
                         "reprefill: the running rows are recomputed with it (--join reprefill, the scheme before "
                         "issue 20); cohorts: --no-continuous-batching")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per mode and client count (modes interleaved); the table gives their medians")
    ap.add_argument("--baseline-ref", default=None,
                    help="also serve the package as of this git revision (mode 'baseline', its default batching), "
                         "e.g. the revision an issue's 'today' refers to")
    args = ap.parse_args(argv)
    if args.baseline_ref:
        args.modes = [*args.modes, "baseline"]
    if max(args.clients) > 64:
        raise ValueError("--clients is bounded to 64 concurrent clients")

    load_before = os.getloadavg()
    rows, healths, batch_sizes = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="kexaone-bench-server-") as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        make_model_dir(model_dir)
        if args.baseline_ref:
            args.baseline_dir = Path(tmp) / "baseline"
            args.baseline_dir.mkdir()
            export_ref(args.baseline_ref, args.baseline_dir)
        servers = {}
        try:
            import httpx

            for mode in args.modes:
                batch_sizes[mode] = args.max_batch_size or default_batch_size(args, mode)
                servers[mode] = start_server(model_dir, args, mode)
                asyncio.run(load(servers[mode][0], 1, 1, 4, 30))  # warm-up
            for c in args.clients:  # modes interleaved per concurrency level: the machine is noisy
                runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
                for _ in range(args.repeats):
                    for mode in args.modes:
                        row = asyncio.run(load(servers[mode][0], c, args.requests_per_client, args.max_tokens,
                                               args.time_limit, args.vary_tokens))
                        runs[mode].append(row)
                        print(f"{mode}, {c} clients: {row['rps']:.2f} req/s, {row['failed']} failed",
                              file=sys.stderr)
                rows += [median_row(runs[mode], mode) for mode in args.modes]
            for mode, (url, _) in servers.items():
                healths[mode] = httpx.get(url + "/health", timeout=5).json()
        finally:
            for _, server in servers.values():
                server.terminate()
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()

    budget = (f"spread over [{max(1, args.max_tokens // 4)}, {args.max_tokens}] per request" if args.vary_tokens
              else str(args.max_tokens))
    lines = [
        "## Server under load (streaming chat completions" + (", varied max_tokens)" if args.vary_tokens else ")"),
        "",
        f"Machine: {machine(args.threads)} (server process; clients in a second process, loopback); load average "
        f"(1 min) {load_before[0]:.1f} before the run, {os.getloadavg()[0]:.1f} after (the machine is shared).",
        "",
        f"Model: randomly initialised `small` shape (H 256, 8 layers, 32 experts top-2, MTP off), byte-level "
        f"tokenizer, fp32. Each client sends {args.requests_per_client} requests one after another "
        f"(max_tokens {budget}, temperature 1.0); scheduler batch size "
        + ", ".join(f"{b} ({m})" for m, b in batch_sizes.items()) + ", at most 4 batches interleaved. "
        + (f"Each row: the median of {args.repeats} runs, modes interleaved (requests and failures summed)."
           if args.repeats > 1 else "One run per row."),
        "",
        "| batching | clients | requests | failed | requests/s | tokens/s | TTFT p50 | TTFT p99 | latency p50 | "
        "latency p99 | mean tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['failed']} | {r['rps']:.2f} | "
                     f"{r['tok_s']:.1f} | "
                     f"{r['ttft50'] * 1000:.0f} ms | {r['ttft99'] * 1000:.0f} ms | {r['lat50']:.2f} s | "
                     f"{r['lat99']:.2f} s | {r['tokens']:.1f} |")
    base = args.modes[0]
    lines += ["", "Ratios against the other modes at the same client count (requests/s, p99 latency), and the share "
              f"of requests whose streamed text is identical to the {base} run's (seeded sampling: a request's "
              "tokens do not depend on its batch, up to last-bit rounding of batched matmuls):", "",
              "| clients | modes | requests/s ratio | p99 latency ratio (below 1: lower) | same text |", "|---|---|---|---|---|"]
    for c in args.clients:
        ref = next((r for r in rows if r["clients"] == c and r["mode"] == base), None)
        for r in rows:
            if r["clients"] != c or r["mode"] == base or ref is None:
                continue
            common = set(ref["texts"]) & set(r["texts"])
            same = sum(ref["texts"][i] == r["texts"][i] for i in common)
            lines.append(f"| {c} | {base} vs {r['mode']} | {ref['rps'] / r['rps']:.2f}x | "
                         f"{ref['lat99'] / r['lat99']:.2f} | {same}/{len(common)} |")
    lines += ["", "slots = a waiting request joins a running batch by prefilling only its own prompt into the batch's "
              "cache (Engine.join) and finished rows leave at once (Engine.compact); reprefill = the scheme before "
              "issue 20 (Engine.merge recomputes the running rows with the newcomers, finished rows are stepped "
              "until then); cohorts = `--no-continuous-batching`, requests arriving together form a batch and "
              "batches are interleaved step by step." + (
                  f" baseline = the package as of `{args.baseline_ref}` with its default batching, from an exported "
                  "copy (`--baseline-ref`)." if args.baseline_ref else ""), ""]
    lines += [f"Server health after the {m} run: {json.dumps(h)}." for m, h in healths.items()]
    text = "\n".join(lines)
    print(text)
    write_section("server-varied" if args.vary_tokens else "server", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
