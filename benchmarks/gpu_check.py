"""One short run over every CUDA path of kexaone, printing a table: run it whenever a GPU is at hand.

Checks (each is timed and compared against a reference computed differently):
- `grouped_experts`: the MoE experts in bf16 through `torch._grouped_mm` (the kernel CUDA uses for bf16 on sm80+)
  against a per-expert fp32 loop;
- `attention`: blocked sliding-window and global attention (`kexaone.model.attention.attend`) against one dense
  masked SDPA call;
- `fp8_train_step`: one forward + backward + AdamW step of a small model converted by torchao float8 training
  (`kexaone.train.fp8.apply_fp8(mode="torchao")`, needs CUDA with FP8 tensor cores and torchao);
- `mtp_decode`: MTP self-speculative greedy decoding equals plain greedy decoding, tokens/s of both;
- `server`: the OpenAI app answers a chat completion and a streamed one (in process, no socket), with the serving
  dtype default (`cli_generate.default_serving_dtype`: bf16 on CUDA).

Without CUDA this is a dry run: the checks that make sense on CPU run on CPU (small shapes, fp32 where bf16 has
no fast kernel) so the script itself is exercised and tested; CUDA-only checks print why they were skipped.

    python benchmarks/gpu_check.py [--device cuda] [--write]

`--write` records the table in benchmarks/results/gpu_check.md (only from a CUDA run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.md"


@dataclass
class Check:
    name: str
    status: str  # ok / FAIL / skipped
    detail: str
    ms: float | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats: int = 5) -> float:
    fn()
    _sync(device)
    xs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        xs.append(time.perf_counter() - t0)
    return statistics.median(xs) * 1000


def check_grouped_experts(device, dtype, small: bool) -> Check:
    from kexaone.config import KExaoneConfig
    from kexaone.model.moe import GroupedExperts, native_grouped_mm_supported

    cfg = KExaoneConfig.preset("small" if small else "k-exaone").replace(num_experts=32 if small else 128)
    torch.manual_seed(0)
    ex = GroupedExperts(cfg).to(device)
    n = 64 if small else 4096
    x = torch.randn(n, cfg.hidden_size, device=device)
    idx = torch.stack([torch.randperm(cfg.num_experts, device=device)[:cfg.num_experts_per_tok] for _ in range(n)])
    w = torch.rand(n, cfg.num_experts_per_tok, device=device)
    with torch.no_grad():
        ref = torch.zeros_like(x)
        for e in range(cfg.num_experts):  # the reference: a per-expert loop in fp32
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel():
                g, u = (x[tok] @ ex.gate_up_proj[e].T).chunk(2, dim=-1)
                ref.index_add_(0, tok, (torch.nn.functional.silu(g) * u * w[tok, slot, None]) @ ex.down_proj[e].T)
        exl = ex.to(dtype)
        xl = x.to(dtype)
        native = native_grouped_mm_supported(xl)
        out = exl(xl, idx, w)
        ms = _time(lambda: exl(xl, idx, w), device)
    err = ((out.float() - ref).norm() / ref.norm()).item()
    ok = err < (2e-2 if dtype != torch.float32 else 1e-5)
    return Check("grouped_experts", "ok" if ok else "FAIL",
                 f"{n} tokens, {cfg.num_experts} experts top-{cfg.num_experts_per_tok}, {str(dtype)[6:]}, "
                 f"kernel {'torch._grouped_mm' if native else 'per-expert loop'}, rel. error vs fp32 loop {err:.1e}",
                 ms)


def check_attention(device, dtype, small: bool) -> Check:
    import torch.nn.functional as F

    from kexaone.model.attention import attend

    torch.manual_seed(0)
    B, H, h, D, W = 1, 8, 2, 32 if small else 128, 128
    T = 512 if small else 8192
    q = torch.randn(B, H, T, D, device=device, dtype=dtype)
    k = torch.randn(B, h, T, D, device=device, dtype=dtype)
    v = torch.randn(B, h, T, D, device=device, dtype=dtype)
    worst, ms = 0.0, []
    for window in (W, None):
        with torch.no_grad():
            out = attend(q, k, v, scale=D ** -0.5, window=window)
            i = torch.arange(T, device=device)
            vis = (i[:, None] >= i[None, :]) & ((i[:, None] - i[None, :] < window) if window else True)
            ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(H // h, 1),
                                                 v.float().repeat_interleave(H // h, 1), attn_mask=vis,
                                                 scale=D ** -0.5)
            worst = max(worst, (out.float() - ref).abs().max().item())
            ms.append(_time(lambda: attend(q, k, v, scale=D ** -0.5, window=window), device))
    ok = worst < (3e-2 if dtype != torch.float32 else 1e-4)
    return Check("attention", "ok" if ok else "FAIL",
                 f"T={T}, {H}/{h} heads, d={D}, {str(dtype)[6:]}: sliding (window {W}) {ms[0]:.2f} ms, global "
                 f"{ms[1]:.2f} ms; max abs error vs dense masked SDPA {worst:.1e}", sum(ms))


def check_fp8(device) -> Check:
    if device.type != "cuda":
        return Check("fp8_train_step", "skipped", "needs CUDA (torchao float8 kernels)")
    if torch.cuda.get_device_capability(device) < (8, 9):
        return Check("fp8_train_step", "skipped", f"compute capability {torch.cuda.get_device_capability(device)} "
                                                   "has no FP8 tensor cores (needs >= 8.9)")
    try:
        import torchao  # noqa: F401
    except ImportError:
        return Check("fp8_train_step", "skipped", "torchao is not installed")
    from kexaone.config import KExaoneConfig
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.train.fp8 import apply_fp8, fp8_module_names

    torch.manual_seed(0)
    cfg = KExaoneConfig.preset("small").replace(hidden_size=512, moe_intermediate_size=256, intermediate_size=1024)
    model = KExaoneForCausalLM(cfg).to(device).train()
    ids = torch.randint(0, cfg.vocab_size, (4, 512), device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = model(ids, labels=ids).loss.item()
    apply_fp8(model, mode="torchao", scaling="row")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    with torch.autocast("cuda", dtype=torch.bfloat16):
        first = model(ids, labels=ids).loss.item()
    ms = _time(step, device, repeats=3)
    ok = abs(first - ref) / ref < 0.05 and torch.isfinite(step()).item()
    return Check("fp8_train_step", "ok" if ok else "FAIL",
                 f"{len(fp8_module_names(model))} FP8 modules; loss bf16 {ref:.4f} vs fp8 {first:.4f}; "
                 "one step = forward + backward + AdamW", ms)


def _model(device, dtype, preset: str, **changes):
    from kexaone.config import KExaoneConfig
    from kexaone.model.transformer import KExaoneForCausalLM

    torch.manual_seed(0)
    model = KExaoneForCausalLM(KExaoneConfig.preset(preset).replace(**changes)).to(device=device, dtype=dtype)
    model.requires_grad_(False)
    return model.eval()


def check_mtp_decode(device, dtype, small: bool) -> Check:
    from kexaone.engine import Engine

    preset = "tiny" if small else "small"
    eng = Engine(_model(device, dtype, preset))
    prompt = list(range(5, 40))
    kw = dict(max_new_tokens=48, temperature=0, stop_token_ids=())
    t0 = time.perf_counter()
    plain = eng.generate(prompt, **kw)
    t1 = time.perf_counter()
    spec = eng.generate(prompt, speculative="mtp", draft_tokens=2, **kw)
    t2 = time.perf_counter()
    same = plain.tokens == spec.tokens
    return Check("mtp_decode", "ok" if same else "FAIL",
                 f"`{preset}` shape, random weights, {str(dtype)[6:]}: greedy MTP (K=2) output "
                 f"{'equals' if same else 'DIFFERS from'} plain; plain {len(plain.tokens) / (t1 - t0):.0f} tok/s, "
                 f"MTP {len(spec.tokens) / (t2 - t1):.0f} tok/s (acceptance {spec.stats.acceptance_rate or 0:.2f})",
                 (t2 - t0) * 1000)


def check_server(device, small: bool) -> Check:
    from fastapi.testclient import TestClient

    from kexaone.engine import Engine
    from kexaone.engine.app import create_app
    from kexaone.engine.cli_generate import default_serving_dtype
    from kexaone.engine.server import ServerSettings
    from kexaone.tokenizer import KExaoneTokenizer
    from kexaone.tokenizer.specials import SPECIAL_TOKENS

    tok = KExaoneTokenizer.from_merges([b""] * len(SPECIAL_TOKENS) + [bytes([i]) for i in range(256)], [])
    dtype = default_serving_dtype(device) or torch.float32
    model = _model(device, dtype, "tiny" if small else "small", vocab_size=tok.vocab_size)
    app = create_app(Engine(model, tok), ServerSettings(model_name="check"))
    body = {"model": "check", "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "Hello"}]}
    t0 = time.perf_counter()
    with TestClient(app) as client:
        r1 = client.post("/v1/chat/completions", json=body)
        r2 = client.post("/v1/chat/completions", json={**body, "stream": True})
    ms = (time.perf_counter() - t0) * 1000
    ok = r1.status_code == 200 and r2.status_code == 200 and r2.text.rstrip().endswith("data: [DONE]")
    usage = r1.json().get("usage", {}) if r1.status_code == 200 else {}
    return Check("server", "ok" if ok else "FAIL",
                 f"serving dtype {str(dtype)[6:]}; chat completion HTTP {r1.status_code} "
                 f"({usage.get('completion_tokens')} tokens), streamed HTTP {r2.status_code}", ms)


def run(device: torch.device) -> list[Check]:
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    checks = []
    small = not cuda
    for name, fn in (("grouped_experts", lambda: check_grouped_experts(device, torch.bfloat16, small)),
                     ("attention", lambda: check_attention(device, dtype, small)),
                     ("fp8_train_step", lambda: check_fp8(device)),
                     ("mtp_decode", lambda: check_mtp_decode(device, dtype, small)),
                     ("server", lambda: check_server(device, small))):
        try:
            checks.append(fn())
        except Exception as e:  # noqa: BLE001 - one broken path is a row of the table, not the end of the run
            checks.append(Check(name, "FAIL", f"{type(e).__name__}: {e}"))
    return checks


def table(checks: list[Check], device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run: CUDA paths skipped)"
    lines = [f"Device: {where}; torch {torch.__version__}.", "", "| check | status | time | detail |",
             "|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c.name} | {c.status} | {'' if c.ms is None else f'{c.ms:.1f} ms'} | {c.detail} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="default: cuda when available, else a CPU dry run")
    ap.add_argument("--write", action="store_true", help="record the table in benchmarks/results/gpu_check.md")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        print("no CUDA device: dry run on CPU (CUDA-only checks are skipped with the reason)", file=sys.stderr)
    checks = run(device)
    text = table(checks, device)
    print(text)
    if args.write:
        if device.type != "cuda":
            raise ValueError("--write records GPU results only; this was a CPU dry run")
        from kexaone.utils.io import atomic_write_text

        atomic_write_text(RESULTS, "## GPU check (benchmarks/gpu_check.py)\n\n" + text + "\n")
    return 1 if any(c.status == "FAIL" for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
